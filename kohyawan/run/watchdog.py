"""Watchdogs: pure decisions over what the samplers (``kohyawan.run.samplers``) and the log reported.

Decisions take the time as an argument (an injectable clock), so tests replay histories exactly.

Loss spike, precisely: musubi's ``avr_loss`` is already a moving average (over the last epoch's
steps); one value per step is observed. With W = ``loss_spike_window``, P = ``loss_spike_patience``
and F = ``loss_spike_factor``: the baseline is the median of the W values observed before the last P,
and a spike is reported when each of the last P values exceeds F x baseline, i.e. the average jumped
well above its recent level and did not come back for P steps. Nothing is judged before W + P
observations of the current attempt (the average restarts with every attempt).
See docs/architecture.md ("A run").
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping

DEFAULTS = {
    "stall_minutes": 10.0,        # no progress for max(this, stall_factor x median step time)
    "stall_factor": 5.0,
    "startup_minutes": 60.0,      # from launch to the first step (model loading, block swap set-up)
    "cache_stall_minutes": 60.0,  # caching stages: no output at all for this long
    "loss_spike_factor": 2.0,
    "loss_spike_window": 50,
    "loss_spike_patience": 20,
    "low_util_percent": 30.0,
    "low_util_minutes": 10.0,
    "vram_margin_gb": 1.5,
    "ram_margin_gb": 4.0,
    "sample_seconds": 2.0,
}


def settings(overrides: Mapping | None = None) -> dict:
    out = dict(DEFAULTS)
    for key, value in (overrides or {}).items():
        if key in out and value is not None:
            out[key] = type(out[key])(value)
    return out


@dataclass(frozen=True)
class Alert:
    kind: str      # "stall" | "nan" | "loss_spike" (fatal) | "low_util" | "vram_margin" (warnings)
    fatal: bool
    message: str


class Watchdog:
    """Feed it steps and samples; ``check(now)`` says whether something is wrong."""

    def __init__(self, cfg: Mapping | None = None, *, stage: str = "train", started: float = 0.0):
        self.cfg = settings(cfg)
        self.stage = stage
        self.started = started
        self.last_activity = started  # any output (caching) or a new step (training)
        self.first_step_at: float | None = None
        self.last_step: int | None = None
        self.last_step_at: float | None = None
        self.step_times: list[float] = []
        self.losses: list[float] = []
        self.bad_loss: tuple[int, float] | None = None
        self.low_util_since: float | None = None
        self.low_util_warned = False
        self.margin_warned = False
        self._margin: tuple[float | None, float | None] = (None, None)  # the last (used, total) VRAM, GB

    # --- observations -------------------------------------------------------------------------------
    def output(self, now: float) -> None:
        if self.stage != "train":
            self.last_activity = now

    def step(self, step: int, loss: float | None, now: float) -> None:
        if self.last_step is None or step > self.last_step:
            if self.last_step_at is not None and self.last_step is not None:
                self.step_times.append((now - self.last_step_at) / (step - self.last_step))
            if self.first_step_at is None:
                self.first_step_at = now
            self.last_step, self.last_step_at, self.last_activity = step, now, now
            if loss is not None:
                self.losses.append(loss)
        elif loss is not None and self.losses:
            self.losses[-1] = loss  # the redraw after set_postfix: the average after this step
        if loss is not None and (math.isnan(loss) or math.isinf(loss)) and self.bad_loss is None:
            self.bad_loss = (step, loss)

    def gpu(self, util_percent: float | None, used_gb: float | None, total_gb: float | None, now: float) -> None:
        if self.first_step_at is None:
            return
        self._margin = (used_gb, total_gb)
        if util_percent is None:     # a MIG instance has no utilisation of its own; its memory still counts
            return
        if util_percent < self.cfg["low_util_percent"]:
            self.low_util_since = self.low_util_since if self.low_util_since is not None else now
        else:
            self.low_util_since, self.low_util_warned = None, False

    # --- decisions ----------------------------------------------------------------------------------
    def stall_limit_s(self) -> float:
        if self.stage != "train":
            return self.cfg["cache_stall_minutes"] * 60
        if self.first_step_at is None:
            return self.cfg["startup_minutes"] * 60
        median = statistics.median(self.step_times) if self.step_times else 0.0
        return max(self.cfg["stall_minutes"] * 60, self.cfg["stall_factor"] * median)

    def spike(self) -> tuple[float, float] | None:
        w = max(1, int(self.cfg["loss_spike_window"]))
        p = max(1, int(self.cfg["loss_spike_patience"]))
        if len(self.losses) < w + p:
            return None
        base = statistics.median(self.losses[-(w + p):-p])
        recent = self.losses[-p:]
        if base > 0 and all(v > self.cfg["loss_spike_factor"] * base for v in recent):
            return base, recent[-1]
        return None

    def loss_alert(self) -> Alert | None:
        """NaN/inf or a spike, judged right after each step (no need to wait for a tick)."""
        if self.bad_loss is not None:
            step, loss = self.bad_loss
            return Alert("nan", True, f"the average loss became {loss} at step {step}")
        sp = self.spike()
        if sp is not None:
            return Alert("loss_spike", True, f"the average loss rose from {sp[0]:.4g} to {sp[1]:.4g} and stayed "
                         f"above {self.cfg['loss_spike_factor']:g}x for {int(self.cfg['loss_spike_patience'])} steps")
        return None

    def check(self, now: float) -> list[Alert]:
        alerts = []
        loss = self.loss_alert()
        if loss is not None and loss.kind == "nan":
            alerts.append(loss)
        limit = self.stall_limit_s()
        idle = now - self.last_activity
        if idle > limit:
            what = ("no output from the caching stage" if self.stage != "train" else
                    "no training step yet" if self.first_step_at is None else "no progress")
            alerts.append(Alert("stall", True, f"{what} for {idle / 60:.1f} min (limit {limit / 60:.1f} min)"))
        if loss is not None and loss.kind == "loss_spike":
            alerts.append(loss)
        if (self.low_util_since is not None and not self.low_util_warned
                and now - self.low_util_since >= self.cfg["low_util_minutes"] * 60):
            self.low_util_warned = True
            alerts.append(Alert("low_util", False, f"GPU utilisation below {self.cfg['low_util_percent']:g}% for "
                                f"{self.cfg['low_util_minutes']:g} min: data loading, CPU or disk is the bottleneck"))
        used, total = self._margin
        if used is not None and total and not self.margin_warned and total - used < self.cfg["vram_margin_gb"]:
            self.margin_warned = True
            alerts.append(Alert("vram_margin", False, f"VRAM nearly full: {used:.1f} of {total:.1f} GB in use"))
        return alerts
