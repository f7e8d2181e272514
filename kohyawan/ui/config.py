"""What the web server may show and touch: the configured folders, the access token, and the one function
that turns a path from a request into a file inside those folders (or refuses it)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from kohyawan.errors import BadInput

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
NAME = re.compile(r"[\w.-]+")   # a run id (as ``kohyawan run --name`` allows), a sweep or model name: no slash


class NotFound(BadInput):
    """Nothing at that address (HTTP 404)."""


class Forbidden(BadInput):
    """A path that would leave the configured folders (HTTP 403)."""


class Conflict(BadInput):
    """The request cannot be done in the present state, e.g. a run already supervised (HTTP 409)."""


@dataclass
class UiConfig:
    runs_dirs: tuple[Path, ...] = ()
    registry: Path | None = None
    batch_dirs: tuple[Path, ...] = ()
    grid_dirs: tuple[Path, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    poll_s: float = 0.5          # how often a live page's files are looked at

    def __post_init__(self):
        self.runs_dirs = tuple(Path(p).absolute() for p in self.runs_dirs)
        self.batch_dirs = tuple(Path(p).absolute() for p in self.batch_dirs)
        self.grid_dirs = tuple(Path(p).absolute() for p in self.grid_dirs)
        self.registry = Path(self.registry).absolute() if self.registry else None

    @property
    def local(self) -> bool:
        return self.host in LOCAL_HOSTS

    def with_token(self) -> "UiConfig":
        """A bind other than 127.0.0.1/localhost/::1 always has a token: the given one or a fresh one."""
        if self.token is None and not self.local:
            self.token = secrets.token_urlsafe(24)
        return self

    def grid_roots(self) -> tuple[Path, ...]:
        """Grids live in --grids folders and in sweep folders (RUNS_DIR/SWEEP/grid)."""
        return self.grid_dirs + self.runs_dirs


def check_name(text: str, what: str = "name") -> str:
    if not NAME.fullmatch(text or "") or text in (".", ".."):
        raise Forbidden(f"{what} {text!r}: not a plain name")
    return text


def pick(roots: tuple[Path, ...], index: int, what: str) -> Path:
    if not 0 <= index < len(roots):
        raise NotFound(f"no {what} folder #{index} (the server has {len(roots)})")
    return roots[index]


def inside(root: Path, rel: str) -> Path:
    """``root/rel`` resolved, refused with Forbidden when it leaves ``root`` (``..``, absolute paths, links)."""
    parts = Path(rel).parts
    if Path(rel).is_absolute() or ".." in parts or "\\" in rel or "\0" in rel:
        raise Forbidden(f"path {rel!r} leaves the served folder")
    full = (root / rel).resolve()
    if not full.is_relative_to(root.resolve()):
        raise Forbidden(f"path {rel!r} leaves the served folder")
    return full
