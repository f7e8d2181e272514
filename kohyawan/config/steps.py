"""How many optimisation steps the trainer will run, counted the way musubi-tuner counts them (pure).

Items: an image is one item; a video yields items by its ``frame_extraction`` (``head``: one per target
length it is long enough for; ``chunk``: consecutive pieces; ``slide``: windows every ``frame_stride``;
``uniform``: ``frame_sample`` windows; ``full``: the whole clip once). Batches are formed per bucket; at batch
size 1 the count is exact. Steps per epoch are ceil(batches / gradient_accumulation_steps / processes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from kohyawan.dataset.inventory import Inventory


@dataclass(frozen=True)
class Steps:
    items: int
    batches_per_epoch: int
    epochs: int
    total_steps: int
    warmup_steps: int
    exact: bool          # False when clip lengths were unknown (no prepare report)
    steps_per_epoch: int = 0  # optimisation steps: batches / gradient accumulation / processes, rounded up


def longest_clip(dataset: Mapping) -> int:
    """The most frames one training item can have under these dataset settings."""
    if dataset.get("frame_extraction", "head") == "full":
        return dataset.get("max_frames", 129)
    return max(dataset.get("target_frames") or [1])


def video_items(frames: int | None, dataset: Mapping) -> int:
    targets: Sequence[int] = dataset.get("target_frames", [1])
    mode = dataset.get("frame_extraction", "head")
    if mode == "full":
        return 1
    if frames is None:
        return len(targets)
    if mode == "head":
        return sum(1 for t in targets if frames >= t)
    if mode == "chunk":
        return sum(frames // t for t in targets)
    if mode == "slide":
        stride = dataset.get("frame_stride", 1)
        return sum((frames - t) // stride + 1 for t in targets if frames >= t)
    if mode == "uniform":
        return sum(dataset.get("frame_sample", 1) for t in targets if frames >= t)
    raise ValueError(mode)


def count(inv: Inventory, dataset: Mapping, train: Mapping, processes: int = 1) -> Steps:
    items = batches = 0
    exact = True
    batch_size = dataset.get("batch_size", 1)
    repeats = dataset.get("num_repeats", 1)
    for folder in inv.folders:
        if folder.kind == "image":
            n = folder.count
        elif folder.frames is None:
            n = folder.count * video_items(None, dataset)
            exact = exact and dataset.get("frame_extraction", "head") == "full"
        else:
            n = sum(video_items(f, dataset) for f in folder.frames)
        items += n * repeats
        batches += math.ceil(n * repeats / batch_size)
    exact = exact and batch_size == 1
    accumulation = train.get("gradient_accumulation_steps", 1)
    per_epoch = math.ceil(batches / accumulation / processes)
    epochs = train.get("max_train_epochs")
    if epochs is not None:
        total = epochs * per_epoch
    else:
        total = train.get("max_train_steps", 1600)
        epochs = math.ceil(total / per_epoch) if per_epoch else 0
    return Steps(items, batches, epochs, total, warmup_steps(train.get("lr_warmup_steps", 0), total, processes), exact,
                 per_epoch)


def warmup_steps(warmup: int | float | None, total_steps: int, processes: int = 1) -> int:
    """Scheduler warm-up steps as musubi-tuner counts them: a float is a ratio of its scheduler's steps
    (``max_train_steps`` x processes), truncated; an int is taken as it is. The rendered config and the
    run's LR continuation both count with this, so they agree with each other and with the trainer."""
    warmup = warmup or 0
    return int(warmup * total_steps * processes) if isinstance(warmup, float) else int(warmup)
