"""Read a model file's safetensors header without touching tensor data.

The format and the reader live in ``kohyawan.files.safetensors``; this module words every way a model
file can be broken as one ``ModelFileError`` line naming the file, so a 28 GB DiT (or a sparse stand-in
for one) is inspected in milliseconds with a clear answer. See docs/architecture.md.
"""

from __future__ import annotations

import os

from kohyawan.errors import ModelFileError
from kohyawan.files import safetensors as st
from kohyawan.files.safetensors import Header, shown  # noqa: F401  (re-exported)

_CORRUPT = "{shown}: corrupt safetensors header"
WORDS = st.Wording(
    error=ModelFileError,
    missing="{shown}: no such file",
    folder="{shown}: is a folder, not a model file",
    denied="{shown}: permission denied",
    unreadable="{shown}: cannot read ({reason})",
    short="{shown}: not a safetensors file ({size_words})",
    bad_length="{shown}: not a safetensors file (its first 8 bytes do not give a plausible header length)",
    truncated_header="{shown}: not a safetensors file or truncated (header of {length} bytes announced, file has "
                     "{size} bytes)",
    not_json="{shown}: not a safetensors file (its header is not JSON)",
    not_object="{shown}: not a safetensors file (its header is not a JSON object)",
    bad_metadata=_CORRUPT + " (__metadata__ is not an object)",
    bad_entry=_CORRUPT + " (tensor {key!r})",
    bad_size=_CORRUPT + " (tensor {key!r}): its byte range does not match its shape",
    truncated_data="{shown}: truncated: the header describes {expected} bytes, the file has {size} (an "
                   "interrupted download?)",
)


def read_header(path: os.PathLike | str) -> Header:
    return st.read_header(path, WORDS)
