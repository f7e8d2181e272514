"""Names in the registry: validation (nothing a user types may escape the registry folder) and file names.

File names follow the guide: ``wan2.2_<kind>_<name>_v<N>_<YYYYMMDD>.safetensors``. A per-expert pair puts
the expert right after the name, ``wan2.2_<kind>_<name>_high_v<N>_<YYYYMMDD>.safetensors`` and
``..._low_...``, so both files of one version sort next to each other and a glob on ``_v<N>_`` finds the pair.
Names and clients may hold letters, digits and hyphens only: ``_`` separates the fields of a file name,
so allowing it in a name would make names ambiguous (``sarah_high`` vs expert ``high``).
"""

from __future__ import annotations

import re
from datetime import date

from kohyawan.errors import BadInput

KINDS = ("character", "style", "motion", "domain")
EXPERTS = ("both", "high", "low")
DEFAULT_CLIENT = "default"
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_VERSION = re.compile(r"v?([1-9][0-9]{0,5})")


def check_slug(value: str, what: str) -> str:
    """Return ``value`` if it is a safe name, else raise BadInput saying what is allowed."""
    if value is None or not str(value).strip():
        raise BadInput(f"{what} is empty; give letters, digits and hyphens (e.g. 'sarah-v' or 'brand-x')")
    value = str(value)
    if not SLUG.fullmatch(value):
        hint = re.sub(r"[^A-Za-z0-9-]+", "-", value).strip("-")[:64] or "name"
        raise BadInput(
            f"{what} {value!r} is not allowed: use 1-64 letters, digits and hyphens, starting with a letter "
            f"or digit (no '/', '..', '_', spaces); for example {hint!r}"
        )
    return value


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise BadInput(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    return kind


def parse_version(text: str | int) -> int:
    """'v3' or '3' -> 3."""
    m = _VERSION.fullmatch(str(text).strip())
    if not m:
        raise BadInput(f"version {text!r} is not a version: write v1, v2, ... (or 'current' where allowed)")
    return int(m.group(1))


def model_key(kind: str, client: str, name: str) -> str:
    return f"{kind}/{client}/{name}"


def model_folder(kind: str, client: str) -> str:
    """Folder of a model's files, relative to the registry root (always forward slashes)."""
    return f"{kind}s/{client}"


def lora_file_name(kind: str, name: str, version: int, day: date, expert: str = "both") -> str:
    if expert not in EXPERTS:
        raise BadInput(f"expert {expert!r} is not one of {', '.join(EXPERTS)}")
    mid = "" if expert == "both" else f"_{expert}"
    return f"wan2.2_{kind}_{name}{mid}_v{version}_{day:%Y%m%d}.safetensors"


def notes_file_name(kind: str, name: str) -> str:
    return f"wan2.2_{kind}_{name}_training_notes.md"
