"""A learning-rate schedule that continues exactly across kohyawan's resumes.

musubi-tuner rebuilds its scheduler from the *new* ``--max_train_steps`` on ``--resume`` and then
restores the old scheduler's step counter into it, so a decaying schedule bends. kohyawan
passes this class instead: ``--lr_scheduler_type kohyawan_lr.ContinuedLR`` with ``--lr_scheduler_args``
``kind='cosine' total_steps=N warmup_steps=W start_step=S`` (and optionally ``lr_scale``,
``min_lr_ratio``, ``num_cycles``, ``power``, ``lr_end_ratio``, ``steps_per_update``). The factor depends only on the
absolute step ``start_step + steps taken in this process``, never on ``max_train_steps`` and never on
a restored counter, because kohyawan knows the absolute step of the state it resumes from.

This file is put on the trainer's PYTHONPATH by kohyawan; it needs only the standard library until the
trainer asks for the class, which then imports torch (the trainer's own). After every step the class also
hands the allocator's peaks to ``kohyawan_mem`` (beside this file), which writes them only when kohyawan
asked for them. Design: docs/architecture.md.
"""

from __future__ import annotations

import math

KINDS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "cosine_with_min_lr",
         "polynomial")


def lr_factor(step: int, *, kind: str = "constant", total_steps: int = 1, warmup_steps: int = 0,
              min_lr_ratio: float = 0.0, num_cycles: float = 0.5, power: float = 1.0,
              lr_end_ratio: float = 0.0) -> float:
    """Multiplier of the base LR used for the optimizer update after ``step`` updates (0-based),
    with the same formulas as the diffusers/transformers schedules musubi-tuner uses."""
    if kind not in KINDS:
        raise ValueError(f"unknown schedule kind {kind!r}; one of {', '.join(KINDS)}")
    if kind == "constant":
        return 1.0
    if warmup_steps and step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    if kind == "constant_with_warmup":
        return 1.0
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    if kind == "linear":
        return max(0.0, (total_steps - step) / float(max(1, total_steps - warmup_steps)))
    if kind == "cosine_with_restarts":  # diffusers' hard restarts; musubi passes num_cycles as given
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))
    if kind == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))
    if kind == "cosine_with_min_lr":
        factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
        return factor * (1 - min_lr_ratio) + min_lr_ratio
    # polynomial: diffusers decays towards lr_end (1e-7 absolute; lr_end_ratio = 1e-7 / base LR)
    if step > total_steps:
        return lr_end_ratio
    return (1 - lr_end_ratio) * (1 - progress) ** power + lr_end_ratio


def _make_class():
    from torch.optim.lr_scheduler import LRScheduler

    class ContinuedLR(LRScheduler):
        def __init__(self, optimizer, kind="constant", total_steps=1, warmup_steps=0, start_step=0, lr_scale=1.0,
                     min_lr_ratio=0.0, num_cycles=0.5, power=1.0, lr_end_ratio=0.0, steps_per_update=1,
                     last_epoch=-1):
            # total_steps/warmup_steps count scheduler steps: accelerate steps the scheduler once per
            # process for every update, and musubi sizes its schedules the same way
            self.kw = dict(kind=kind, total_steps=int(total_steps), warmup_steps=int(warmup_steps),
                           min_lr_ratio=float(min_lr_ratio), num_cycles=float(num_cycles), power=float(power),
                           lr_end_ratio=float(lr_end_ratio))
            lr_factor(0, **self.kw)  # fail now on a bad kind, not at the first step
            self.start_step = int(start_step) * int(steps_per_update)
            self.lr_scale = float(lr_scale)
            self.steps_per_update = int(steps_per_update)
            super().__init__(optimizer, last_epoch)

        def _factor(self) -> float:
            absolute = self.start_step + self.last_epoch
            return lr_factor(absolute, **self.kw) * self.lr_scale

        def get_lr(self):
            return [base * self._factor() for base in self.base_lrs]

        def step(self, epoch=None):
            # musubi-tuner steps the scheduler once after every optimizer step: the moment to read the peaks
            super().step() if epoch is None else super().step(epoch)
            _memory().record(self.last_epoch)

        def load_state_dict(self, state_dict):
            # The saved counter and settings belong to the attempt that saved them; this process was
            # told its absolute position. Only re-apply our LR to the optimizer, whose restored param
            # groups carry the old attempt's LR (accelerate loads the optimizer before the scheduler).
            values = self.get_lr()
            for group, lr in zip(self.optimizer.param_groups, values):
                group["lr"] = lr
            self._last_lr = values

    return ContinuedLR


def _memory():
    """``kohyawan_mem``, a sibling module whether this one was imported as ``kohyawan_lr`` (the trainer) or as
    ``kohyawan.trainer.pyshim.kohyawan_lr`` (kohyawan itself)."""
    import importlib

    package = __name__.rpartition(".")[0]
    return importlib.import_module(f"{package}.kohyawan_mem" if package else "kohyawan_mem")


_cache: dict = {}


def __getattr__(name):
    if name == "ContinuedLR":
        if name not in _cache:
            _cache[name] = _make_class()
        return _cache[name]
    raise AttributeError(name)
