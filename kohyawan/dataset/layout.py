"""The prepared dataset's layout on disk, safe output names, and ``dataset.toml``.

DEST/images/<name>.png + <name>.txt, DEST/videos/<name>.mp4 + <name>.txt, DEST/dataset.toml,
DEST/report.json, DEST/.kohyawan/ (manifest, lock, latent caches). Temporary files start with
``.partial-`` so no reader (nor ``dataset check``) takes a half-written file for a finished one.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path
from typing import Sequence

import tomli_w

from kohyawan.files import atomic

IMAGES = "images"
VIDEOS = "videos"
STATE = ".kohyawan"
TOML = "dataset.toml"
REPORT = "report.json"
PARTIAL = ".partial-"


def safe_stem(rel: str) -> str:
    """Stable, collision-free, shell- and trainer-safe name for a source path relative to SRC.

    Readable part: the path folded to ASCII with anything but [A-Za-z0-9_-] turned into '_'; the
    8-hex suffix is a hash of the exact relative path, so two sources never share a name.
    """
    stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
    folded = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", folded).strip("_-")[:60] or "item"
    digest = hashlib.sha1(rel.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{readable}-{digest}"


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write under a ``.partial-`` temporary name (``dataset check`` and reruns know those), then rename."""
    write = atomic.write_text if isinstance(data, str) else atomic.write_bytes
    write(path, data, prefix=PARTIAL)


def write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    atomic_write(path, text)
    return True


def dataset_toml_document(*, resolution: int | Sequence[int], target_frames: Sequence[int],
                          batch_size: int = 1, num_repeats: int = 1, enable_bucket: bool = False,
                          frame_extraction: str = "head", images: bool = True, videos: bool = True,
                          caption_extension: str = ".txt") -> dict:
    """The musubi-tuner dataset config of a prepared folder as a dict (pure).

    Its folders are relative to the folder itself, so a dataset copied or moved to another machine still
    describes itself: kohyawan (``check``, ``run``) reads them relative to the folder, and musubi-tuner, which
    reads them relative to its working directory, when it is started from inside the folder. The config
    kohyawan hands the trainer is the one ``config render`` writes, with absolute paths.
    """
    reso = [int(resolution), int(resolution)] if isinstance(resolution, int) else [int(v) for v in resolution]
    frames = sorted({int(n) for n in target_frames})
    if not frames or any(n < 1 or (n - 1) % 4 for n in frames):
        raise ValueError(f"target_frames must be 4n+1 counts, got {list(target_frames)}")
    general = {"resolution": reso, "caption_extension": caption_extension, "batch_size": int(batch_size),
               "num_repeats": int(num_repeats), "enable_bucket": bool(enable_bucket),
               "bucket_no_upscale": False}
    datasets = []
    if images:
        datasets.append({"image_directory": IMAGES, "cache_directory": f"{STATE}/cache/{IMAGES}"})
    if videos:
        video = {"video_directory": VIDEOS, "cache_directory": f"{STATE}/cache/{VIDEOS}",
                 "target_frames": frames, "frame_extraction": frame_extraction}
        if frame_extraction == "full":
            # "full" takes each clip whole (rounded to 4n+1), capped by max_frames
            video["max_frames"] = max(frames)
        datasets.append(video)
    return {"general": general, "datasets": datasets}


TOML_HEADER = ("# musubi-tuner dataset config, written by kohyawan dataset prepare. Its folders are relative to\n"
               "# this folder: start the trainer from inside it, or use `kohyawan config render` (absolute paths).\n\n")


def write_dataset_toml(dest: Path, *, resolution: int | Sequence[int], target_frames: Sequence[int],
                       batch_size: int = 1, num_repeats: int = 1, enable_bucket: bool = False,
                       frame_extraction: str = "head", images: bool | None = None,
                       videos: bool | None = None) -> Path:
    """Write DEST/dataset.toml for the media present under DEST (both kinds when neither exists yet).

    Clips written by ``dataset prepare`` are already at the target rate and 4n+1 long, so no
    ``source_fps`` is set; prepare passes ``frame_extraction="full"`` so each clip is one training item.
    """
    dest = Path(dest)
    if images is None or videos is None:
        has_images = any((dest / IMAGES).glob("*.png")) if (dest / IMAGES).is_dir() else False
        has_videos = any((dest / VIDEOS).glob("*.mp4")) if (dest / VIDEOS).is_dir() else False
        if not has_images and not has_videos:
            has_images = has_videos = True
        images = has_images if images is None else images
        videos = has_videos if videos is None else videos
    doc = dataset_toml_document(resolution=resolution, target_frames=target_frames, batch_size=batch_size,
                                num_repeats=num_repeats, enable_bucket=enable_bucket,
                                frame_extraction=frame_extraction, images=images, videos=videos)
    path = dest / TOML
    atomic_write(path, TOML_HEADER + tomli_w.dumps(doc))
    return path
