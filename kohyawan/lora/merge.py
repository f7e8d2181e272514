"""Merge weighted LoRAs into one, exactly, by stacking them along the rank.

For a module present in LoRAs i with weights w_i and scales s_i = alpha_i / rank_i, the merged module
has rank sum(rank_i), alpha = that rank (scale 1), up = [c_i up_i ...] and down = [d_i down_i ...] with
c_i * d_i = w_i * s_i (the magnitude split evenly, the sign kept on up). Then
up @ down = sum_i w_i * s_i * up_i @ down_i: the merged update is the weighted sum of the updates, with
no approximation (only the output dtype's rounding). The price is the rank: resize afterwards if needed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from kohyawan.errors import BadInput
from kohyawan.lora import keys as K
from kohyawan.lora import metadata as M
from kohyawan.lora.inspect import info_from_header
from kohyawan.files.safetensors import OutSpec, placeholder, short_name
from kohyawan.files.stream import write_stream
from kohyawan.lora.modules import LoraModules, Module, load_modules


@dataclass
class MergeResult:
    path: str
    inputs: list[dict]
    rank: int
    modules: int
    dtype: str

    def to_dict(self) -> dict:
        return asdict(self)


def parse_weighted(text: str) -> tuple[Path, float]:
    """'a.safetensors:0.9' -> (Path('a.safetensors'), 0.9); no ':weight' means 1.0."""
    head, sep, tail = text.rpartition(":")
    if sep:
        try:
            return Path(head), float(tail)
        except ValueError:
            pass
    return Path(text), 1.0


def check_mergeable(loras: list[LoraModules]) -> None:
    infos = [info_from_header(lm.header) for lm in loras]
    first = infos[0]
    for lm, info in zip(loras[1:], infos[1:]):
        if (info.model, info.image_attn) != (first.model, first.image_attn):
            raise BadInput(f"cannot merge {lm.name} ({_describe(info)}) with {loras[0].name} ({_describe(first)})")
        if info.task and first.task and info.task != first.task:
            raise BadInput(f"cannot merge {lm.name} (task {info.task}) with {loras[0].name} (task {first.task})")
    experts = {i.expert for i in infos} - {None, "both"}
    if len(experts) > 1:
        raise BadInput("cannot merge a high-noise expert LoRA with a low-noise one; merge each expert separately")
    shapes: dict[str, tuple] = {}
    for lm in loras:
        for m in lm.modules:
            shape = (m.out, m.inp)
            if shapes.setdefault(m.path, shape) != shape:
                raise BadInput(f"{lm.name}: {m.path} has shape {shape}, another input has {shapes[m.path]}")


def _describe(info) -> str:
    return (info.model or "unknown model") + (" with image cross-attention" if info.image_attn else "")


def merge_files(inputs: list[tuple[Path, float]], dst: Path, *, dtype: str | None = None) -> MergeResult:
    if len(inputs) < 2:
        raise BadInput("merge needs at least two LoRAs")
    dst = Path(dst)
    if any(dst.resolve() == Path(p).resolve() for p, _ in inputs):
        raise BadInput("the output must be a new file, not one of the inputs")
    loras = [load_modules(p) for p, _ in inputs]
    weights = [w for _, w in inputs]
    check_mergeable(loras)
    from kohyawan.lora import tensors as T

    code = T.dtype_code(dtype, loras[0].dtype)
    paths = _by_path(loras)
    specs, owner = _merge_specs(paths, code)
    with T.opened_all([lm.header for lm in loras]) as sources:
        cache = T.ModuleCache(lambda path: _merged_module(sources, weights, paths[path]), keep=1)

        def produce(spec: OutSpec):
            what, path = owner[spec.name]
            return T.to_buffer(cache.get(path)[what], code)

        shas = [placeholder(f"sha256-{i}", 64) for i in range(len(loras))]  # hashed while the inputs are read
        meta, merged_rank = _merged_metadata(inputs, loras, paths, shas)
        write_stream(dst, specs, meta, produce, late={sha: s.sha256 for sha, s in zip(shas, sources)})
    return MergeResult(str(dst), [{"file": str(p), "weight": w} for p, w in inputs], merged_rank, len(paths),
                       short_name(code))


def _merged_module(sources, weights: list[float], parts: list[tuple[int, Module]]) -> dict:
    """One module of the merge: the inputs' factors scaled by sqrt(|w * alpha / rank|) (the sign on up)
    and stacked along the rank, alpha = the new rank (scale 1)."""
    import torch

    rank = sum(m.rank for _, m in parts)
    m0 = parts[0][1]
    up, down = torch.empty(m0.out, rank), torch.empty(rank, *m0.inp)
    at = 0
    for i, m in parts:  # each input scaled straight into its slice of the stacked factors
        c = weights[i] * (sources[i].scalar(m.alpha, m.rank) / m.rank)
        root = math.sqrt(abs(c))
        torch.mul(sources[i].fp32(m.up).reshape(m.out, m.rank), root if c >= 0 else -root, out=up[:, at:at + m.rank])
        torch.mul(sources[i].fp32(m.down), root, out=down[at:at + m.rank])
        at += m.rank
    return {"up": up, "down": down, "alpha": torch.tensor(float(rank))}


def _by_path(loras: list[LoraModules]) -> dict[str, list[tuple[int, Module]]]:
    """Module path -> (input index, module) for every input that has it, in natural module order."""
    paths: dict[str, list[tuple[int, Module]]] = {}
    for i, lm in enumerate(loras):
        for m in lm.modules:
            paths.setdefault(m.path, []).append((i, m))
    order = sorted(paths, key=lambda p: [int(t) if t.isdigit() else t for t in p.replace(".", " ").split()])
    return {p: paths[p] for p in order}


def _merge_specs(paths: dict[str, list[tuple[int, Module]]], code: str):
    """The merged file's tensors (musubi naming, rank = the sum of the inputs' ranks) and, per key, which
    part of which module it is."""
    specs: list[OutSpec] = []
    owner: dict[str, tuple[str, str]] = {}
    for path, parts in paths.items():
        rank = sum(m.rank for _, m in parts)
        m0 = parts[0][1]
        base = K.musubi_name(path)
        for what, suffix, shape in (("up", ".lora_up.weight", (m0.out, rank)),
                                    ("down", ".lora_down.weight", (rank, *m0.inp)), ("alpha", ".alpha", ())):
            specs.append(OutSpec(base + suffix, code, shape))
            owner[base + suffix] = (what, path)
    return specs, owner


def _merged_metadata(inputs: list[tuple[Path, float]], loras: list[LoraModules],
                     paths: dict[str, list[tuple[int, Module]]], shas: list[str]) -> tuple[dict[str, str], int]:
    """The first input's metadata, extended with what was merged; and the merged rank."""
    facts = []
    for (p, w), lm, sha in zip(inputs, loras, shas):
        ranks = sorted({m.rank for m in lm.modules})
        entry = {"file": Path(p).name, "sha256": sha, "weight": w, "rank": ranks[-1],
                 "modules": len(lm.modules)}
        if lm is not loras[0]:  # the first file's metadata is the base; keep the others' in full
            entry["metadata"] = lm.header.metadata
        facts.append(entry)
    ranks = {sum(m.rank for _, m in parts) for parts in paths.values()}
    merged_rank = max(ranks)
    updates = ({M.SS_NETWORK_DIM: str(merged_rank), M.SS_NETWORK_ALPHA: str(float(merged_rank))}
               if len(ranks) == 1 else {})
    meta = M.extended(loras[0].header.metadata, M.MERGED_FROM, {"inputs": facts}, updates)
    tasks = {lm.header.metadata.get(M.TASK) for lm in loras} - {None}
    if len(tasks) == 1:
        meta[M.TASK] = tasks.pop()
    experts = {lm.header.metadata.get(M.EXPERT) for lm in loras}
    if len(experts) > 1:
        meta[M.EXPERT] = (experts - {None, "both"} or {"both"}).pop()
    return meta, merged_rank
