"""Read a safetensors header without touching tensor data.

The format: 8 bytes little-endian header length N, N bytes of UTF-8 JSON ({name: {dtype, shape,
data_offsets}, "__metadata__": {str: str}}), then the tensor bytes. Reading the header costs two small
reads however large the file is, so a 28 GB DiT (or a sparse stand-in for one) is inspected in
milliseconds. Every way a file can be broken becomes one ``ModelFileError`` line naming the file.
Design: docs/architecture.md.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from kohyawan.errors import ModelFileError

# safetensors itself refuses headers above 100 MB; a real WAN header is under 200 kB.
MAX_HEADER_BYTES = 100 * 1024 * 1024

ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    path: Path
    file_size: int
    header_size: int  # the JSON part, without the 8 length bytes
    tensors: Mapping[str, Tensor]
    metadata: Mapping[str, str]

    @property
    def data_size(self) -> int:
        return max((t.end for t in self.tensors.values()), default=0)


def shown(path: os.PathLike | str) -> str:
    """A path as the user typed it, safe to put on one line (control characters escaped)."""
    text = os.fspath(path)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return ascii(text)
    return text


def read_header(path: os.PathLike | str) -> Header:
    p = Path(path)
    where = shown(path)
    try:
        with open(p, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if p.is_dir():
                raise IsADirectoryError
            head = fh.read(8)
            if len(head) < 8:
                kind = "empty" if size == 0 else f"only {size} bytes"
                raise ModelFileError(f"{where}: not a safetensors file ({kind})")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > MAX_HEADER_BYTES:
                raise ModelFileError(f"{where}: not a safetensors file (its first 8 bytes do not give a "
                                     f"plausible header length)")
            if 8 + n > size:
                raise ModelFileError(f"{where}: not a safetensors file or truncated (header of {n} bytes "
                                     f"announced, file has {size} bytes)")
            raw = fh.read(n)
    except FileNotFoundError:
        raise ModelFileError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise ModelFileError(f"{where}: is a folder, not a model file") from None
    except PermissionError:
        raise ModelFileError(f"{where}: permission denied") from None
    except OSError as exc:
        raise ModelFileError(f"{where}: cannot read ({exc.strerror or exc})") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ModelFileError(f"{where}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(doc, dict):
        raise ModelFileError(f"{where}: not a safetensors file (its header is not a JSON object)")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{where}: corrupt safetensors header (__metadata__ is not an object)")
    tensors = {}
    for name, entry in doc.items():
        tensors[name] = _tensor(where, name, entry)
    header = Header(p, size, n, tensors, {str(k): str(v) for k, v in metadata.items()})
    expected = 8 + n + header.data_size
    if size < expected:
        raise ModelFileError(f"{where}: truncated: the header describes {expected} bytes, the file has "
                             f"{size} (an interrupted download?)")
    return header


def _tensor(where: str, name: str, entry: object) -> Tensor:
    bad = f"{where}: corrupt safetensors header (tensor {name!r})"
    if not isinstance(entry, dict):
        raise ModelFileError(bad)
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in ITEMSIZE or not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
        raise ModelFileError(bad)
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in [*shape, *offsets]):
        raise ModelFileError(bad)
    start, end = offsets
    nbytes = math.prod(shape) * ITEMSIZE[dtype]
    if dtype == "F4":  # two 4-bit values per byte
        nbytes = (math.prod(shape) + 1) // 2
    if end < start or end - start != nbytes:
        raise ModelFileError(f"{bad}: its byte range does not match its shape")
    return Tensor(dtype, tuple(shape), start, end)
