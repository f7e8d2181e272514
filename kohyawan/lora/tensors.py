"""Torch side of the LoRA tools: a LoRA file mapped into memory, and tensors turned into file bytes.

A ``Source`` maps the file once (``mmap``): a tensor is a view of the page cache, so reading costs no
copy and no anonymous memory, and a tensor copied unchanged goes from the page cache to the output file
without passing through Python objects. The file's sha256 (recorded in the provenance of every tool's
output) is computed from the same mapping on a background thread while the tool works, so the file is
read once. Imported only by the functions that touch tensors, never at CLI start-up. See
docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import mmap
import threading
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable

import torch

from kohyawan.files.safetensors import FROM_SHORT, Header

TORCH_DTYPE = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
               "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
               "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


class Source:
    """A LoRA file's tensors as read-only views of its pages, and its sha256 computed alongside."""

    def __init__(self, header: Header, *, digest: bool = True):
        self.header = header
        self._file = open(header.path, "rb")
        # read-only: a private writable mapping would count against the commit limit of a machine with
        # strict overcommit, a gigabyte per file, for pages nothing here ever writes
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self._sha: list[str] = []
        self._hasher = threading.Thread(target=self._digest, name="sha256-source", daemon=True) if digest else None
        if self._hasher:
            self._hasher.start()

    def _digest(self) -> None:
        with memoryview(self._map) as view:
            self._sha.append(hashlib.sha256(view).hexdigest())

    def sha256(self) -> str:
        """The whole file's sha256 (waits for the background thread)."""
        if self._hasher is None:
            raise RuntimeError("this source was opened without a digest")
        self._hasher.join()
        return self._sha[0]

    def raw(self, key: str) -> memoryview:
        """A tensor's bytes as stored, without a copy."""
        start, end = self.header.span(key)
        return memoryview(self._map)[start:end]

    def tensor(self, key: str) -> torch.Tensor:
        """A tensor in its own dtype: a read-only view of the file's pages (writing to it would crash)."""
        e = self.header.tensors[key]
        if e.numel == 0:
            return torch.empty(e.shape, dtype=TORCH_DTYPE[e.dtype])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "not writable": these views are only ever read
            flat = torch.frombuffer(self._map, dtype=TORCH_DTYPE[e.dtype], count=e.numel,
                                    offset=self.header.data_start + e.start)
        return flat.reshape(e.shape)

    def fp32(self, key: str) -> torch.Tensor:
        return self.tensor(key).to(torch.float32)

    def scalar(self, key: str | None, default: float) -> float:
        return float(self.tensor(key).to(torch.float32).item()) if key else float(default)

    def close(self) -> None:
        if self._hasher:
            self._hasher.join()
        try:
            self._map.close()
        except BufferError:  # a tensor still viewing the pages: the mapping goes with the last of them
            pass
        self._file.close()


@contextmanager
def opened_all(headers: list[Header], *, digest: bool = True, threads: int = 1):
    """The files as ``Source``s, with torch on ``threads`` threads meanwhile.

    Most operations here are small (one module: at most 13824 x rank); waking a pool of OpenMP threads
    for each costs more than the work, and the writer and hash threads need the other cores.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    sources: list[Source] = []
    try:
        for h in headers:
            sources.append(Source(h, digest=digest))
        yield sources
    finally:
        for s in sources:
            s.close()
        torch.set_num_threads(before)


@contextmanager
def opened(header: Header, *, digest: bool = True, threads: int = 1):
    """One file as a ``Source`` (see ``opened_all``)."""
    with opened_all([header], digest=digest, threads=threads) as sources:
        yield sources[0]


def to_buffer(t: torch.Tensor, dtype: str):
    """The tensor's bytes in safetensors dtype ``dtype``, as a buffer sharing the tensor's memory."""
    t = t.to(TORCH_DTYPE[dtype]).contiguous().reshape(-1)
    return t.view(torch.uint8).numpy()


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
