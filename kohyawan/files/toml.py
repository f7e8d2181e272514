"""Reading TOML on every Python kohyawan supports: the standard library's ``tomllib`` from 3.11, ``tomli``
(the same parser and API, an install requirement on 3.10) before. The choice is made here, once.
Design: docs/architecture.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kohyawan.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib as _parser
else:  # pragma: no cover - exercised by the Python 3.10 run in .ci/run
    import tomli as _parser

loads = _parser.loads
load = _parser.load
TOMLDecodeError = _parser.TOMLDecodeError


def read(path: Path) -> dict:
    """The file's table; a file that is not UTF-8 TOML is a ConfigError naming it (one line, exit 2)."""
    try:
        return loads(Path(path).read_text(encoding="utf-8"))
    except (TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
