"""What a LoRA file is, from its header alone (no torch): size, rank, alpha, dtype, model, tasks."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kohyawan.lora import keys as K
from kohyawan.lora import metadata as M
from kohyawan.files.safetensors import DTYPES, Header, short_name
from kohyawan.lora.io import read_header
from kohyawan.lora.verify import require_lora, verify_header
from kohyawan.trainer import comment

# A file whose tensors are this far from a full LoRA of its rank is flagged (partial or padded files).
SIZE_TOLERANCE = 0.10


@dataclass
class LoraInfo:
    path: str
    bytes: int
    keys: int
    modules: int
    rank: int | None                 # None when modules differ
    ranks: list[int]
    alpha: float | None
    alphas: list[float]              # distinct values, as written (None-free)
    dtype: str                       # "bf16" | "fp16" | "fp32" | "mixed" ...
    naming: str                      # "musubi" | "diffusion_model" | ... | "mixed"
    model: str | None                # "wan-14B" | "wan-1.3B" | "wan-5B" | None
    image_attn: bool                 # has Wan 2.1 image cross-attention modules
    blocks: int                      # blocks that carry a LoRA
    compatible_tasks: list[str]      # tasks on which every key loads
    expected_bytes: int | None       # tensor bytes of a full LoRA of this rank and dtype for the model
    size_ok: bool | None
    task: str | None                 # kohyawan.task, else the training comment kohyawan gave the trainer
    expert: str | None               # kohyawan.expert, else guessed (see guess_expert)
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def read_info(path: Path) -> LoraInfo:
    header = read_header(Path(path))
    require_lora(header)
    return info_from_header(header)


def info_from_header(header: Header) -> LoraInfo:
    groups = K.group_targets(list(header.tensors))
    ranks, paths = _ranks_and_paths(header, groups)
    alphas = sorted(set(_alpha_values(header)) - {None})
    dtypes = Counter(e.dtype for e in header.tensors.values() if not e.name.endswith(".alpha"))
    dtype = short_name(next(iter(dtypes))) if len(dtypes) == 1 else "mixed"
    namings = {K.family_of(k) for k in header.tensors}
    model_size = _detect_size(header, groups)
    image_attn = any(p.endswith(("k_img", "v_img")) for p in paths)
    rank = next(iter(ranks)) if len(ranks) == 1 else None
    expected = _expected_bytes(model_size, image_attn, rank, dtypes)
    actual = sum(e.nbytes for e in header.tensors.values())
    meta = header.metadata
    return LoraInfo(
        path=str(header.path), bytes=header.file_size, keys=len(header.tensors), modules=sum(ranks.values()),
        rank=rank, ranks=sorted(ranks), alpha=alphas[0] if len(alphas) == 1 else None, alphas=alphas,
        dtype=dtype, naming=namings.pop() if len(namings) == 1 else "mixed",
        model=f"wan-{model_size}" if model_size else None, image_attn=image_attn,
        blocks=len({p.split(".")[1] for p in paths if p.startswith("blocks.")}),
        compatible_tasks=[t for t in K.TASKS if verify_header(header, t).ok], expected_bytes=expected,
        size_ok=None if expected is None else abs(actual - expected) <= SIZE_TOLERANCE * expected,
        task=recorded_task(meta), expert=guess_expert(meta, header.path.name), metadata=dict(meta),
    )


def _ranks_and_paths(header: Header, groups) -> tuple[Counter[int], list[str]]:
    """How many LoRA pairs have each rank, and the module paths of those kohyawan can name."""
    ranks: Counter[int] = Counter()
    paths: list[str] = []
    for target, suffixes in groups.items():
        pair = K.lora_pair(suffixes)
        if pair:
            ranks[header.tensors[pair[1]].shape[0]] += 1
            path = K.module_path(target)
            if path:
                paths.append(path)
    return ranks, paths


def _expected_bytes(model_size: str | None, image_attn: bool, rank: int | None, dtypes: Counter) -> int | None:
    """Tensor bytes of a full LoRA of this model, rank and (single) dtype; None when that is not one thing."""
    if not (model_size and rank and len(dtypes) == 1):
        return None
    task = _reference_task(model_size, image_attn)
    return int(K.expected_bytes(task, rank, DTYPES[next(iter(dtypes))].bits / 8)) if task else None


def recorded_task(metadata: dict[str, str]) -> str | None:
    """The task a LoRA was trained for: kohyawan's key, else the training comment kohyawan gave the trainer."""
    return metadata.get(M.TASK) or comment.facts(metadata).get("task")


def _alpha_values(header: Header) -> list[float | None]:
    """Scalar alphas read straight from the file bytes (fp32/fp64/fp16/bf16), without torch."""
    import struct

    formats = {"F32": "<f", "F64": "<d", "F16": "<e"}
    values: list[float | None] = []
    with open(header.path, "rb") as fh:
        for e in header.tensors.values():
            if not e.name.endswith(".alpha") or e.shape not in ((), (1,)):
                continue
            fh.seek(header.data_start + e.start)
            raw = fh.read(e.nbytes)
            if e.dtype == "BF16":  # the top half of an fp32
                values.append(round(struct.unpack("<f", b"\0\0" + raw)[0], 6))
            elif e.dtype in formats:
                values.append(round(struct.unpack(formats[e.dtype], raw)[0], 6))
            else:
                values.append(None)
    return values


def _detect_size(header: Header, groups) -> str | None:
    """Model size from the widths of the attention and FFN matrices."""
    for target, suffixes in groups.items():
        pair = K.lora_pair(suffixes)
        path = K.module_path(target)
        if not pair or not path or not path.startswith("blocks."):
            continue
        up, down = header.tensors[pair[0]].shape, header.tensors[pair[1]].shape
        for size in K.SIZES.values():
            if path.endswith("ffn.0") and (up[0], down[1]) == (size.ffn_dim, size.dim):
                return size.name
            if not path.endswith(("ffn.0", "ffn.2")) and (up[0], down[1]) == (size.dim, size.dim):
                return size.name
    return None


def _reference_task(size: str, image_attn: bool) -> str | None:
    for tm in K.TASK_MODELS.values():
        if tm.size == size and tm.image_attn == image_attn:
            return tm.task
    return None


def guess_expert(metadata: dict[str, str], file_name: str) -> str | None:
    """Which WAN 2.2 expert a LoRA is for: kohyawan's key or the training comment kohyawan gave the trainer,
    else 'high'/'low' in the file name, else the timestep range musubi records for single-expert runs
    (``modelspec.timestep_range``)."""
    for value in (metadata.get(M.EXPERT), comment.facts(metadata).get("expert")):
        if value in M.EXPERTS:
            return value
    import re

    stem = file_name.rsplit(".", 1)[0].lower()
    for expert in ("high", "low"):
        if re.search(rf"(^|[^a-z]){expert}([^a-z]|$)", stem):
            return expert
    rng = metadata.get("modelspec.timestep_range", "")
    try:
        lo, hi = (int(float(x)) for x in rng.split(","))
    except ValueError:
        return None
    if lo > 0 and hi >= 1000:
        return "high"
    if lo == 0 and hi < 1000:
        return "low"
    return None
