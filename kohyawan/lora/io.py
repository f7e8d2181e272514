"""LoRA files as the LoRA tools read them: ``kohyawan.files.safetensors`` with the tools' own one-line
``LoraFileError`` messages (a truncated file, a header that is not JSON, offsets past the end). The
format itself (dtypes, header layout, the streamed writer, musubi's hashes) lives in that module; see
docs/architecture.md.
"""

from __future__ import annotations

import os

from kohyawan.errors import BadInput
from kohyawan.files import safetensors as st
from kohyawan.files.atomic import current_umask as _umask  # noqa: F401  (re-exported for the tests)
from kohyawan.files.digest import sha256_file  # noqa: F401  (re-exported)
from kohyawan.files.safetensors import OutSpec, data_hash, write_stream  # noqa: F401  (re-exported)


class LoraFileError(BadInput):
    """A file that is missing, truncated, not safetensors, or not a LoRA."""


WORDS = st.Wording(
    error=LoraFileError,
    missing="{path}: no such file",
    folder="{path}: is a folder, not a LoRA file",
    denied="{path}: not readable (permission denied)",
    unreadable="{path}: cannot read ({reason})",
    short="{name}: not a safetensors file ({size} bytes, too short for a header)",
    bad_length="{name}: not a safetensors file (header length {length} is impossible)",
    truncated_header="{name}: truncated: header needs {need} bytes, file has {size}",
    not_json="{name}: not a safetensors file (header is not JSON)",
    not_object="{name}: not a safetensors file (header is not a JSON object)",
    bad_metadata="{name}: malformed safetensors metadata",
    bad_entry="{name}: malformed safetensors header entry {key!r}",
    bad_size="{name}: malformed safetensors header: {key} has {got} bytes for shape {shape}",
    truncated_data="{name}: truncated: tensors need {data_need} bytes of data, file has {data_have}",
)


def read_header(path: os.PathLike | str) -> st.Header:
    return st.read_header(path, WORDS)


def read_metadata(path: os.PathLike | str) -> dict[str, str]:
    """A LoRA file's ``__metadata__`` (all strings), header only."""
    return st.read_metadata(path, WORDS)
