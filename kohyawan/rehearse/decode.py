"""The simulated latent cacher reads the media the real one reads, and fails on them as it does.

musubi-tuner's ``wan_cache_latents.py`` opens every image of a dataset with PIL (``datasources.py``, then an
RGB conversion and a resize that decode every pixel) and decodes every clip with PyAV (``media_utils.load_video``:
``av.open``, then ``container.decode(video=0)`` up to the last frame an item takes). A file that does not
decode stops the script with a traceback whose last line is the library's own exception. Here images go
through the same PIL, and clips through ffmpeg (the libraries PyAV wraps) up to the same frame; a clip ffmpeg
cannot open ends with the line PyAV would raise, which names the file. See docs/architecture.md.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys

from kohyawan.trainer.cachefiles import TRAINER_FPS, DatasetCfg, Item, sources

# PyAV raises one class per FFmpeg error code, with the code as errno and the file name (av/error.pyx)
PYAV_ERRORS = {
    "Invalid data found when processing input": ("InvalidDataError", 1094995529),   # AVERROR_INVALIDDATA
    "End of file": ("EOFError", 541478725),                                           # AVERROR_EOF
    "No such file or directory": ("FileNotFoundError", 2),
    "Permission denied": ("PermissionError", 13),
}
_OPEN_ERROR = re.compile(r"Error opening input(?: files?)?: (.+)$", re.M)


def exception_line(exc: BaseException) -> str:
    """The last line of Python's traceback for ``exc``."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return f"{name}: {exc}"


def image_error(path: str) -> str | None:
    """What loading an image as the trainer does raises, as the traceback's last line; None when it loads."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.convert("RGB")  # decodes every pixel, as the trainer's conversion or resize does
    except Exception as exc:  # whatever PIL raises is what the trainer dies of
        return exception_line(exc)
    return None


def video_error(path: str, frames: int) -> str | None:
    """Decode the first ``frames`` frames of a clip (at least one); PyAV's exception line when it cannot be
    opened, None otherwise (a clip that ends early gives the trainer fewer frames, not an error)."""
    from kohyawan.dataset.ffmpeg import check_alive, url
    from kohyawan.files.ffmpeg import ffmpeg_exe

    argv = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", url(path), "-map", "0:v:0",
            "-vf", "scale=8:8,format=gray", "-frames:v", str(max(1, frames)), "-f", "rawvideo", "pipe:1"]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True)
    check_alive(proc.returncode, path)
    if proc.returncode == 0 or proc.stdout:
        return None
    stderr = proc.stderr.decode("utf-8", "replace")
    found = _OPEN_ERROR.findall(stderr)
    reason = found[-1].strip() if found else (stderr.strip().splitlines() or ["cannot decode"])[-1].strip()
    name, errno = PYAV_ERRORS.get(reason, ("FFmpegError", None))
    return f"av.error.{name}: " + (f"[Errno {errno}] " if errno is not None else "") + f"{reason}: {path!r}"


def frames_to_decode(ds: DatasetCfg, taken: list[Item]) -> int:
    """Source frames the trainer decodes from one clip: up to the end of the furthest item it takes (with
    source_fps it keeps only every 16/source_fps-th frame, so more source frames are read)."""
    end = max((int(item.latent_cache.rsplit("_", 3)[-3].split("-")[0]) + item.frames for item in taken),
              default=1)
    return math.ceil(end * ds.source_fps / TRAINER_FPS) + 1 if ds.source_fps else end


def first_error(ds: DatasetCfg, todo: list[Item]) -> tuple[str, str] | None:
    """(file, exception line) of the first media file of a dataset the trainer could not load, in its order."""
    by_media: dict[str, list[Item]] = {}
    for item in todo:
        by_media.setdefault(item.media, []).append(item)
    for media, _caption in sources(ds):
        if ds.is_image:
            line = image_error(media)
        else:
            line = video_error(media, frames_to_decode(ds, by_media.get(media, [])))
        if line:
            return media, line
    return None


def fail(line: str) -> int:
    """Die as the real script does: a traceback through the dataset's loader, then the exception line."""
    sys.stderr.write("\nTraceback (most recent call last):\n"
                     '  File "wan_cache_latents.py", line 1, in <module>\n    main()\n'
                     '  File "image_video_dataset.py", line 1, in retrieve_latent_cache_batches\n'
                     f"{line}\n")
    sys.stderr.flush()
    return 1
