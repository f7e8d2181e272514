"""Adapter to the LoRA tools (``kohyawan.lora``, written on another branch): verify and inspect.

Export calls only ``verify(path, task)`` and ``info(path)`` here. When ``kohyawan.lora`` is importable
its ``verify.verify_file`` / ``inspect.read_info`` are used. Until that branch is merged, a header-only
check stands in (names and shapes by the rules of design §3, block count and width per task, truncation);
it reads no tensors and needs no torch. INTEGRATOR: after merging ``lora``, delete ``_interim_*`` below
and take the key names from ``kohyawan.lora.metadata``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kohyawan.errors import BadInput
from kohyawan.registry import lorafile

# kohyawan metadata keys (one place until kohyawan/lora/metadata.py is merged)
META_VERSION = "kohyawan.version"
META_TASK = "kohyawan.task"
META_EXPERT = "kohyawan.expert"
META_PROFILE = "kohyawan.profile"
META_RUN_ID = "kohyawan.run_id"
META_DATASET_HASH = "kohyawan.dataset_hash"
META_DATASET_SIZE = "kohyawan.dataset_size"
META_REHEARSAL = "kohyawan.rehearsal"
META_NOTES = "kohyawan.notes"
# keys only the registry writes
META_HYPERPARAMETERS = "kohyawan.hyperparameters"  # JSON object
META_NAME = "kohyawan.name"                        # "<kind>/<client>/<name>"
META_STEP = "kohyawan.step"


@dataclass
class Verdict:
    ok: bool
    problems: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    loaded: int = 0


@dataclass
class Info:
    rank: int | None
    alpha: float | None
    dtype: str | None
    metadata: dict[str, str]
    bytes: int


def verify(path: Path, task: str) -> Verdict:
    try:
        from kohyawan.lora.verify import verify_file
    except ImportError:
        return _interim_verify(Path(path), task)
    rep = verify_file(Path(path), task)
    return Verdict(ok=bool(rep.ok), problems=list(rep.problems), ignored=list(rep.ignored),
                   loaded=int(getattr(rep, "loaded", 0) or 0))


def info(path: Path) -> Info:
    try:
        from kohyawan.lora.inspect import read_info
    except ImportError:
        return _interim_info(Path(path))
    i = read_info(Path(path))
    return Info(rank=i.rank, alpha=i.alpha, dtype=str(i.dtype) if i.dtype else None,
                metadata=dict(i.metadata), bytes=int(getattr(i, "bytes", 0) or Path(path).stat().st_size))


# ---- interim stand-ins (delete after the lora branch is merged) ---------------------------------------
# task -> (blocks, model width, ffn width, has Wan 2.1 image cross-attention)
_TASKS = {
    "t2v-A14B": (40, 5120, 13824, False), "i2v-A14B": (40, 5120, 13824, False),
    "t2v-14B": (40, 5120, 13824, False), "t2i-14B": (40, 5120, 13824, False),
    "i2v-14B": (40, 5120, 13824, True), "flf2v-14B": (40, 5120, 13824, True),
    "t2v-1.3B": (30, 1536, 8960, False),
}
_KEY = re.compile(r"lora_unet_blocks_(\d+)_(self_attn_[qkvo]|cross_attn_[qkvo]|cross_attn_[kv]_img|ffn_0|ffn_2)"
                  r"\.(lora_down\.weight|lora_up\.weight|alpha)")


def _interim_verify(path: Path, task: str) -> Verdict:
    if task not in _TASKS:
        raise BadInput(f"unknown task {task!r}; tasks: {', '.join(_TASKS)}")
    blocks, dim, ffn, has_img = _TASKS[task]
    header, start, size = lorafile.read_header(path)
    problems, ignored, loaded = [], [], 0
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    if start + end > size:
        problems.append(f"truncated: {size} bytes, the header needs {start + end}")
    for key, t in sorted(tensors.items()):
        m = _KEY.fullmatch(key)
        if not m:
            ignored.append(key)
            continue
        block, module, part = int(m.group(1)), m.group(2), m.group(3)
        if block >= blocks or (module.endswith("_img") and not has_img):
            ignored.append(key)
            continue
        fan_in = ffn if module == "ffn_2" else dim
        fan_out = ffn if module == "ffn_0" else dim
        shape = t["shape"]
        if part == "lora_down.weight" and (len(shape) != 2 or shape[1] != fan_in):
            problems.append(f"{key}: shape {shape} does not fit a {task} model (needs [rank, {fan_in}])")
        elif part == "lora_up.weight" and (len(shape) != 2 or shape[0] != fan_out):
            problems.append(f"{key}: shape {shape} does not fit a {task} model (needs [{fan_out}, rank])")
        else:
            loaded += 1
    if loaded == 0:
        problems.append("no WAN LoRA keys (lora_unet_blocks_*): not a LoRA for this model")
    if ignored:
        problems.append(f"{len(ignored)} key(s) ComfyUI would not load on {task}, e.g. {ignored[0]}")
    return Verdict(ok=not problems, problems=problems, ignored=ignored, loaded=loaded)


def _interim_info(path: Path) -> Info:
    header, start, size = lorafile.read_header(path)
    rank = alpha = None
    for key, t in sorted(header.items()):
        if rank is None and key.endswith(".lora_down.weight"):
            rank = t["shape"][0]
        if alpha is None and key.endswith(".alpha") and t["dtype"] in ("F32", "F16", "BF16"):
            a, b = t["data_offsets"]
            with open(path, "rb") as f:
                f.seek(start + a)
                raw = f.read(b - a)
            if t["dtype"] == "F32" and len(raw) == 4:
                alpha = struct.unpack("<f", raw)[0]
            elif t["dtype"] == "F16" and len(raw) == 2:
                alpha = struct.unpack("<e", raw)[0]
            elif len(raw) == 2:  # bf16: the high half of an f32
                alpha = struct.unpack("<f", b"\0\0" + raw)[0]
    counts = lorafile.tensor_dtypes(path)
    dtype = lorafile.dtype_name(max(counts, key=counts.get)) if counts else None
    meta = {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}
    return Info(rank=rank, alpha=alpha, dtype=dtype, metadata=meta, bytes=size)
