"""The safetensors format in one place: its dtypes, reading a header (metadata, tensor byte ranges) and
laying one out; ``kohyawan.files.stream`` writes files with it. No torch, no numpy: bytes and JSON only.

The format: 8 bytes little-endian header length N, N bytes of UTF-8 JSON ({name: {dtype, shape,
data_offsets}, "__metadata__": {str: str}}), then the tensor bytes. Reading the header costs two small
reads however large the file is. Callers word their own errors: the model-file reader and the LoRA reader
pass a ``Wording`` (an error class and one message per way a file can be broken), so each keeps its own
one-line messages. Writing lays the header out exactly as the safetensors library does (tensor order,
compact JSON, space padding to 8 bytes), so a streamed file is byte-identical to the library's.
See docs/architecture.md for where this sits in kohyawan.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping


# ---------------------------------------------------------------- dtypes


@dataclass(frozen=True)
class Dtype:
    code: str                 # the format's name: "BF16"
    bits: int                 # per element (F4 and F6 pack several elements into a byte)
    short: str | None = None  # kohyawan's name: "bf16"


# In the library's enum order: it writes tensors sorted by this order, highest first, then by name.
DTYPES = {d.code: d for d in (
    Dtype("BOOL", 8), Dtype("F4", 4), Dtype("F6_E2M3", 6), Dtype("F6_E3M2", 6), Dtype("U8", 8), Dtype("I8", 8),
    Dtype("F8_E5M2", 8, "fp8_e5m2"), Dtype("F8_E4M3", 8, "fp8_e4m3fn"), Dtype("F8_E8M0", 8),
    Dtype("F8_E4M3FNUZ", 8), Dtype("F8_E5M2FNUZ", 8), Dtype("I16", 16), Dtype("U16", 16),
    Dtype("F16", 16, "fp16"), Dtype("BF16", 16, "bf16"), Dtype("I32", 32), Dtype("U32", 32),
    Dtype("F32", 32, "fp32"), Dtype("C64", 64), Dtype("F64", 64, "fp64"), Dtype("I64", 64), Dtype("U64", 64),
)}
_RANK = {code: i for i, code in enumerate(DTYPES)}
FROM_SHORT = {d.short: d.code for d in DTYPES.values() if d.short}
FLOAT_CODES = ("F32", "F16", "BF16", "F64")
# the dtypes kohyawan writes LoRA files in (--dtype of convert, resize, merge and export)
LORA_DTYPES = ("bf16", "fp16", "fp32")


def nbytes(code: str, shape: Iterable[int]) -> int:
    """Bytes of a tensor (sub-byte dtypes rounded up to whole bytes)."""
    return (math.prod(shape) * DTYPES[code].bits + 7) // 8


def short_name(code: str) -> str:
    """'BF16' -> 'bf16'; a dtype kohyawan has no name for in lower case ('I8' -> 'i8')."""
    d = DTYPES.get(code)
    return d.short if d and d.short else code.lower()


# ---------------------------------------------------------------- reading

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the library refuses larger headers; a WAN DiT's is under 200 kB


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

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    path: Path
    file_size: int
    header_size: int  # the JSON part, without the 8 length bytes
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]

    @property
    def data_start(self) -> int:
        return 8 + self.header_size

    @property
    def data_size(self) -> int:
        return max((t.end for t in self.tensors.values()), default=0)

    def span(self, name: str) -> tuple[int, int]:
        """A tensor's byte range in the file."""
        t = self.tensors[name]
        return self.data_start + t.start, self.data_start + t.end


@dataclass(frozen=True)
class Wording:
    """How a reader words each way a file can be broken: ``str.format`` templates over the facts
    path, name (the file name), shown (the path with control characters escaped), size, size_words
    ("empty" | "only N bytes"), length (announced header length), need (8 + length), reason (the OS's),
    key, got, shape, data_need, data_have, expected (the file size the header describes)."""

    error: type[Exception]
    missing: str
    folder: str
    denied: str
    unreadable: str
    short: str
    bad_length: str
    truncated_header: str
    not_json: str
    not_object: str
    bad_metadata: str
    bad_entry: str
    bad_size: str
    truncated_data: str


def shown(path: os.PathLike | str) -> str:
    """A path as the user typed it, safe to put on one line (control characters escaped)."""
    text = os.fspath(path)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return ascii(text)
    return text


class _Say:
    def __init__(self, path: os.PathLike | str, words: Wording):
        self.words = words
        self.facts = {"path": Path(path), "name": Path(path).name, "shown": shown(path)}

    def __call__(self, what: str, **facts) -> Exception:
        return self.words.error(getattr(self.words, what).format(**self.facts, **facts))


def read_header(path: os.PathLike | str, words: Wording) -> Header:
    """The header of a safetensors file, every tensor's range checked against its shape and the file's
    length; a broken file raises ``words.error`` with the matching message."""
    p = Path(path)
    say = _Say(path, words)
    size, n, raw = _read_raw(p, say)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise say("not_json") from None
    if not isinstance(doc, dict):
        raise say("not_object")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise say("bad_metadata")
    tensors = {str(key): _entry(str(key), info, say) for key, info in doc.items()}
    header = Header(p, size, n, tensors, {str(k): str(v) for k, v in metadata.items()})
    if header.data_start + header.data_size > size:
        raise say("truncated_data", size=size, data_need=header.data_size, data_have=max(size - header.data_start, 0),
                  expected=header.data_start + header.data_size)
    return header


def _read_raw(p: Path, say: _Say) -> tuple[int, int, bytes]:
    try:
        with open(p, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                raise say("short", size=size, size_words="empty" if size == 0 else f"only {size} bytes")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > MAX_HEADER_BYTES:
                raise say("bad_length", length=n)
            if 8 + n > size:
                raise say("truncated_header", length=n, need=8 + n, size=size)
            return size, n, fh.read(n)
    except FileNotFoundError:
        raise say("missing") from None
    except IsADirectoryError:
        raise say("folder") from None
    except PermissionError:
        raise say("denied") from None
    except OSError as exc:
        raise say("unreadable", reason=exc.strerror or exc) from None


def _entry(key: str, info: object, say: _Say) -> TensorEntry:
    if not isinstance(info, dict):
        raise say("bad_entry", key=key)
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPES or not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
        raise say("bad_entry", key=key)
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in [*shape, *offsets]):
        raise say("bad_entry", key=key)
    start, end = offsets
    if end - start != nbytes(dtype, shape):
        raise say("bad_size", key=key, got=end - start, shape=list(shape))
    return TensorEntry(key, dtype, tuple(shape), start, end)


def read_metadata(path: os.PathLike | str, words: Wording) -> dict[str, str]:
    return read_header(path, words).metadata


def data_hash(header: Header) -> str:
    """sha256 over the data section: ``sshs_model_hash`` when the file was written in library order."""
    digest = hashlib.sha256()
    with open(header.path, "rb") as fh:
        fh.seek(header.data_start)
        while block := fh.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- laying out (see stream.py for writing)


@dataclass(frozen=True)
class OutSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.shape)


def library_order(specs: Iterable[OutSpec]) -> list[OutSpec]:
    return sorted(specs, key=lambda s: (-_RANK[s.dtype], s.name))


def header_bytes(specs: list[OutSpec], metadata: Mapping[str, str] | None) -> bytes:
    """The JSON header exactly as the library writes it for these tensors (in the given order)."""
    entries, offset = [], 0
    for spec in specs:
        entries.append(TensorEntry(spec.name, spec.dtype, spec.shape, offset, offset + spec.nbytes))
        offset += spec.nbytes
    return encode_header(entries, metadata)


def encode_header(entries: Iterable[TensorEntry], metadata: Mapping[str, str] | None) -> bytes:
    """The JSON header for tensors at the given offsets: metadata first, compact, padded to 8 bytes."""
    doc: dict = {}
    if metadata is not None:
        doc["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for e in entries:
        doc[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [e.start, e.end]}
    raw = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return raw + b" " * (-len(raw) % 8)


def placeholder(tag: str, width: int) -> str:
    """A fixed-width stand-in for a metadata value that is known only after the tensors are written."""
    return ("{" + tag + "}" + "#" * width)[:width]
