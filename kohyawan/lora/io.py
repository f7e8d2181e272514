"""LoRA files as the LoRA tools read them: ``kohyawan.files.safetensors`` with the tools' own one-line
``LoraFileError`` messages (a truncated file, a header that is not JSON, offsets past the end). The
format itself (dtypes, header layout, the streamed writer, musubi's hashes) lives in that module; see
docs/architecture.md.
"""

from __future__ import annotations

import os

from kohyawan.errors import BadInput
from kohyawan.files import safetensors as st
from kohyawan.files.digest import sha256_file  # noqa: F401  (re-exported for run/checkpoints.py)


class LoraFileError(BadInput):
    """A file that is missing, truncated, not safetensors, or not a LoRA."""


def _not_safetensors(why: str) -> str:
    return "{name}: not a safetensors file (" + why + ")"


WORDS = st.Wording(
    LoraFileError,
    # the OS refused the file: named as the user gave it
    missing="{path}: no such file", folder="{path}: is a folder, not a LoRA file",
    denied="{path}: not readable (permission denied)", unreadable="{path}: cannot read ({reason})",
    # not safetensors at all, or cut short: named by its file name
    short=_not_safetensors("{size} bytes, too short for a header"),
    bad_length=_not_safetensors("header length {length} is impossible"),
    not_json=_not_safetensors("header is not JSON"), not_object=_not_safetensors("header is not a JSON object"),
    truncated_header="{name}: truncated: header needs {need} bytes, file has {size}",
    truncated_data="{name}: truncated: tensors need {data_need} bytes of data, file has {data_have}",
    # a header that contradicts itself
    bad_metadata="{name}: malformed safetensors metadata",
    bad_entry="{name}: malformed safetensors header entry {key!r}",
    bad_size="{name}: malformed safetensors header: {key} has {got} bytes for shape {shape}",
)


def read_header(path: os.PathLike | str) -> st.Header:
    return st.read_header(path, WORDS)


def read_metadata(path: os.PathLike | str) -> dict[str, str]:
    """A LoRA file's ``__metadata__`` (all strings), header only."""
    return st.read_metadata(path, WORDS)
