"""Writing a LoRA file into the registry with kohyawan metadata added (and optionally a new dtype).

Metadata lives in the safetensors JSON header, so without a dtype change the file is rewritten by
streaming: new header, then the tensor bytes copied unchanged (no torch, memory stays flat, tensors stay
bit-identical). A dtype change streams one tensor at a time through numpy (no torch).
safetensors stores tensors little-endian, as every machine this runs on is.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Mapping

from kohyawan.errors import BadInput
from kohyawan.files.safetensors import (FLOAT_CODES, FROM_SHORT, LORA_DTYPES, TensorEntry, encode_header, nbytes,
                                        short_name)
from kohyawan.lora.io import read_header, read_metadata

DTYPES = {short: FROM_SHORT[short] for short in LORA_DTYPES}


def metadata_of(path: Path) -> dict[str, str]:
    return read_metadata(Path(path))


def _write_header(f, entries, metadata: Mapping[str, str]) -> None:
    raw = encode_header(entries, metadata)
    f.write(struct.pack("<Q", len(raw)) + raw)


def _fsync_close(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def rewrite_metadata(src: Path, dst: Path, metadata: Mapping[str, str]) -> None:
    """Copy ``src`` to ``dst`` with ``metadata`` merged into its header (new keys win). Tensors untouched."""
    h = read_header(src)
    meta = dict(h.metadata)
    meta.update({str(k): str(v) for k, v in metadata.items()})
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        _write_header(fout, sorted(h.tensors.values(), key=lambda t: t.start), meta)
        fin.seek(h.data_start)
        shutil.copyfileobj(fin, fout, 1 << 22)
        _fsync_close(fout)


def convert(src: Path, dst: Path, dtype: str, metadata: Mapping[str, str]) -> None:
    """Cast every floating tensor to ``dtype`` (bf16|fp16|fp32), one tensor at a time, into ``dst``.

    The new header is computed from the shapes first, then each tensor is read, cast (numpy, through
    fp32, which holds bf16 and fp16 exactly) and appended, so memory stays near the largest tensor and no
    torch import is needed. fp8 and integer tensors are left as they are (casting fp8 needs a scale).
    """
    if dtype not in DTYPES:
        raise BadInput(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    from kohyawan.files import floatcast

    code = DTYPES[dtype]
    h = read_header(src)
    meta = dict(h.metadata)
    meta.update({str(k): str(v) for k, v in metadata.items()})
    old = sorted(h.tensors.values(), key=lambda t: t.start)
    new, offset = [], 0
    for t in old:
        out_code = code if t.dtype in FLOAT_CODES else t.dtype
        length = nbytes(out_code, t.shape)
        new.append(TensorEntry(t.name, out_code, t.shape, offset, offset + length))
        offset += length
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        _write_header(fout, new, meta)
        for t in old:
            fin.seek(h.data_start + t.start)
            raw = fin.read(t.nbytes)
            if t.dtype in FLOAT_CODES and t.dtype != code:
                raw = floatcast.from_f32(floatcast.to_f32(raw, t.dtype), code).tobytes()
            fout.write(raw)
        _fsync_close(fout)


def tensor_dtypes(path: Path) -> dict[str, int]:
    """safetensors dtype code -> number of weight tensors (alphas left out: they are scalars)."""
    counts: dict[str, int] = {}
    for t in read_header(path).tensors.values():
        if not t.name.endswith(".alpha"):
            counts[t.dtype] = counts.get(t.dtype, 0) + 1
    return counts


def dtype_name(code: str | None) -> str | None:
    return short_name(code) if code else None
