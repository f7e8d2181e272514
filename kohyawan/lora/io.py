"""safetensors files read from their header and written as a stream, without torch.

Reading trusts nothing: a truncated file, a header that is not JSON, or offsets that run past the end
all become one-line ``LoraFileError``s. Writing lays the header out exactly as the safetensors library
does (tensor order, JSON form, space padding to 8 bytes), so ``sshs_model_hash`` (a sha256 over the data
section, which musubi-tuner precomputes with the library's own serialiser) can be recomputed while the
tensors stream through, one at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from kohyawan.errors import BadInput
from kohyawan.files.digest import sha256_file  # noqa: F401  (re-exported)


class LoraFileError(BadInput):
    """A file that is missing, truncated, not safetensors, or not a LoRA."""


# safetensors dtype -> bytes per element
ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
# The library orders tensors by its dtype enum, highest first, then by name; this is that enum order.
_DTYPE_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32",
                "F32", "F64", "I64", "U64"]
SHORT_DTYPE = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64", "F8_E4M3": "fp8_e4m3fn",
               "F8_E5M2": "fp8_e5m2"}
DTYPE_FROM_SHORT = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # offsets inside the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    header_len: int
    file_bytes: int

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def read_header(path: Path) -> Header:
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise LoraFileError(f"{name}: not a safetensors file ({size} bytes, too short for a header)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or n < 2:
                raise LoraFileError(f"{name}: not a safetensors file (header length {n} is impossible)")
            if 8 + n > size:
                raise LoraFileError(f"{name}: truncated: header needs {8 + n} bytes, file has {size}")
            raw = fh.read(n)
    except FileNotFoundError:
        raise LoraFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LoraFileError(f"{path}: is a folder, not a LoRA file") from None
    except PermissionError:
        raise LoraFileError(f"{path}: not readable (permission denied)") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LoraFileError(f"{name}: not a safetensors file (header is not JSON)") from None
    if not isinstance(doc, dict):
        raise LoraFileError(f"{name}: not a safetensors file (header is not a JSON object)")
    meta = doc.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise LoraFileError(f"{name}: malformed safetensors metadata")
    tensors: dict[str, TensorEntry] = {}
    data_len = size - 8 - n
    end_max = 0
    for key, info in doc.items():
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise LoraFileError(f"{name}: malformed safetensors header entry {key!r}") from None
        count = 1
        for d in shape:
            count *= d
        if dtype in ITEMSIZE and end - start != count * ITEMSIZE[dtype]:
            raise LoraFileError(f"{name}: malformed safetensors header: {key} has {end - start} bytes for shape {list(shape)}")
        tensors[key] = TensorEntry(key, dtype, shape, int(start), int(end))
        end_max = max(end_max, int(end))
    if end_max > data_len:
        raise LoraFileError(f"{name}: truncated: tensors need {end_max} bytes of data, file has {max(data_len, 0)}")
    return Header(path, tensors, {str(k): str(v) for k, v in meta.items()}, n, size)


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class OutSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count * ITEMSIZE[self.dtype]


def library_order(specs: Iterable[OutSpec]) -> list[OutSpec]:
    return sorted(specs, key=lambda s: (-_DTYPE_ORDER.index(s.dtype), s.name))


def header_bytes(specs: list[OutSpec], metadata: Mapping[str, str] | None) -> bytes:
    """The header exactly as safetensors would write it for these tensors (in library order)."""
    doc: dict = {}
    if metadata is not None:
        doc["__metadata__"] = dict(metadata)
    offset = 0
    for spec in specs:
        doc[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    raw = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return raw + b" " * ((8 - len(raw) % 8) % 8)


_LEGACY_OFFSET, _LEGACY_LEN = 0x100000, 0x10000


def placeholder(tag: str, width: int) -> str:
    """A fixed-width stand-in for a metadata value that is known only after the tensors are written."""
    return ("{" + tag + "}" + "#" * width)[:width]


def write_stream(path: Path, specs: Iterable[OutSpec], metadata: Mapping[str, str],
                 produce: Callable[[OutSpec], bytes], *, musubi_hashes: bool = True,
                 late: Mapping[str, Callable[[], str]] | None = None) -> None:
    """Write a safetensors file atomically, asking ``produce`` for each tensor's bytes in file order.

    With ``musubi_hashes`` the file carries ``sshs_model_hash``/``sshs_legacy_hash`` recomputed the way
    musubi-tuner computes them (over a serialisation whose metadata holds only the ``ss_*`` keys), so
    tools that index LoRAs by that hash see new weights as a new model. ``late`` maps placeholders
    (see ``placeholder``) found in metadata values to functions giving their final text, of the same
    width, once every tensor has been produced: the header is patched in place before the rename.
    """
    path = Path(path)
    ordered = library_order(specs)
    meta = {str(k): str(v) for k, v in metadata.items()}
    late = dict(late or {})
    digest = hashlib.sha256()
    legacy = bytearray()
    if musubi_hashes:
        meta["sshs_model_hash"] = placeholder("sshs_model_hash", 64)
        meta["sshs_legacy_hash"] = placeholder("legacy", 8)
        late[meta["sshs_model_hash"]] = lambda: digest.hexdigest()
        late[meta["sshs_legacy_hash"]] = lambda: hashlib.sha256(bytes(legacy)).hexdigest()[:8]
        ss_only = {k: v for k, v in meta.items() if k.startswith("ss_")}
        # musubi's legacy hash reads 64 KiB at 1 MiB into that ss_-only serialisation.
        legacy_at = _LEGACY_OFFSET - 8 - len(header_bytes(ordered, ss_only))
    header = header_bytes(ordered, meta)
    for token in late:
        if header.count(token.encode()) != 1:
            raise RuntimeError(f"placeholder {token!r} must appear exactly once in the header")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(struct.pack("<Q", len(header)))
            fh.write(header)
            written = 0
            for spec in ordered:
                data = produce(spec)
                if len(data) != spec.nbytes:
                    raise RuntimeError(f"{spec.name}: produced {len(data)} bytes, expected {spec.nbytes}")
                fh.write(data)
                digest.update(data)
                if musubi_hashes:
                    lo, hi = max(legacy_at, written), min(legacy_at + _LEGACY_LEN, written + len(data))
                    if lo < hi:
                        legacy.extend(memoryview(data)[lo - written:hi - written])
                written += len(data)
            for token, final in late.items():
                value = final().encode()
                if len(value) != len(token.encode()):
                    raise RuntimeError(f"late value {value!r} does not fit placeholder {token!r}")
                fh.seek(8 + header.index(token.encode()))
                fh.write(value)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a LoRA is shared like any file the user saves
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def data_hash(header: Header) -> str:
    """sha256 over the data section: equals ``sshs_model_hash`` when the file was written in library order."""
    digest = hashlib.sha256()
    with open(header.path, "rb") as fh:
        fh.seek(header.data_start)
        while block := fh.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()
