"""Rename a LoRA between musubi-tuner's and ComfyUI's native naming and change its dtype.

``--to musubi``: ``lora_unet_<path>.lora_down/lora_up.weight`` + ``.alpha`` (alpha = rank when the source
had none, so the scale stays 1). ``--to comfy``: ``diffusion_model.<path>.lora_A/lora_B.weight`` with
alpha folded in as sqrt(alpha/rank) on each matrix (no alpha keys), or with ``keep_alpha`` the matrices
unchanged and ``diffusion_model.<path>.alpha`` kept. Either way ``scale * up @ down`` is unchanged, so
ComfyUI applies the same update.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from kohyawan.errors import BadInput
from kohyawan.files.safetensors import OutSpec, placeholder, short_name
from kohyawan.files.stream import write_stream
from kohyawan.lora import keys as K
from kohyawan.lora import metadata as M
from kohyawan.lora.modules import Module, load_modules

TARGETS = ("musubi", "comfy")


@dataclass
class ConvertResult:
    path: str
    source: str
    to: str
    dtype: str
    modules: int
    keys: int
    alpha_folded: bool

    def to_dict(self) -> dict:
        return asdict(self)


def convert_file(src: Path, dst: Path, *, to: str, dtype: str | None = None, keep_alpha: bool = False) -> ConvertResult:
    if to not in TARGETS:
        raise BadInput(f"--to must be one of {', '.join(TARGETS)}")
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise BadInput("the output must be a new file, not the input")
    lm = load_modules(src)
    from kohyawan.lora import tensors as T

    out_code = T.dtype_code(dtype, lm.dtype)
    fold = to == "comfy" and not keep_alpha
    specs, plan = _convert_specs(lm, to, keep_alpha, out_code)
    with T.opened(lm.header) as source:
        sha = placeholder("sha256", 64)  # the source's, hashed while it is read
        fact = {"file": src.name, "sha256": sha, "naming": _naming(lm), "dtype": short_name(lm.dtype), "to": to,
                "alpha_folded": fold}
        meta = M.extended(lm.header.metadata, M.CONVERTED_FROM, fact)
        write_stream(dst, specs, meta, _producer(source, plan, out_code, fold), late={sha: source.sha256})
    return ConvertResult(str(dst), str(src), to, short_name(out_code), len(lm.modules), len(specs), fold)


def _convert_specs(lm, to: str, keep_alpha: bool, out_code: str) -> tuple[list[OutSpec], dict[str, tuple[str, Module]]]:
    """The output's tensors in the target naming, and for each which part of which module it holds."""
    specs: list[OutSpec] = []
    plan: dict[str, tuple[str, Module]] = {}
    for m in lm.modules:
        if to == "musubi":
            base = K.musubi_name(m.path)
            names = (base + ".lora_up.weight", base + ".lora_down.weight", base + ".alpha")
        else:
            base = K.comfy_name(m.path)
            names = (base + ".lora_B.weight", base + ".lora_A.weight", base + ".alpha" if keep_alpha else None)
        specs += [OutSpec(names[0], out_code, (m.out, m.rank)), OutSpec(names[1], out_code, (m.rank, *m.inp))]
        plan[names[0]], plan[names[1]] = ("up", m), ("down", m)
        if names[2]:
            specs.append(OutSpec(names[2], out_code, ()))
            plan[names[2]] = ("alpha", m)
    return specs, plan


def _producer(source, plan: dict[str, tuple[str, Module]], out_code: str, fold: bool):
    import torch

    from kohyawan.lora import tensors as T

    def produce(spec: OutSpec):
        what, m = plan[spec.name]
        alpha = source.scalar(m.alpha, m.rank)  # no alpha key: ComfyUI and musubi use factor 1
        if what == "alpha":
            return T.to_buffer(torch.tensor(alpha), out_code)
        key = m.up if what == "up" else m.down
        if not fold and source.header.tensors[key].dtype == out_code:
            return source.raw(key)  # the same bytes: straight from the page cache to the output
        t = source.fp32(key)
        if fold:
            f = math.sqrt(abs(alpha) / m.rank)
            t = t * (f if what == "down" or alpha >= 0 else -f)
        return T.to_buffer(t, out_code)

    return produce


def _naming(lm) -> str:
    families = {K.family_of(m.up) for m in lm.modules}
    return families.pop() if len(families) == 1 else "mixed"
