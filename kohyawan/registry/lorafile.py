"""Writing a LoRA file into the registry with kohyawan metadata added (and optionally a new dtype).

Metadata lives in the safetensors JSON header, so without a dtype change the file is rewritten by
streaming: new header, then the tensor bytes copied unchanged (no torch, memory stays flat, tensors stay
bit-identical). A dtype change streams one tensor at a time through numpy (no torch).
safetensors stores tensors little-endian, as every machine this runs on is.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Mapping

from kohyawan.errors import BadInput, ModelFileError

DTYPES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}
_MAX_HEADER = 100 * 1024 * 1024


def read_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """(header without __metadata__ folded in, data start offset, file size); ModelFileError if not safetensors."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{path}: too short to be a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or n + 8 > size:
                raise ModelFileError(f"{path}: not a safetensors file (header length {n} does not fit in {size} bytes)")
            header = json.loads(f.read(n).decode("utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: not a safetensors file")
    return header, 8 + n, size


def metadata_of(path: Path) -> dict[str, str]:
    header, _, _ = read_header(path)
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def _encode_header(header: dict[str, Any]) -> bytes:
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the reference writer pads the header to 8 bytes; keep the tensors aligned
    return struct.pack("<Q", len(raw)) + raw


def _fsync_close(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def rewrite_metadata(src: Path, dst: Path, metadata: Mapping[str, str]) -> None:
    """Copy ``src`` to ``dst`` with ``metadata`` merged into its header (new keys win). Tensors untouched."""
    header, start, size = read_header(src)
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if start + max(ends, default=0) > size:
        raise ModelFileError(f"{src}: truncated ({size} bytes, the header needs {start + max(ends)})")
    meta = dict(header.get("__metadata__") or {})
    meta.update({str(k): str(v) for k, v in metadata.items()})
    header["__metadata__"] = meta
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(_encode_header(header))
        fin.seek(start)
        shutil.copyfileobj(fin, fout, 1 << 22)
        _fsync_close(fout)


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "F8_E4M3": 1, "F8_E5M2": 1}
_FLOATS = ("F32", "F16", "BF16", "F64")


def _to_f32(raw: bytes, code: str):
    import numpy as np

    if code == "BF16":  # bf16 is the high half of an f32
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view("<f4")
    return np.frombuffer(raw, dtype={"F32": "<f4", "F16": "<f2", "F64": "<f8"}[code]).astype("<f4")


def _from_f32(x, code: str) -> bytes:
    import numpy as np

    if code == "BF16":
        # round to nearest, ties to even (what torch's .to(bfloat16) does); NaN stays a quiet NaN
        u = x.view("<u4")
        out = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype("<u2")
        out[np.isnan(x)] = 0x7FC0
        return out.tobytes()
    with np.errstate(over="ignore"):  # fp16 overflow gives inf, as in torch
        return x.astype({"F32": "<f4", "F16": "<f2", "F64": "<f8"}[code]).tobytes()


def convert(src: Path, dst: Path, dtype: str, metadata: Mapping[str, str]) -> None:
    """Cast every floating tensor to ``dtype`` (bf16|fp16|fp32), one tensor at a time, into ``dst``.

    The new header is computed from the shapes first, then each tensor is read, cast (numpy, through
    fp32, which holds bf16 and fp16 exactly) and appended, so memory stays near the largest tensor and no
    torch import is needed. fp8 and integer tensors are left as they are (casting fp8 needs a scale).
    """
    if dtype not in DTYPES:
        raise BadInput(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    code = DTYPES[dtype]
    header, start, size = read_header(src)
    meta = dict(header.pop("__metadata__", None) or {})
    meta.update({str(k): str(v) for k, v in metadata.items()})
    names = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    new, offset = {}, 0
    for k in names:
        t = header[k]
        out_code = code if t["dtype"] in _FLOATS else t["dtype"]
        n = 1
        for d in t["shape"]:
            n *= d
        length = n * _ITEMSIZE[out_code]
        new[k] = {"dtype": out_code, "shape": t["shape"], "data_offsets": [offset, offset + length]}
        offset += length
    if start + max((t["data_offsets"][1] for t in header.values()), default=0) > size:
        raise ModelFileError(f"{src}: truncated ({size} bytes)")
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(_encode_header({"__metadata__": meta, **new}))
        for k in names:
            t = header[k]
            a, b = t["data_offsets"]
            fin.seek(start + a)
            raw = fin.read(b - a)
            if t["dtype"] in _FLOATS and t["dtype"] != code:
                raw = _from_f32(_to_f32(raw, t["dtype"]), code)
            fout.write(raw)
        _fsync_close(fout)


def tensor_dtypes(path: Path) -> dict[str, int]:
    """safetensors dtype code -> number of weight tensors (alphas left out: they are scalars)."""
    header, _, _ = read_header(path)
    counts: dict[str, int] = {}
    for key, value in header.items():
        if key == "__metadata__" or key.endswith(".alpha"):
            continue
        counts[value["dtype"]] = counts.get(value["dtype"], 0) + 1
    return counts


def dtype_name(code: str | None) -> str | None:
    return {v: k for k, v in DTYPES.items()}.get(code, code.lower() if code else None)
