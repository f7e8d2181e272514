"""One training attempt's events -> absolute steps, metrics, checkpoints and resume points.

The trainer counts from 0 on every resume; the tracker adds the attempt's absolute offset. A
checkpoint counts only once the trainer has moved past it (musubi prints ``saving checkpoint`` before
writing the file, so a crash mid-save must not leave a half-written file on the books), and a state
folder counts only after accelerate's last line about it (``Random states saved``). Every checkpoint
is hard-linked into ``checkpoints/`` under its absolute step, so nothing a later attempt writes can
overwrite it.
See docs/architecture.md ("A run").
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

from kohyawan.run.ladder import Saved
from kohyawan.run.ledger import Ledger
from kohyawan.run.steps import checkpoint_epoch
from kohyawan.trainer.musubi_log import Event

_STEP_FILE = re.compile(r"-step(\d{8})\.safetensors$")
_EPOCH_FILE = re.compile(r"-(\d{6})\.safetensors$")
# events the trainer prints only after save_model() returned (an error or a kill in between does not count)
_SAVE_DONE = {"progress", "state", "epoch", "model_saved", "removed", "checkpoint", "sample"}


class Tracker:
    def __init__(self, ledger: Ledger, *, attempt: int, stage: str, base_name: str, start_step: int,
                 total_steps: int, clock: Callable[[], float] = time.time,
                 on_save: Callable[[Saved], None] | None = None, steps_per_epoch: int | None = None):
        self.ledger = ledger
        self.attempt = attempt
        self.stage = stage
        self.base_name = base_name
        self.start = start_step
        self.total = total_steps
        self.steps_per_epoch = steps_per_epoch  # the plan's: checkpoints get absolute epochs (steps.checkpoint_epoch)
        self.clock = clock
        self.on_save = on_save or (lambda saved: None)
        self.local = 0                 # the trainer's own step counter
        self.loss: float | None = None
        self.s_per_it: float | None = None
        self.eta_s: float | None = None
        self.epoch: int | None = None
        self.epochs: int | None = None
        self.printed_total: int | None = None
        self.pending_ckpt: str | None = None
        self.pending_metric: dict | None = None
        self.state_step: int | None = None
        self.saves: list[Saved] = []     # completed states/weights of this attempt, absolute steps
        self.weights_at: dict[int, str] = {}
        self.model_saved = False
        self.final: str | None = None
        self.last_error: str | None = None
        self.vram_gb: float | None = None
        self.ram_gb: float | None = None
        self.vram_each: list[float | None] | None = None   # per GPU of a data-parallel run
        self.first_step_seen: int | None = None

    @property
    def absolute(self) -> int:
        return self.start + self.local

    def on_event(self, ev: Event) -> None:
        if self.pending_ckpt and ev.kind in _SAVE_DONE:
            self._finish_checkpoint()
        handler = self._HANDLERS.get(ev.kind)
        if handler is not None:
            handler(self, ev)

    def _on_progress(self, ev: Event) -> None:
        if self.pending_metric and ev.step != self.pending_metric["local"]:
            self._flush_metric()
        if ev.step and ev.step > self.local and self.first_step_seen is None:
            self.first_step_seen = ev.step
        self.local = max(self.local, ev.step or 0)
        self.loss = ev.loss if ev.loss is not None else self.loss
        self.s_per_it = ev.s_per_it if ev.s_per_it is not None else self.s_per_it
        self.eta_s = ev.eta_s
        if ev.step:
            self.pending_metric = {"step": self.start + ev.step, "local": ev.step, "loss": ev.loss,
                                   "s_per_it": ev.s_per_it}

    def _on_startup(self, ev: Event) -> None:
        if ev.key == "total_steps":
            self.printed_total = ev.value

    def _on_epoch(self, ev: Event) -> None:
        self.epoch, self.epochs = ev.epoch, ev.epochs

    def _on_checkpoint(self, ev: Event) -> None:
        self.pending_ckpt = ev.path

    def _on_state(self, ev: Event) -> None:
        """Which step the state being saved belongs to: printed with it, or the current one (epoch end, last)."""
        if ev.key == "step":
            self.state_step = ev.value
        elif ev.key in ("epoch", "last"):
            self.state_step = self.local

    def _on_state_saved(self, ev: Event) -> None:
        step = self.start + (self.state_step if self.state_step is not None else self.local)
        saved = Saved(step, ev.path, self.weights_at.get(step))
        self.saves.append(saved)
        self.on_save(saved)

    def _on_removed(self, ev: Event) -> None:
        if ev.key == "checkpoint":
            self._removed(ev.path)

    def _on_model_saved(self, ev: Event) -> None:
        self.model_saved = True

    def _on_error(self, ev: Event) -> None:
        self.last_error = ev.text

    _HANDLERS = {"progress": _on_progress, "startup": _on_startup, "epoch": _on_epoch, "checkpoint": _on_checkpoint,
                 "state": _on_state, "state_saved": _on_state_saved, "removed": _on_removed,
                 "model_saved": _on_model_saved, "error": _on_error}

    def _finish_checkpoint(self) -> None:
        path, self.pending_ckpt = self.pending_ckpt, None
        if not os.path.isfile(path):
            return
        name = os.path.basename(path)
        m = _STEP_FILE.search(name)
        kind = "step" if m else "epoch" if _EPOCH_FILE.search(name) else "final"
        step = self.start + (int(m.group(1)) if m else self.local)
        final = kind == "final"
        # absolute, as an uninterrupted run's file would say it (the trainer's own counts restart on resume)
        epoch = checkpoint_epoch(step, self.steps_per_epoch, kind)
        link = self._link(path, step, final)
        self.weights_at[step] = str(link)
        # a state saved at the same step may already be on the books (epoch-end order differs)
        self.saves = [Saved(s.step, s.state_dir, s.weights or (str(link) if s.step == step else None))
                      for s in self.saves]
        self.ledger.add_checkpoint(link, step=step, epoch=epoch, attempt=self.attempt, stage=self.stage,
                                   trainer_path=path, final=final)
        if final:
            self.final = str(link)
        else:  # LoRA weights alone are a resume point too (fresh optimizer) when no state comes with them
            self.on_save(Saved(step, None, str(link)))

    def _link(self, path: str, step: int, final: bool) -> Path:
        folder = self.ledger.dir / "checkpoints"
        folder.mkdir(exist_ok=True)
        target = folder / (f"{self.base_name}.safetensors" if final else f"{self.base_name}-step{step:08d}.safetensors")
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            if tmp.exists():
                tmp.unlink()
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, target)
        return target

    def _removed(self, path: str) -> None:
        for c in self.ledger.data["checkpoints"]:
            if c.get("trainer_path") == path:
                c["removed"] = True
                try:
                    os.unlink(c["path"])
                except OSError:
                    pass
        self.ledger.save()

    def sample(self, vram_gb: float | None, ram_gb: float | None, vram_each: list[float | None] | None = None) -> None:
        self.vram_gb, self.ram_gb, self.vram_each = vram_gb, ram_gb, vram_each

    def _flush_metric(self) -> None:
        m, self.pending_metric = self.pending_metric, None
        if m is None:
            return
        record = {"step": m["step"], "loss": m["loss"], "s_per_it": m["s_per_it"], "vram_gb": _r(self.vram_gb),
                  "ram_gb": _r(self.ram_gb), "time": round(self.clock(), 3), "attempt": self.attempt,
                  "stage": self.stage}
        if self.vram_each:
            record["vram_gb_each"] = [_r(v) for v in self.vram_each]
        self.ledger.metric(record)

    def close(self, succeeded: bool) -> None:
        """End of the attempt: a checkpoint still pending was written only if the trainer finished."""
        if self.pending_ckpt and succeeded:
            self._finish_checkpoint()
        self.pending_ckpt = None
        self._flush_metric()


def _r(v: float | None) -> float | None:
    return round(v, 3) if v is not None else None
