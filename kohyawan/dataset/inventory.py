"""What a training dataset folder holds, as far as planning needs to know (no decoding).

A dataset is in the trainer's layout: media with a same-name caption beside each. ``dataset prepare`` writes
``images/`` and ``videos/`` subfolders and a ``report.json`` that records each clip's frame count and the
resolution the media were prepared at; a folder made by hand may hold media directly. Frame counts and the
prepared resolution are known only from the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kohyawan.dataset.layout import REPORT
from kohyawan.files import jsonfile

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_EXTS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")


@dataclass(frozen=True)
class MediaFolder:
    path: Path
    kind: str                      # "image" | "video"
    count: int
    uncaptioned: int
    frames: tuple[int, ...] | None  # per clip, when the prepare report says


@dataclass(frozen=True)
class Inventory:
    root: Path
    folders: tuple[MediaFolder, ...]
    # the size ``dataset prepare`` made the media (a square's side; with --keep-aspect the side of the area)
    prepared_resolution: int | None = None

    @property
    def images(self) -> int:
        return sum(f.count for f in self.folders if f.kind == "image")

    @property
    def clips(self) -> int:
        return sum(f.count for f in self.folders if f.kind == "video")

    @property
    def samples(self) -> int:
        return self.images + self.clips


def _media(folder: Path, exts: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)


def _read_report(root: Path) -> dict:
    """The prepare report of a dataset folder, or {} (none, or unreadable: nothing is known from it)."""
    return jsonfile.read_object(root / REPORT) or {}


def _prepared_resolution(report: dict) -> int | None:
    settings = report.get("settings")
    value = settings.get("resolution") if isinstance(settings, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _report_frames(report: dict) -> dict[str, int]:
    """Output path (relative to root) -> frames, from a prepare report."""
    frames = {}
    for item in report.get("items", []) or []:
        if not isinstance(item, dict):
            continue
        # One source can give several clips of different lengths: each clip's own length is in "clips".
        for clip in item.get("clips", []) or []:
            if isinstance(clip, dict) and isinstance(clip.get("frames"), int):
                frames[str(clip.get("output"))] = clip["frames"]
    return frames


def scan(root: Path, caption_extension: str = ".txt") -> Inventory:
    root = Path(root)
    candidates = [root / "images", root / "videos", root]
    prepared = _read_report(root)
    report = _report_frames(prepared)
    folders = []
    for folder in candidates:
        if not folder.is_dir():
            continue
        for kind, exts in (("image", IMAGE_EXTS), ("video", VIDEO_EXTS)):
            files = _media(folder, exts)
            if not files:
                continue
            uncaptioned = sum(1 for f in files if not f.with_suffix(caption_extension).is_file())
            frames = None
            if kind == "video" and report:
                rel = [str(f.relative_to(root)) for f in files]
                if all(r in report for r in rel):
                    frames = tuple(report[r] for r in rel)
            folders.append(MediaFolder(folder, kind, len(files), uncaptioned, frames))
    return Inventory(root, tuple(folders), _prepared_resolution(prepared))


def fingerprint(folder: Path) -> tuple[str, float] | None:
    """A cheap identity of a dataset folder: every file's relative path and size, and caption text;
    with the newest modification time seen, so a caller can tell whether it still describes the data
    a run trained on. Hidden entries (kohyawan's own state) and .safetensors caches are left out."""
    import hashlib

    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    newest = 0.0
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file() or p.suffix == ".safetensors":
            continue
        st = p.stat()
        newest = max(newest, st.st_mtime)
        h.update(f"{rel.as_posix()}\0{st.st_size}\0".encode("utf-8", "surrogateescape"))
        if p.suffix in (".txt", ".caption", ".jsonl", ".toml"):
            h.update(p.read_bytes())
    return h.hexdigest()[:16], newest
