"""Torch side of the LoRA tools: reading one tensor at a time and turning tensors into file bytes.

Imported only by the functions that touch tensors, never at CLI start-up.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable

import torch

from kohyawan.files.safetensors import FROM_SHORT, Header

TORCH_DTYPE = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
               "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


@contextmanager
def opened(header: Header):
    """The file, read one tensor at a time, with torch on one thread meanwhile.

    Every operation here is small (one module: at most 13824 x rank); waking a pool of OpenMP threads
    for each costs more than the work, and on a busy machine it made conversions 30 times slower.
    """
    from safetensors import safe_open

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with safe_open(str(header.path), framework="pt", device="cpu") as handle:
            yield handle
    finally:
        torch.set_num_threads(threads)


def fp32(handle, key: str) -> torch.Tensor:
    return handle.get_tensor(key).to(torch.float32)


def to_bytes(t: torch.Tensor, dtype: str) -> bytes:
    t = t.to(TORCH_DTYPE[dtype]).contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes()


def scalar(handle, key: str | None, default: float) -> float:
    return float(handle.get_tensor(key).to(torch.float32).item()) if key else float(default)


def dtype_code(short: str | None, fallback: str) -> str:
    """'bf16' -> 'BF16'; None keeps the source's dtype (a float one; fp32 for anything else)."""
    if short is None:
        return fallback if fallback in ("F32", "F16", "BF16") else "F32"
    return FROM_SHORT[short]


class ModuleCache:
    """Computes a module's output tensors once and keeps the last few: a module's up and down sit
    next to each other in file order, so memory stays at one module however big the file."""

    def __init__(self, compute: Callable[[str], dict[str, torch.Tensor]], keep: int = 2):
        self._compute = compute
        self._keep = keep
        self._items: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    def get(self, module: str) -> dict[str, torch.Tensor]:
        if module not in self._items:
            self._items[module] = self._compute(module)
            while len(self._items) > self._keep:
                self._items.popitem(last=False)
        return self._items[module]
