"""Watching one supervised process: what the trainer prints goes to the tracker and the watchdog, and on
every tick the process tree and the GPU are sampled, the watchdog judged and the view refreshed.

An ``AttemptMonitor`` owns the per-attempt state of that watch (the watchdog, when it last sampled, the
peaks) and hands the supervisor its three callbacks. See docs/architecture.md ("A run").
"""

from __future__ import annotations

import time
from typing import Callable

from kohyawan.run.notify import Notifier
from kohyawan.run.runview import Status, View
from kohyawan.run.samplers import GpuSampler, combine, host_sample, trainer_vram
from kohyawan.run.supervise import Supervisor
from kohyawan.run.tracker import Tracker
from kohyawan.run.watchdog import Watchdog
from kohyawan.trainer.musubi_log import Event


class AttemptMonitor:
    def __init__(self, watchdog_cfg: dict, *, tracker: Tracker | None, status: Status, view: View,
                 notifier: Notifier, gpu: GpuSampler | None, clock: Callable[[], float] = time.monotonic):
        self.tracker = tracker  # None for a caching stage: no steps, only output
        self.status, self.view, self.notifier, self.gpu, self.clock = status, view, notifier, gpu, clock
        self.watchdog = Watchdog(watchdog_cfg, stage="train" if tracker else "cache", started=clock())
        self.sample_every = float(self.watchdog.cfg["sample_seconds"])
        self.last_sample = 0.0
        self.peak_vram: float | None = None
        self.peak_ram: float | None = None
        self.peak_by_gpu: dict[int, float] = {}   # cuda ordinal -> the trainer's peak on that GPU
        self.supervisor: Supervisor | None = None  # set once the supervisor exists: a loss alert stops it

    @property
    def tick_s(self) -> float:
        return min(1.0, self.sample_every)

    # --- the supervisor's callbacks ---------------------------------------------------------------------
    def on_event(self, ev: Event) -> None:
        if self.tracker is None:
            return
        tracker = self.tracker
        tracker.on_event(ev)
        if ev.kind == "progress" and ev.step:
            self.watchdog.step(tracker.start + ev.step, ev.loss, self.clock())
            alert = self.watchdog.loss_alert()  # judged at once: a fast trainer could finish before the next tick
            if alert is not None and self.supervisor is not None:
                self.supervisor.request_stop(alert.kind, alert.message)
            s = self.status
            s.step, s.loss, s.s_per_it, s.eta_s = tracker.absolute, tracker.loss, tracker.s_per_it, ev.eta_s

    def on_line(self, _line: str) -> None:
        self.watchdog.output(self.clock())

    def on_tick(self, sup: Supervisor, now: float) -> None:
        if now - self.last_sample >= self.sample_every and sup.pid:
            self.last_sample = now
            self._sample(sup.pid, now)
        for alert in self.watchdog.check(now):
            if alert.fatal:
                sup.request_stop(alert.kind, alert.message)
            else:
                self.view.say(f"warning: {alert.message}")
                self.notifier.send("alert", f"warning: {alert.message}", kind=alert.kind)
        self.view.refresh()

    # --- sampling ---------------------------------------------------------------------------------------
    def _sample(self, pid: int, now: float) -> None:
        ram, _swap, pids = host_sample(pid)
        each = self.gpu.sample_each(pids) if self.gpu else []
        reading = combine([r for _dev, r in each])
        used, total, _proc, util = reading
        vram = trainer_vram(reading)
        self.watchdog.gpu(util, used, total, now)
        self.peak_vram = _peak(self.peak_vram, vram)
        self.peak_ram = _peak(self.peak_ram, ram)
        per_gpu = []
        for dev, r in each:
            v = trainer_vram(r)
            per_gpu.append(v)
            if v is not None:
                self.peak_by_gpu[dev.ordinal] = max(v, self.peak_by_gpu.get(dev.ordinal, 0.0))
        self.status.vram_used, self.status.vram_total, self.status.ram_gb = used, total, ram
        if self.tracker:
            self.tracker.sample(vram, ram, per_gpu if len(per_gpu) > 1 else None)

    def gpu_peaks(self) -> list[dict] | None:
        """Per GPU the trainer used: which one (cuda ordinal, NVML index, UUID) and its peak GB, for run.json."""
        if not self.gpu or not self.peak_by_gpu:
            return None
        return [{"cuda": d.ordinal, "index": d.index, "uuid": d.mig or d.uuid, "name": d.name,
                 "peak_gb": round(self.peak_by_gpu[d.ordinal], 3)} for d in self.gpu.devices
                if d.ordinal in self.peak_by_gpu]


def _peak(peak: float | None, value: float | None) -> float | None:
    return max(filter(None, (peak, value)), default=None)
