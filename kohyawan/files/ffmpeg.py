"""Which ffmpeg binary kohyawan runs, and where it came from: the one finder for dataset, doctor and comfy.

One order, first hit wins: ``KOHYAWAN_FFMPEG`` (a path; a path that is not an executable file is an error,
never silently skipped), then ``ffmpeg`` on PATH (users may have a build with more codecs), then the static
binary the ``imageio-ffmpeg`` wheel ships (an install requirement, so a fresh ``pip install kohyawan`` has
one). ``kohyawan doctor`` reports exactly what ``locate`` finds, so it approves the binary ``dataset
prepare`` and ``comfy grid`` will run. Standard library only (imageio-ffmpeg is imported when it is
needed). Design: docs/architecture.md.
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass

from kohyawan.errors import ToolMissing

ENV = "KOHYAWAN_FFMPEG"
INSTALL_HINT = (
    "ffmpeg not found: install it with `pip install imageio-ffmpeg` (a bundled static ffmpeg) "
    f"or your system package manager (e.g. `apt install ffmpeg`), or set {ENV} to its path"
)


@dataclass(frozen=True)
class Found:
    path: str
    source: str  # "KOHYAWAN_FFMPEG" | "PATH" | "imageio-ffmpeg"


def locate() -> Found | None:
    """The ffmpeg to run, looked up now; None when there is none. ToolMissing when KOHYAWAN_FFMPEG is set
    to something that is not an executable file."""
    explicit = os.environ.get(ENV)
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return Found(explicit, ENV)
        raise ToolMissing(f"{ENV}={explicit!r} is not an executable file")
    on_path = shutil.which("ffmpeg")
    if on_path:
        return Found(on_path, "PATH")
    try:
        import imageio_ffmpeg  # only needed when there is no system ffmpeg

        bundled = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # ImportError, or the wheel lacks a binary for this platform
        bundled = None
    if bundled and os.path.isfile(bundled):
        return Found(bundled, "imageio-ffmpeg")
    return None


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """The path of the ffmpeg to run (looked up once per process); ToolMissing when there is none."""
    try:
        found = locate()
    except ToolMissing as exc:
        raise ToolMissing(f"{exc}; {INSTALL_HINT}") from None
    if found is None:
        raise ToolMissing(INSTALL_HINT)
    return found.path
