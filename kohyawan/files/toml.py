"""Reading TOML files on every Python kohyawan supports: the stdlib's ``tomllib`` (3.11+), else ``tomli``
(3.10), which has the same API (see docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from kohyawan.errors import ConfigError


def read(path: Path) -> dict:
    """The file's table; a file that is not UTF-8 TOML is a ConfigError naming it (one line, exit 2)."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
