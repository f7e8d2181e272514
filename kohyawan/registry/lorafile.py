"""Writing a LoRA file into the registry with kohyawan metadata added (and optionally a new dtype).

Metadata lives in the safetensors JSON header, so without a dtype change the file is rewritten by
streaming: new header, then the tensor bytes copied unchanged from the page cache (no torch, memory stays
flat, tensors stay bit-identical). A dtype change streams one tensor at a time through numpy (no torch),
in the library's tensor order. Either way the copy's sha256 is computed from the bytes as they are
written (``kohyawan.files.stream``), never by reading the copy back; musubi's ``sshs_*`` hashes are kept
true (the legacy one follows the new ``ss_*`` metadata; a dtype change recomputes both first, since the
file's own hash needs its final header). See docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from kohyawan.errors import BadInput
from kohyawan.files import stream
from kohyawan.files.safetensors import FLOAT_CODES, FROM_SHORT, LORA_DTYPES, OutSpec, short_name
from kohyawan.lora.io import read_header, read_metadata

DTYPES = {short: FROM_SHORT[short] for short in LORA_DTYPES}


def metadata_of(path: Path) -> dict[str, str]:
    return read_metadata(Path(path))


def rewrite_metadata(src: Path, dst: Path, metadata: Mapping[str, str]) -> stream.Written:
    """Copy ``src`` to ``dst`` with ``metadata`` merged into its header (new keys win). Tensors untouched."""
    h = read_header(src)
    return stream.copy_with_metadata(h, Path(dst), {**h.metadata, **{str(k): str(v) for k, v in metadata.items()}})


def convert(src: Path, dst: Path, dtype: str, metadata: Mapping[str, str]) -> stream.Written:
    """Cast every floating tensor to ``dtype`` (bf16|fp16|fp32), one tensor at a time, into ``dst``.

    Each tensor is cast from the page cache (numpy, through fp32, which holds bf16 and fp16 exactly) as
    the writer asks for it, so memory stays near the largest tensor and no torch import is needed. fp8
    and integer tensors are left as they are (casting fp8 needs a scale).
    """
    if dtype not in DTYPES:
        raise BadInput(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    from kohyawan.files import floatcast

    code = DTYPES[dtype]
    h = read_header(src)
    meta = {**h.metadata, **{str(k): str(v) for k, v in metadata.items()}}
    specs = [OutSpec(t.name, code if t.dtype in FLOAT_CODES else t.dtype, t.shape) for t in h.tensors.values()]
    with stream.mapped(h.path) as view:

        def produce(spec: OutSpec):
            raw = view[slice(*h.span(spec.name))]
            old = h.tensors[spec.name].dtype
            return raw if old == spec.dtype else floatcast.from_f32(floatcast.to_f32(raw, old), spec.dtype)

        if stream.SSHS_MODEL in meta or stream.SSHS_LEGACY in meta:
            meta.update(stream.musubi_hashes_of(specs, meta, produce))
        return stream.write_stream(Path(dst), specs, meta, produce, musubi_hashes=False, file_hash=True)


def tensor_dtypes(path: Path) -> dict[str, int]:
    """safetensors dtype code -> number of weight tensors (alphas left out: they are scalars)."""
    counts: dict[str, int] = {}
    for t in read_header(path).tensors.values():
        if not t.name.endswith(".alpha"):
            counts[t.dtype] = counts.get(t.dtype, 0) + 1
    return counts


def dtype_name(code: str | None) -> str | None:
    return short_name(code) if code else None
