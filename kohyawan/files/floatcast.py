"""Casts between the float dtypes of safetensors (F64, F32, F16, BF16) in numpy, bit-exact with torch's
``.to()``: for the parts of kohyawan that must not import torch (the simulated trainer, the registry's
``export --dtype``). numpy has no bfloat16: BF16 is the high half of an F32, rounded to nearest, ties to
even. safetensors stores tensors little-endian, as every machine this runs on is. See
docs/architecture.md.
"""

from __future__ import annotations

import numpy as np

_NUMPY = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}


def to_f32(raw, code: str) -> np.ndarray:
    """A tensor's bytes (any buffer) in ``code`` as a flat float32 array (F32: a read-only view, else a copy)."""
    if code == "F32":
        return np.frombuffer(raw, dtype="<f4")
    if code == "BF16":
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view("<f4")
    return np.frombuffer(raw, dtype=_NUMPY[code]).astype("<f4")


def from_f32(x: np.ndarray, code: str) -> np.ndarray:
    """A float32 array cast to ``code``: an array whose bytes are the tensor's bytes in that dtype."""
    x = np.ascontiguousarray(x, dtype="<f4")
    if code == "BF16":
        # round to nearest, ties to even (what torch's .to(bfloat16) does); NaN stays a quiet NaN
        u = x.view("<u4")
        out = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype("<u2")
        out[np.isnan(x)] = 0x7FC0
        return out
    with np.errstate(over="ignore"):  # fp16 overflow gives inf, as in torch
        return x.astype(_NUMPY[code])
