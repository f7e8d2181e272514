"""Are a caching stage's outputs complete and newer than their inputs? (then the stage is skipped)

Text-encoder caching loads an 11 GB encoder for minutes, so it runs only when needed. A stage is
complete when every item of the dataset config has its cache file, each newer than its media and
caption, and the fingerprint recorded after the last successful run (dataset config and model file)
still matches: a new resolution or frame count changes the fingerprint of the latent caches only.
See docs/architecture.md ("A run").
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

from kohyawan.trainer.cachefiles import items, load

MARK = {"cache_latents": ".kohyawan-latents.json", "cache_text_encoder": ".kohyawan-text.json"}


def fingerprint(stage: str, dataset_toml: Path, model: str | None) -> str:
    datasets = load(str(dataset_toml))
    if stage == "cache_latents":
        basis = Path(dataset_toml).read_text(encoding="utf-8")
    else:  # captions only: resolution and frames do not change the text caches
        basis = json.dumps([(d.media_dir, d.jsonl, d.caption_extension, d.cache_directory) for d in datasets])
    return hashlib.sha256(f"{basis}\n{model}".encode()).hexdigest()[:16]


def _newer(cache: str, *inputs: str) -> bool:
    try:
        t = os.path.getmtime(cache)
    except OSError:
        return False
    return all(t >= os.path.getmtime(p) for p in inputs if p and os.path.exists(p))


def missing(stage: str, dataset_toml: Path, model: str | None) -> str | None:
    """None when the stage can be skipped, else why it must run."""
    datasets = load(str(dataset_toml))
    fp = fingerprint(stage, dataset_toml, model)
    for ds in datasets:
        mark = Path(ds.cache_directory) / MARK[stage]
        try:
            if json.loads(mark.read_text()).get("fingerprint") != fp:
                return f"the settings changed since {ds.cache_directory} was cached"
        except (OSError, ValueError):
            return f"no complete cache in {ds.cache_directory}"
        for item in items(ds):
            caption = os.path.splitext(item.media)[0] + ds.caption_extension
            if stage == "cache_latents":
                # the name carries a size (the image's own, or the video's bucket) and for video the crop:
                # any cache of this item will do, so the check holds for the real trainer's names too
                tail = "_*x*_wan.safetensors" if ds.is_image else "_*-*_*x*_wan.safetensors"
                found = glob.glob(os.path.join(glob.escape(ds.cache_directory), f"{glob.escape(item.stem)}{tail}"))
                ok = bool(found) and all(_newer(f, item.media) for f in found)
            else:
                ok = _newer(item.te_cache, item.media, caption)
            if not ok:
                changed = caption if stage != "cache_latents" and os.path.exists(caption) and \
                    _newer(item.media, caption) is False else item.media
                return f"{os.path.basename(changed)} is newer than its cache (or has none)"
    return None


def mark_done(stage: str, dataset_toml: Path, model: str | None) -> None:
    fp = fingerprint(stage, dataset_toml, model)
    for ds in load(str(dataset_toml)):
        mark = Path(ds.cache_directory) / MARK[stage]
        mark.parent.mkdir(parents=True, exist_ok=True)
        tmp = mark.with_name(mark.name + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": fp}))
        os.replace(tmp, mark)


def invalidate(dataset_toml: Path) -> None:
    for ds in load(str(dataset_toml)):
        for name in MARK.values():
            try:
                os.unlink(Path(ds.cache_directory) / name)
            except OSError:
                pass
