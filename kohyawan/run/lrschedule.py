"""Exact learning-rate continuation across resumes (pure).

On ``--resume`` musubi-tuner rebuilds the scheduler from the new ``--max_train_steps`` (the steps that
remain) and loads the old scheduler's counter into it: a cosine or linear schedule then decays over
the wrong length. kohyawan instead always trains with ``kohyawan_lr.ContinuedLR`` (shipped in
``kohyawan/trainer/pyshim`` and put on the trainer's PYTHONPATH), told the original total, the warm-up
and the absolute step each attempt starts at; the trainer's ``--lr_scheduler_type`` accepts a
``module.Class`` and ``--lr_scheduler_args`` takes ``key=value`` literals.
See docs/architecture.md ("A run").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from kohyawan.config.steps import warmup_steps
from kohyawan.trainer.pyshim.kohyawan_lr import KINDS, lr_factor

SCHEDULER_CLASS = "kohyawan_lr.ContinuedLR"


def pyshim_dir() -> Path:
    """Add this to the trainer's PYTHONPATH so it can import ``kohyawan_lr``."""
    return Path(__file__).resolve().parents[1] / "trainer" / "pyshim"


def supported(train: Mapping[str, Any]) -> tuple[bool, str]:
    if train.get("lr_scheduler_type"):
        return False, f"a custom lr_scheduler_type ({train['lr_scheduler_type']}) cannot be continued exactly"
    kind = train.get("lr_scheduler") or "constant"
    if kind not in KINDS:
        return False, f"lr_scheduler {kind!r} is not continued exactly across resumes (supported: {', '.join(KINDS)})"
    return True, ""


def _kwargs(train: Mapping[str, Any], total_steps: int, num_processes: int) -> dict[str, Any]:
    kind = train.get("lr_scheduler") or "constant"
    n = total_steps * num_processes  # musubi: num_training_steps = max_train_steps * num_processes
    warm = warmup_steps(train.get("lr_warmup_steps"), total_steps, num_processes)
    kw: dict[str, Any] = {"kind": kind, "total_steps": n, "warmup_steps": warm}
    if kind == "cosine_with_restarts":
        kw["num_cycles"] = float(train.get("lr_scheduler_num_cycles") or 1)
    if kind == "cosine_with_min_lr":
        kw["num_cycles"] = float(train.get("lr_scheduler_num_cycles") or 1) / 2
        kw["min_lr_ratio"] = float(train.get("lr_scheduler_min_lr_ratio") or 0.0)
    if kind == "polynomial":
        kw["power"] = float(train.get("lr_scheduler_power") or 1.0)
        lr = float(train.get("learning_rate") or 2e-6)
        kw["lr_end_ratio"] = 1e-7 / lr
    return kw


def continuation(train: Mapping[str, Any], *, total_steps: int, start_step: int, lr_scale: float = 1.0,
                 num_processes: int = 1) -> dict[str, Any] | None:
    """Trainer options for one attempt: ``lr_scheduler_type`` and ``lr_scheduler_args`` (or None)."""
    ok, _ = supported(train)
    if not ok:
        return None
    kw = _kwargs(train, total_steps, num_processes)
    kw.update(start_step=int(start_step), lr_scale=float(lr_scale), steps_per_update=int(num_processes))
    return {"lr_scheduler_type": SCHEDULER_CLASS, "lr_scheduler_args": [f"{k}={v!r}" for k, v in kw.items()]}


def lr_at(train: Mapping[str, Any], step: int, *, total_steps: int, num_processes: int = 1,
          lr_scale: float = 1.0) -> float:
    """The LR of the update after ``step`` absolute updates, as an uninterrupted musubi run uses it."""
    base = float(train.get("learning_rate") or 2e-6)
    return base * lr_scale * lr_factor(step * num_processes, **_kwargs(train, total_steps, num_processes))
