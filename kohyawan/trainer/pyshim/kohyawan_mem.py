"""The trainer's own GPU memory peaks, as torch's caching allocator counts them, written for kohyawan.

NVML sees what a process holds on the GPU (torch's reserve plus the CUDA context) but not what tensors
use. ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` say that, and only the trainer's
process can ask. musubi-tuner calls the LR scheduler's ``step()`` once after every optimizer step, and
kohyawan already trains with its own scheduler class (``kohyawan_lr.ContinuedLR``, put on the trainer's
PYTHONPATH), so that class calls ``record()`` after each step: no change to musubi-tuner, no
sitecustomize. ``record()`` does nothing unless ``KOHYAWAN_ALLOCATOR_DIR`` names a folder; there each
process writes ``rank<RANK>.json`` (rewritten atomically, the peaks since the process started). A
failure here never stops training.

kohyawan's simulated trainer writes the same files from its memory model (``write``), and kohyawan reads
them back with ``read`` (the largest figures over all ranks). See docs/architecture.md ("A run").
"""

from __future__ import annotations

import glob
import json
import os

ENV = "KOHYAWAN_ALLOCATOR_DIR"
GIB = float(2**30)


def write(folder: str, *, step: int, allocated: int, reserved: int, device: int = 0, rank: int | None = None) -> None:
    """Record the peaks (bytes) since the process started, after optimizer step ``step``."""
    rank = int(os.environ.get("RANK", "0") or 0) if rank is None else rank
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"rank{rank}.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"step": step, "max_allocated": int(allocated), "max_reserved": int(reserved), "device": device,
                   "rank": rank, "pid": os.getpid()}, f)
    os.replace(tmp, path)


def record(step: int) -> None:
    """Called by the trainer after each optimizer step; a no-op unless kohyawan asked for the peaks."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    try:
        import torch

        if not torch.cuda.is_available():
            return
        dev = torch.cuda.current_device()
        write(folder, step=step, allocated=torch.cuda.max_memory_allocated(dev),
              reserved=torch.cuda.max_memory_reserved(dev), device=dev)
    except Exception:  # a full disk or an odd torch must not end a training run
        return


def read(folder: str) -> dict | None:
    """{"allocated", "reserved"} GiB (the largest over the ranks), "steps" (the most any rank reported) and
    "ranks", or None when no process wrote anything."""
    found = []
    for path in sorted(glob.glob(os.path.join(glob.escape(str(folder)), "rank*.json"))):
        try:
            with open(path, encoding="utf-8") as f:
                found.append(json.load(f))
        except (OSError, ValueError):
            continue
    if not found:
        return None
    return {"allocated": round(max(r["max_allocated"] for r in found) / GIB, 3),
            "reserved": round(max(r["max_reserved"] for r in found) / GIB, 3),
            "steps": max(int(r.get("step", 0)) for r in found), "ranks": len(found)}
