"""One training stage, attempt after attempt: the attempt loop.

Every attempt trains under a fresh output name, with ``max_train_steps`` = the steps that remain (never
``max_train_epochs``, which would override it) and ``kohyawan_lr.ContinuedLR`` told the absolute start
step, so checkpoints, step counts and the learning rate continue exactly. Between attempts the fallback
ladder decides the next move from the outcome; the decisions are the pure functions of
``kohyawan.run.steps``, done here in order. See docs/architecture.md ("A run").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kohyawan.files.atomic import write_text as atomic_write
from kohyawan.run import hostram, lrschedule, rungs, steps
from kohyawan.run.attemptconfig import attempt_config
from kohyawan.run.ladder import Next, Saved, decide
from kohyawan.run.monitor import AttemptMonitor
from kohyawan.run.startrung import estimate_kwargs, estimated_start, margin_of
from kohyawan.run.steps import Stop
from kohyawan.run.tracker import Tracker
from kohyawan.trainer.musubi_log import CPU_ALLOCATOR_REFUSED
from kohyawan.trainer.pyshim import kohyawan_mem

STATE_FILES = ("model.safetensors", "optimizer.bin", "scheduler.bin")
DEFAULT_MAX_ATTEMPTS = 8


@dataclass
class AttemptEnd:
    n: int
    outcome: str
    reason: str | None
    tracker: Tracker
    monitor: AttemptMonitor


def present(saves: list[Saved]) -> list[Saved]:
    """Resume points whose files still exist: a state folder missing a file falls back to the LoRA saved
    at the same step (fresh optimizer), and a point with neither is dropped, so an attempt never launches
    (and loads a 14B DiT for minutes) only to find its --resume folder gone."""
    kept = []
    for s in saves:
        state = s.state_dir if s.state_dir and all((Path(s.state_dir) / f).is_file() for f in STATE_FILES) else None
        weights = s.weights if s.weights and Path(s.weights).is_file() else None
        if state or weights:
            kept.append(Saved(s.step, state, weights))
    return kept


class StageTrainer:
    """Train the stage ``name`` of ``run`` (a ``kohyawan.run.runner.Run``) until it is done, or stop with
    a reason (``steps.Stop``)."""

    def __init__(self, run, name: str):
        self.run, self.name = run, name
        self.ledger = run.ledger
        self.rec = steps.stage_record(self.ledger.data, name)

    def prepare(self) -> None:
        """The stage's ladders (the host-RAM one grows as the settings in effect change) and attempt budget."""
        base = self.run.base_spec
        self.vram, self.ram = rungs.vram_rungs(base), rungs.ram_rungs(base)
        self.by_name = {r.name: r for r in self.vram + self.ram}
        self.max_attempts = self.run.opts.max_attempts or int(
            base.extra.get("ladder", {}).get("max_attempts", DEFAULT_MAX_ATTEMPTS))

    def rungs_of(self, names) -> list:
        """The rungs behind recorded names, in order; a host-RAM step that is not on the ladders built at start
        (a resumed run) is rebuilt from its name against the settings before it."""
        found, spec = [], self.run.base_spec
        for name in names:
            rung = self.by_name.get(name) or rungs.named(name, spec)
            if rung is not None:
                found.append(rung)
                spec = rungs.apply(spec, [rung])
        return found

    def spec_with(self, names):
        return rungs.apply(self.run.base_spec, self.rungs_of(names))

    def train(self) -> None:
        if self.rec.get("status") == "done":
            return
        self.prepare()
        if "rungs" not in self.rec:
            self.rec["rungs"] = self.start_rungs()
        steps.open_record(self.rec)
        nxt: Next | None = steps.first_move(present(steps.saves_of(self.rec)), self.rec["rungs"],
                                            self.rec["lr_scale"])
        while nxt is not None:
            nxt = self.next_move(self.attempt(nxt))

    def start_rungs(self) -> list[str]:
        """The rungs a stage's first attempt starts with: the finished expert's, else the estimate's."""
        source, inherited = steps.inherited_rungs(self.ledger.data.get("stages", []), self.rec, self.by_name)
        if inherited:
            self.run.view.say(f"{self.name}: starting with the rungs {source} needed: {', '.join(inherited)}")
            return inherited
        if self.run.opts.start_rung == "auto":
            return estimated_start(self.run.base_spec, self.vram, self.run.opts, self.ledger.data, self.run.view.say)
        return []

    # --- one attempt ----------------------------------------------------------------------------------
    def attempt(self, nxt: Next) -> AttemptEnd:
        """Render this attempt's configs, bring the caches up to date for them, and train.

        The run folder's files become the current plan (what a manual run would use); the attempt trains
        with its own copy in ``attempts/NN/``, which its command line names, so every recorded command
        keeps meaning that attempt's settings."""
        spec = self.spec_with(nxt.rungs)
        plan = self.run.plan(spec)
        for cache, forced in steps.cache_checks(plan.stages, nxt, keyed=self.run.cache_folders is not None):
            self.run.cache_stage(cache, force=forced, quiet_skip=True)
        total = self.rec.setdefault("total_steps", plan.steps.total_steps)
        self.ledger.data["total_steps"] = total
        self.rec["steps_per_epoch"] = plan.steps.steps_per_epoch  # this attempt's (a rung may change frames)
        n = len(self.ledger.data["attempts"]) + 1
        adir = self.ledger.attempt_dir(n)
        stage = next(s for s in self.run.plan(spec, config_dir=adir).stages if s.name == self.name)
        name = f"{stage.output_name}-a{n:02d}"
        self._write_config(stage, spec, nxt, total, n, name)
        changes = steps.rung_changes(self.rungs_of(nxt.rungs), nxt.lr_scale)
        self.ledger.start_attempt(rung=nxt.new_rung, changes=changes,
                                  resumed_from=nxt.resume_state or nxt.network_weights, first_step=nxt.start_step,
                                  stage=stage.name, output_name=name, rungs=list(nxt.rungs), lr_scale=nxt.lr_scale,
                                  console_log=str(adir / "console.log"))
        return self._train(stage, nxt, total, n, adir)

    def _write_config(self, stage, spec, nxt: Next, total: int, n: int, output_name: str) -> None:
        overrides = steps.attempt_overrides(output_name, total, nxt)
        cont = lrschedule.continuation(spec.train, total_steps=self.rec.get("lr_total_steps", total),
                                       start_step=nxt.start_step, lr_scale=nxt.lr_scale,
                                       num_processes=self.run.opts.processes)
        self.rec.setdefault("lr_total_steps", total)
        if cont:
            overrides.update(cont)
        elif n == 1 or nxt.lr_scale != 1.0:
            self.run.view.say("warning: " + lrschedule.supported(spec.train)[1])
        config = Path(stage.config_file)
        atomic_write(config, attempt_config(config.read_text(encoding="utf-8"), overrides))

    def _train(self, stage, nxt: Next, total: int, n: int, adir: Path) -> AttemptEnd:
        tracker = Tracker(self.ledger, attempt=n, stage=stage.name, base_name=stage.output_name,
                          start_step=nxt.start_step, total_steps=total, on_save=self._on_save,
                          steps_per_epoch=self.rec.get("steps_per_epoch"))
        self.run.show_attempt(stage.name, n, nxt, total)
        peaks = adir / "allocator"   # the trainer's own allocator peaks (kohyawan_lr -> kohyawan_mem)
        result, monitor = self.run.supervise(self.run.argv(stage), adir / "console.log", stage=stage.name,
                                             tracker=tracker, attempt=n, env={kohyawan_mem.ENV: str(peaks)})
        outcome, reason, finished = steps.attempt_outcome(
            stopped_for=result.stopped_for, stop_reason=result.stop_reason, exit_code=result.exit_code,
            tail=result.tail, model_saved=tracker.model_saved, reached=tracker.absolute, total=total)
        tracker.close(finished)
        self.ledger.end_attempt(outcome=outcome, reason=reason, exit_code=result.exit_code,
                                steps=[nxt.start_step, tracker.absolute], peak_vram_gb=_r(monitor.peak_vram),
                                peak_ram_gb=_r(monitor.peak_ram), escalated=result.escalated, gpu=self.run.gpu_brief(),
                                peak_vram_by_gpu=monitor.gpu_peaks(), allocator_peak_gb=kohyawan_mem.read(peaks))
        return AttemptEnd(n, outcome, reason, tracker, monitor)

    def _on_save(self, saved: Saved) -> None:
        # on the books at once: a SIGKILLed kohyawan must still know where to resume
        steps.record_save(self.rec["saves"], saved)
        self.ledger.save()

    # --- after an attempt -----------------------------------------------------------------------------
    def next_move(self, end: AttemptEnd) -> Next | None:
        """None when the stage is done; else the ladder's next move, or a reasoned ``Stop``."""
        rec = self.rec
        if end.outcome == "succeeded":
            rec.update(status="done", final=end.tracker.final, steps_done=end.tracker.absolute, reason=None)
            self.ledger.save()
            return None
        wd = end.monitor.watchdog
        bad = steps.bad_from(end.outcome, wd.bad_loss, end.tracker.absolute, wd.cfg)
        latest, good = steps.resume_points(present(steps.saves_of(rec)), bad)
        previous = steps.earlier_outcomes(self.ledger.data["attempts"], self.name)
        ram = self.ram_plan(end) if end.outcome == "oom_ram" else None
        nxt = decide(end.outcome, failure_line=end.reason, vram=self.vram, ram=ram.steps if ram else (),
                     applied=rec["rungs"], lr_scale=rec["lr_scale"], attempts_made=len(previous) + 1,
                     max_attempts=self.max_attempts, saved=latest, good_saved=good, previous=previous,
                     ram_exhausted=ram.exhausted if ram else "")
        rec.update(rungs=list(nxt.rungs), lr_scale=nxt.lr_scale)
        self.ledger.update_attempt(next=nxt.reason)
        if nxt.action == "stop":
            status = steps.stop_status(end.outcome)
            rec.update(status=status, reason=nxt.reason)
            self.ledger.save()
            raise Stop(status, f"{self.name}: {nxt.reason}")
        line, text = steps.ladder_messages(end.n, end.outcome, end.reason, nxt)
        self.run.view.say(line)
        self.run.notifier.send("ladder", text, outcome=end.outcome, rung=nxt.new_rung)
        return nxt

    def ram_plan(self, end: AttemptEnd) -> hostram.RamPlan:
        """The host-RAM rungs worth trying from the settings in effect, judged for the phase that failed."""
        current = self.spec_with(self.rec["rungs"])
        phase = "load" if end.tracker.first_step_seen is None else "train"
        data, opts = self.ledger.data, self.run.opts
        kwargs = estimate_kwargs(opts, data)
        if getattr(current, "dataset_dir", None) is not None:   # the media are read once for every step judged
            from kohyawan.estimate import workload

            kwargs["facts"] = workload.gather(current)
        margin = margin_of(current)
        fresh = [r for r in rungs.ram_rungs(current) if r.name not in self.rec["rungs"]]   # a name is taken once
        found = hostram.plan(current, fresh, phase=phase, margin_gib=margin,
                             vram_gib=(data.get("gpu") or {}).get("total_gib"), ram_gib=self.run.host_ram_gib(),
                             pinned_refused=CPU_ALLOCATOR_REFUSED in (end.reason or ""),
                             need=lambda s: hostram.need_of(s, **kwargs))
        for rung in found.steps:
            self.by_name.setdefault(rung.name, rung)
        return found


def _r(v: float | None) -> float | None:
    return round(v, 3) if v is not None else None
