"""The small sample ``kohyawan calibrate`` trains on, and the settings it trains it with.

The peak of a training step comes from its largest batch, so the sample is the largest items of the
dataset, as the trainer buckets them (``kohyawan.trainer.cachefiles``: the bucket resolution and frame
count each item trains at): the media folder holding the largest item gives its ``batch_size`` largest
items, so every step of the calibration is a full batch of the largest bucket. Files are hard-linked (copied
across file systems) with their captions into a folder of the same layout.

The settings are the run's own, except that the trainer stops after ``PROBE_STEPS`` optimizer steps and
saves, samples and keeps nothing on the way (it still writes its final LoRA, which the calibration deletes).
See docs/architecture.md ("A run").
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kohyawan.errors import DatasetError

PROBE_STEPS = 3   # step 1 builds the optimizer state; steps 2 and 3 are the steady peak, and a rate to time
DROPPED = ("max_train_epochs", "save_every_n_steps", "save_every_n_epochs", "save_last_n_steps",
           "save_last_n_epochs", "save_last_n_steps_state", "save_last_n_epochs_state", "save_state",
           "save_state_on_train_end", "sample_every_n_steps", "sample_every_n_epochs", "sample_at_first",
           "sample_prompts")


def probe_spec(spec, sample_dir: Path):
    """``spec`` on the sample, for ``PROBE_STEPS`` steps, without intermediate saves or samples."""
    train = {k: v for k, v in spec.train.items() if k not in DROPPED}
    train["max_train_steps"] = PROBE_STEPS
    return replace(spec, dataset_dir=Path(sample_dir), train=MappingProxyType(train))


def largest_items(spec, work_dir: Path) -> tuple[Any, list]:
    """(the folder's dataset entry, its items largest first) for the media folder with the largest item."""
    from kohyawan.config.render import dataset_config
    from kohyawan.dataset import inventory
    from kohyawan.trainer import cachefiles

    inv = inventory.scan(Path(spec.dataset_dir), spec.dataset.get("caption_extension", ".txt"))
    if not inv.folders:
        raise DatasetError(f"no images or videos found in {spec.dataset_dir}")
    text, _, _ = dataset_config(spec, work_dir, inv)
    source = work_dir / "source-dataset.toml"   # the full dataset as the trainer would read it, for the record
    source.write_text(text, encoding="utf-8")
    best = None
    for ds in cachefiles.load(str(source)):
        found = [i for i in cachefiles.items(ds) if i.caption is not None]
        found.sort(key=_size, reverse=True)
        if found and (best is None or _size(found[0]) > _size(best[1][0])):
            best = (ds, found)
    if best is None:
        raise DatasetError(f"no captioned media in {spec.dataset_dir}: nothing to calibrate with")
    return best


def _size(item) -> int:
    """The transformer tokens an item trains at (the memory model's count)."""
    from kohyawan.estimate.memory import MemoryInputs

    return MemoryInputs(width=item.size[0], height=item.size[1], frames=item.frames).tokens


def write_sample(spec, work_dir: Path) -> dict[str, Any]:
    """Link the sample into ``work_dir/sample`` (the layout of the dataset folder); what it holds, for run.json."""
    ds, found = largest_items(spec, work_dir)
    media, seen = [], set()
    for item in found:
        if item.media not in seen:
            seen.add(item.media)
            media.append(item)
        if len(media) >= max(1, ds.batch_size):
            break
    root = Path(spec.dataset_dir).resolve()
    folder = Path(ds.media_dir).resolve()
    target = work_dir / "sample" / folder.relative_to(root)
    target.mkdir(parents=True, exist_ok=True)
    for item in media:
        src = Path(item.media)
        _link(src, target / src.name)
        caption = src.with_suffix(ds.caption_extension)
        _link(caption, target / caption.name)
    top = media[0]
    return {"folder": str(work_dir / "sample"), "source": str(root), "items": [Path(i.media).name for i in media],
            "kind": "image" if ds.is_image else "video", "bucket": [top.size[0], top.size[1], top.frames],
            "batch_size": ds.batch_size, "tokens": _size(top)}


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
