"""musubi-tuner's dataset TOML as its scripts read it: items, cache file names, buckets (no model needed).

Shared by the simulated trainer and by the runner's "are the caches complete?" check. Design:
docs/architecture.md.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from dataclasses import dataclass

from kohyawan.files import toml

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_EXT = (".mp4", ".avi", ".mov", ".webm", ".mkv", ".gif")


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
        cfg = toml.load(f)
    general = cfg.get("general", {})
    out = []
    for i, ds in enumerate(cfg.get("datasets", [])):
        merged = {**general, **ds}
        reso = merged.get("resolution", [960, 544])
        reso = (reso, reso) if isinstance(reso, int) else (int(reso[0]), int(reso[1]))
        is_image = "image_directory" in ds or "image_jsonl_file" in ds
        media = ds.get("image_directory") or ds.get("video_directory")
        jsonl = ds.get("image_jsonl_file") or ds.get("video_jsonl_file")
        frames = tuple(max(1, (int(n) - 1) // 4 * 4 + 1) for n in merged.get("target_frames", [1]))
        out.append(DatasetCfg(i, is_image, reso, int(merged.get("batch_size", 1)), int(merged.get("num_repeats", 1)),
                              merged.get("caption_extension", ".txt"), ds.get("cache_directory") or media or ".",
                              media, jsonl, frames if not is_image else (1,),
                              bool(merged.get("enable_bucket", False)), bool(merged.get("bucket_no_upscale", False)),
                              ds.get("frame_extraction", "head"), int(ds.get("frame_stride", 1)),
                              int(ds.get("frame_sample", 1)), int(ds.get("max_frames", 129))))
    return out


def _size(path: str, default: tuple[int, int]) -> tuple[int, int]:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except Exception:
        return default


def bucket(size: tuple[int, int], ds: DatasetCfg) -> tuple[int, int]:
    """The training resolution for media of ``size``: the dataset's, or with bucketing the same area at the
    media's aspect (never above the media's own size with bucket_no_upscale), in multiples of 16."""
    if not ds.enable_bucket or not all(size):
        return ds.resolution
    w, h = size
    area = ds.resolution[0] * ds.resolution[1]
    scale = 1.0 if ds.bucket_no_upscale and w * h <= area else (area / (w * h)) ** 0.5
    return max(16, int(w * scale) // 16 * 16), max(16, int(h * scale) // 16 * 16)


def crops(frame_count: int, ds: DatasetCfg) -> list[tuple[int, int]]:
    """(start, frames) of every item a video yields, by the dataset's frame_extraction (musubi's rules)."""
    targets, out = ds.target_frames, []
    mode = ds.frame_extraction
    if mode == "full":
        n = min(frame_count, ds.max_frames)
        return [(0, (n - 1) // 4 * 4 + 1)] if n >= 1 else []
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


def _video_facts(path: str, default: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """(frame count, (width, height)) of a video, decoded with ffmpeg; (0, default) when unreadable."""
    try:
        from kohyawan.dataset.probe import count_frames

        frames, w, h, error = count_frames(Path(path), "video")
        return (0, default) if error else (frames, (w, h))
    except Exception:
        return 0, default


def items(ds: DatasetCfg) -> list[Item]:
    sources: list[tuple[str, str | None]] = []
    if ds.jsonl:
        with open(ds.jsonl, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    sources.append((rec.get("image_path") or rec.get("video_path"), rec.get("caption")))
    elif ds.media_dir:
        exts = IMAGE_EXT if ds.is_image else VIDEO_EXT
        for path in sorted(glob.glob(os.path.join(glob.escape(ds.media_dir), "*"))):
            if path.lower().endswith(exts):
                cap_path = os.path.splitext(path)[0] + ds.caption_extension
                caption = None
                if os.path.exists(cap_path):
                    with open(cap_path, encoding="utf-8") as f:
                        caption = f.read().strip()
                sources.append((path, caption))
    out = []
    w, h = ds.resolution
    for media, caption in sources:
        stem = os.path.splitext(os.path.basename(media))[0]
        te = os.path.join(ds.cache_directory, f"{stem}_wan_te.safetensors")
        if ds.is_image:  # the cache name carries the image's own size; training uses its bucket
            size = _size(media, ds.resolution)
            latent = os.path.join(ds.cache_directory, f"{stem}_{size[0]:04d}x{size[1]:04d}_wan.safetensors")
            out.append(Item(stem, media, caption, latent, te, 1, bucket(size, ds)))
        else:  # the cache name carries the bucket's size
            count, size = _video_facts(media, (w, h))
            bw, bh = bucket(size, ds)
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
