"""musubi-tuner's dataset TOML as its scripts read it: items, cache file names, buckets (no model needed).

Shared by the simulated trainer, the runner's "are the caches complete?" check and the estimator's workload
(see docs/architecture.md).
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from kohyawan import wan
from kohyawan.files import toml

# musubi's media_utils lists each extension in lower and in upper case, and matches them exactly (".Png" is
# not an image to it); JPEG-XL only with a plugin installed, which kohyawan does not assume.
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".avif")
VIDEO_EXT = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".flv", ".wmv", ".m4v", ".mpg", ".mpeg")


@dataclass
class DatasetCfg:
    index: int
    is_image: bool
    resolution: tuple[int, int]
    batch_size: int
    num_repeats: int
    caption_extension: str
    cache_directory: str
    media_dir: str | None
    jsonl: str | None
    target_frames: tuple[int, ...]
    enable_bucket: bool = False
    bucket_no_upscale: bool = False
    frame_extraction: str = "head"
    frame_stride: int = 1
    frame_sample: int = 1
    max_frames: int = 129
    source_fps: float | None = None   # frames are dropped to reach the trainer's 16 fps


@dataclass
class Item:
    stem: str
    media: str
    caption: str | None
    latent_cache: str      # one per item (per target frame count for video)
    te_cache: str
    frames: int
    size: tuple[int, int]


def load(path: str) -> list[DatasetCfg]:
    with open(path, "rb") as f:
        return parse(toml.load(f))


def parse(cfg: Mapping[str, Any]) -> list[DatasetCfg]:
    """The datasets of a dataset config already read into a dict (``load`` reads the file)."""
    general = cfg.get("general", {})
    out = []
    for i, ds in enumerate(cfg.get("datasets", [])):
        merged = {**general, **ds}
        reso = merged.get("resolution", [960, 544])
        reso = (reso, reso) if isinstance(reso, int) else (int(reso[0]), int(reso[1]))
        is_image = "image_directory" in ds or "image_jsonl_file" in ds
        media = ds.get("image_directory") or ds.get("video_directory")
        jsonl = ds.get("image_jsonl_file") or ds.get("video_jsonl_file")
        frames = tuple(max(1, wan.kept_frames(int(n))) for n in merged.get("target_frames", [1]))
        fps = ds.get("source_fps")
        out.append(DatasetCfg(i, is_image, reso, int(merged.get("batch_size", 1)), int(merged.get("num_repeats", 1)),
                              merged.get("caption_extension", ".txt"), ds.get("cache_directory") or media or ".",
                              media, jsonl, frames if not is_image else (1,),
                              bool(merged.get("enable_bucket", False)), bool(merged.get("bucket_no_upscale", False)),
                              ds.get("frame_extraction", "head"), int(ds.get("frame_stride", 1)),
                              int(ds.get("frame_sample", 1)), int(ds.get("max_frames", 129)),
                              float(fps) if fps is not None else None))
    return out


def image_size(path: str, default: tuple[int, int]) -> tuple[int, int]:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except Exception:
        return default


BUCKET_STEP = 16      # WAN's bucket sides are multiples of 16 (8x VAE, 2x2 patches)
TRAINER_FPS = 16.0    # with source_fps the trainer drops frames to reach WAN's 16 fps


def bucket_sizes(resolution: tuple[int, int]) -> list[tuple[int, int]]:
    """The trainer's bucket list for a resolution: sides from half the square side up to the square side in
    steps of 16, each paired with the largest multiple of 16 that keeps the area within the resolution's,
    both orientations, sorted."""
    area = resolution[0] * resolution[1]
    side = int(area ** 0.5)
    low = max(BUCKET_STEP, side // 2 - (side // 2) % BUCKET_STEP)
    sizes = set()
    for w in range(low, side + BUCKET_STEP, BUCKET_STEP):
        h = area // w - (area // w) % BUCKET_STEP
        sizes.update({(w, h), (h, w)})
    return sorted(sizes)


def _nearest_bucket(size: tuple[int, int], resolution: tuple[int, int]) -> tuple[int, int]:
    aspect = size[0] / size[1]
    sizes = bucket_sizes(resolution)
    errors = [abs(w / h - aspect) if h else float("inf") for w, h in sizes]
    return sizes[errors.index(min(errors))]    # the first of equally near buckets, as the trainer picks


def bucket(size: tuple[int, int], ds: DatasetCfg) -> tuple[int, int]:
    """The training size of an image of ``size``: the dataset's resolution without bucketing; with it, the
    image's own size floored to multiples of 16 when bucket_no_upscale holds and it is no larger in area,
    else the bucket of the nearest aspect ratio."""
    if not ds.enable_bucket or not all(size):
        return ds.resolution
    w, h = size
    if ds.bucket_no_upscale and w * h <= ds.resolution[0] * ds.resolution[1]:
        return w - w % BUCKET_STEP, h - h % BUCKET_STEP
    return _nearest_bucket(size, ds.resolution)


def video_bucket(size: tuple[int, int], ds: DatasetCfg) -> tuple[int, int]:
    """The size a clip is cached (and trained) at. Latent caching of video always buckets and may upscale:
    the trainer builds its video bucket selector from the resolution alone, so enable_bucket and
    bucket_no_upscale do not change the latents' size (at training they only re-derive the same bucket)."""
    if not all(size):
        return ds.resolution
    return _nearest_bucket(size, ds.resolution)


def frames_at_trainer_rate(count: int, ds: DatasetCfg) -> int:
    """Frames the trainer decodes from a clip of ``count`` frames: with source_fps it keeps a frame only when
    the running 16/source_fps index moves on."""
    if not ds.source_fps or count <= 0:
        return count
    step, position, last, kept = TRAINER_FPS / ds.source_fps, 0.0, -1, 0
    for _ in range(count):
        index = int(position)
        position += step
        if index != last:
            kept, last = kept + 1, index
    return kept


def crops(frame_count: int, ds: DatasetCfg) -> list[tuple[int, int]]:
    """(start, frames) of every item a video yields, by the dataset's frame_extraction (musubi's rules)."""
    frame_count = frames_at_trainer_rate(frame_count, ds)
    targets, out = ds.target_frames, []
    mode = "head" if ds.frame_extraction == "uniform" and ds.frame_sample == 1 else ds.frame_extraction
    if mode == "full":
        n = min(frame_count, ds.max_frames)
        return [(0, wan.kept_frames(n))] if n >= 1 else []
    for t in targets:
        if frame_count < t:
            continue
        if mode == "head":
            out.append((0, t))
        elif mode == "chunk":
            out += [(i, t) for i in range(0, frame_count - t + 1, t)]
        elif mode == "slide":
            out += [(i, t) for i in range(0, frame_count - t + 1, ds.frame_stride)]
        elif mode == "uniform":
            step = (frame_count - t) / max(1, ds.frame_sample - 1) if ds.frame_sample > 1 else 0
            out += [(int(i * step), t) for i in range(ds.frame_sample)]
    return out


def video_facts(path: str, default: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """(frame count, (width, height)) of a video, decoded with ffmpeg; (0, default) when unreadable."""
    try:
        from kohyawan.dataset.probe import count_frames

        frames, w, h, error = count_frames(Path(path), "video")
        return (0, default) if error else (frames, (w, h))
    except Exception:
        return 0, default


# (path, is_image) -> (frame count at the file's own rate, (width, height)), or None when it does not know
Facts = Callable[[str, bool], "tuple[int, tuple[int, int]] | None"]


def sources(ds: DatasetCfg) -> list[tuple[str, str | None]]:
    """(media path, caption) of every item the scripts read, in musubi's order. An image folder lists only
    images with a caption file beside them (musubi's ``glob_images`` drops the others, so neither cache
    script nor training ever sees them); a video folder lists every video (one without a caption makes
    text-encoder caching fail)."""
    found: list[tuple[str, str | None]] = []
    if ds.jsonl:
        with open(ds.jsonl, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    found.append((rec.get("image_path") or rec.get("video_path"), rec.get("caption")))
    elif ds.media_dir:
        exts = IMAGE_EXT if ds.is_image else VIDEO_EXT
        exts = {*exts, *(e.upper() for e in exts)}
        for path in sorted(glob.glob(os.path.join(glob.escape(ds.media_dir), "*"))):
            if os.path.splitext(path)[1] in exts:
                found.append((path, read_caption(caption_path(path, ds))))
        if ds.is_image and ds.caption_extension:
            found = [(path, caption) for path, caption in found if caption is not None]
    return found


def caption_path(media: str, ds: DatasetCfg) -> str:
    return os.path.splitext(media)[0] + ds.caption_extension


def read_caption(path: str) -> str | None:
    """A caption file's text as musubi reads it (stripped), None when there is none."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def item_key(media: str) -> str:
    """The item key musubi names an item's cache files by: the media file's name without its extension."""
    return os.path.splitext(os.path.basename(media))[0]


LATENT_SUFFIX = "_wan.safetensors"
TEXT_SUFFIX = "_wan_te.safetensors"


def cache_file_key(name: str, is_image: bool) -> str | None:
    """The item key of a cache file name, parsed as musubi's training dataset parses it (None: not one).
    Latents: ``KEY_WxH_wan`` for images, ``KEY_START-FRAMES_WxH_wan`` for videos; text: ``KEY_wan_te``."""
    if name.endswith(TEXT_SUFFIX):
        return name[: -len(TEXT_SUFFIX)] or None
    if not name.endswith(LATENT_SUFFIX):
        return None
    tokens = name.split("_")
    size = tokens[-2] if len(tokens) >= 3 else ""
    if "x" not in size or not all(part.isdigit() for part in size.split("x", 1)):
        return None
    if is_image:
        return "_".join(tokens[:-2]) or None
    if len(tokens) < 4 or "-" not in tokens[-3]:
        return None
    return "_".join(tokens[:-3]) or None


def items(ds: DatasetCfg, facts: Facts | None = None) -> list[Item]:
    """Every training item of a dataset with its frames and training size. ``facts`` answers a media file's
    frame count and size without decoding it (a prepare report); files it does not know are probed."""
    out = []
    w, h = ds.resolution
    for media, caption in sources(ds):
        stem = item_key(media)
        te = os.path.join(ds.cache_directory, f"{stem}{TEXT_SUFFIX}")
        known = facts(media, ds.is_image) if facts else None
        if ds.is_image:  # the cache name carries the image's own size; training uses its bucket
            size = known[1] if known else image_size(media, ds.resolution)
            latent = os.path.join(ds.cache_directory, f"{stem}_{size[0]:04d}x{size[1]:04d}_wan.safetensors")
            out.append(Item(stem, media, caption, latent, te, 1, bucket(size, ds)))
        else:  # the cache name carries the bucket's size
            count, size = known if known else video_facts(media, (w, h))
            bw, bh = video_bucket(size, ds)
            for start, n in crops(count, ds):
                latent = os.path.join(ds.cache_directory, f"{stem}_{start:05d}-{n:03d}_{bw:04d}x{bh:04d}_wan.safetensors")
                out.append(Item(stem, media, caption, latent, te, n, (bw, bh)))
    return out


def cached_items(ds: DatasetCfg) -> list[tuple[tuple[int, int, int], str]]:
    """What training sees: (bucket, cache file) for every latent cache whose text cache exists."""
    found = []
    for path in sorted(glob.glob(os.path.join(glob.escape(ds.cache_directory), "*_wan.safetensors"))):
        tokens = os.path.basename(path).split("_")
        w, h = map(int, tokens[-2].split("x"))
        if ds.is_image:
            key, frames = "_".join(tokens[:-2]), 1
            w, h = bucket((w, h), ds)
        else:
            key, frames = "_".join(tokens[:-3]), int(tokens[-3].split("-")[1])
        te = os.path.join(ds.cache_directory, f"{key}_wan_te.safetensors")
        if not os.path.exists(te):
            print(f"WARNING:musubi_tuner.dataset.image_video_dataset:Text encoder output cache file not found: {te}",
                  flush=True)
            continue
        found.append(((w, h, frames), path))
    return found
