"""Where the bundled ``templates/`` and ``profiles/`` are.

Installed, they live inside the package (``kohyawan/_templates``); in a source checkout they are the
top-level folders beside the package (design card layout).
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent.parent  # the kohyawan package


def _bundled(name: str) -> Path:
    for candidate in (_PKG / f"_{name}", _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"kohyawan's bundled {name}/ folder is missing; reinstall kohyawan")


def templates_dir() -> Path:
    return _bundled("templates")


def profiles_dir() -> Path:
    return _bundled("profiles")
