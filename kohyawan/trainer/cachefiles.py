"""musubi-tuner's dataset TOML as its scripts read it: items, cache file names, buckets (no model needed).

Shared by the simulated trainer and by the runner's "are the caches complete?" check.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

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
        cfg = tomllib.load(f)
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
                              media, jsonl, frames if not is_image else (1,)))
    return out


def _size(path: str, default: tuple[int, int]) -> tuple[int, int]:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except Exception:
        return default


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
        if ds.is_image:
            size = _size(media, ds.resolution)
            latent = os.path.join(ds.cache_directory, f"{stem}_{size[0]:04d}x{size[1]:04d}_wan.safetensors")
            out.append(Item(stem, media, caption, latent, te, 1, size))
        else:
            for n in ds.target_frames:
                latent = os.path.join(ds.cache_directory, f"{stem}_{0:05d}-{n:03d}_{w:04d}x{h:04d}_wan.safetensors")
                out.append(Item(stem, media, caption, latent, te, n, (w, h)))
    return out


def cached_items(ds: DatasetCfg) -> list[tuple[tuple[int, int, int], str]]:
    """What training sees: (bucket, cache file) for every latent cache whose text cache exists."""
    found = []
    for path in sorted(glob.glob(os.path.join(glob.escape(ds.cache_directory), "*_wan.safetensors"))):
        tokens = os.path.basename(path).split("_")
        w, h = map(int, tokens[-2].split("x"))
        if ds.is_image:
            key, frames = "_".join(tokens[:-2]), 1
        else:
            key, frames = "_".join(tokens[:-3]), int(tokens[-3].split("-")[1])
        te = os.path.join(ds.cache_directory, f"{key}_wan_te.safetensors")
        if not os.path.exists(te):
            print(f"WARNING:musubi_tuner.dataset.image_video_dataset:Text encoder output cache file not found: {te}",
                  flush=True)
            continue
        found.append(((ds.resolution[0], ds.resolution[1], frames), path))
    return found
