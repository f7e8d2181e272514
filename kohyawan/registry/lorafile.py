"""Writing a LoRA file into the registry with kohyawan metadata added (and optionally a new dtype).

Metadata lives in the safetensors JSON header, so without a dtype change the file is rewritten by
streaming: new header, then the tensor bytes copied unchanged (no torch, memory stays flat, tensors stay
bit-identical). A dtype change needs torch (imported here only) and holds one file's tensors in memory.
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


def convert(src: Path, dst: Path, dtype: str, metadata: Mapping[str, str]) -> None:
    """Cast every floating tensor to ``dtype`` (bf16|fp16|fp32) and write ``dst`` with merged metadata."""
    if dtype not in DTYPES:
        raise BadInput(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    target = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    meta = metadata_of(src)
    meta.update({str(k): str(v) for k, v in metadata.items()})
    tensors = {}
    with safe_open(str(src), framework="pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            tensors[key] = t.to(target) if t.is_floating_point() else t
    save_file(tensors, str(dst), metadata=meta)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


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
