"""Finding media files and their captions under SRC (read-only).

Two caption layouts are understood: a caption beside its media (``clip.mp4`` + ``clip.txt``), and the
guide's layout where ``images/`` or ``videos/`` sits beside ``captions/`` holding same-name ``.txt``
files (sub-folders mirrored). A sidecar caption wins when both exist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
VIDEO_EXTS = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"}
CAPTION_EXT = ".txt"
MEDIA_DIRS = {"images", "videos", "image", "video"}
CAPTION_DIRS = ("captions", "caption")


@dataclass(frozen=True)
class Source:
    rel: str                      # path relative to SRC, '/'-separated
    path: Path
    kind: str                     # "image" | "video"
    caption: Path | None          # the caption file found, if any


def kind_of(name: str) -> str | None:
    ext = os.path.splitext(name)[1].lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return None


def _caption_for(src: Path, path: Path) -> Path | None:
    sidecar = path.with_suffix(CAPTION_EXT)
    if sidecar.is_file():
        return sidecar
    # guide layout: <root>/images/<sub>/x.png  ->  <root>/captions/<sub>/x.txt
    parts = path.relative_to(src).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].lower() in MEDIA_DIRS:
            root = src.joinpath(*parts[:i])
            tail = Path(*parts[i + 1:]).with_suffix(CAPTION_EXT)
            for name in CAPTION_DIRS:
                for candidate in (root / name / tail, root / name / tail.name):
                    if candidate.is_file():
                        return candidate
    return None


def _walk(top: Path):
    """os.walk without touching access times: each folder is listed through an O_NOATIME descriptor."""
    try:
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with os.scandir(fd) as listing:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in listing]
    finally:
        os.close(fd)
    dirs = sorted(name for name, is_dir in entries if is_dir)
    files = sorted(name for name, is_dir in entries if not is_dir)
    yield top, dirs, files
    for name in dirs:
        if not name.startswith("."):
            yield from _walk(top / name)


def scan(src: Path) -> tuple[list[Source], list[str]]:
    """Media sources (sorted by relative path) and the relative paths of files that were ignored."""
    sources: list[Source] = []
    ignored: list[str] = []
    for root, dirs, files in _walk(src):
        base = Path(root)
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = base / name
            rel = path.relative_to(src).as_posix()
            kind = kind_of(name)
            if kind is None:
                if not name.lower().endswith(CAPTION_EXT):
                    ignored.append(rel)
                continue
            if not path.is_file():  # a dangling link or a fifo
                ignored.append(rel)
                continue
            sources.append(Source(rel=rel, path=path, kind=kind, caption=_caption_for(src, path)))
    sources.sort(key=lambda s: s.rel)
    return sources, ignored
