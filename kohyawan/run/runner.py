"""The only loop over attempts: preflight -> cache latents -> cache text encoder -> train (each expert in
turn for a sequential run) -> verify, with the fallback ladder between training attempts.

Every attempt trains under a fresh output name, with ``max_train_steps`` = the steps that remain (never
``max_train_epochs``, which would override it) and ``kohyawan_lr.ContinuedLR`` told the absolute start
step, so checkpoints, step counts and the learning rate continue exactly (design §2, "Resume").
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kohyawan.run import caches, ladder, rungs, lrschedule as schedule
from kohyawan.run.ledger import Ledger
from kohyawan.run.notify import Notifier
from kohyawan.run.runlock import RunLock, clear_pid, write_pid
from kohyawan.run.runview import Status, View, brief
from kohyawan.run.runsetup import attempt_config, rehearsal_models, rehearse_trainer
from kohyawan.run.supervise import Supervisor, Timeouts
from kohyawan.run.tracker import Tracker
from kohyawan.trainer.musubi_log import classify_failure
from kohyawan.run.watchdog import GpuSampler, Watchdog, host_sample


@dataclass
class RunOptions:
    runs_dir: Path
    name: str | None = None
    trainer_dir: Path | None = None
    python: str = "python"
    launcher: str = "accelerate"
    accelerate_args: tuple[str, ...] = ()
    gpus: str | None = None
    max_attempts: int | None = None
    notify: tuple[str, ...] = ()
    rehearse: bool = False
    gpu_memory_gb: float | None = None
    start_rung: str = "auto"
    data_parallel: bool = False       # one run on every GPU in --gpus (accelerate --multi_gpu)          # "auto": the first rung the estimator says fits; "base": the profile's
    recache: bool = False
    live: bool | None = None
    quiet: bool = False
    plain_interval_s: float = 30.0
    timeouts: Timeouts = field(default_factory=Timeouts)

    @property
    def processes(self) -> int:
        """Trainer processes: one per GPU in --gpus with --data-parallel, else one."""
        return len([g for g in (self.gpus or "").split(",") if g.strip()]) if self.data_parallel else 1


class Run:
    def __init__(self, ledger: Ledger, spec, opts: RunOptions):
        self.ledger, self.base_spec, self.opts = ledger, spec, opts
        self.dir = ledger.dir
        self.status = Status(run_id=ledger.data["id"], rehearsal=opts.rehearse)
        self.view = View(self.status, live=opts.live, interval_s=opts.plain_interval_s, quiet=opts.quiet)
        self.notifier = Notifier(opts.notify, run_id=ledger.data["id"], warn=self.view.say)
        self.gpu: GpuSampler | None = None
        self.wd_cfg = dict(spec.extra.get("watchdog", {}))
        if opts.rehearse:
            opts.trainer_dir, opts.python = rehearse_trainer(), sys.executable
            self.base_spec = rehearsal_models(spec, opts.runs_dir)

    # --- plan -----------------------------------------------------------------------------------------
    def plan(self, spec):
        from kohyawan.config import render

        plan = render.build_plan(spec, self.dir, trainer_dir=self.opts.trainer_dir, python=self.opts.python,
                                 launcher=self.opts.launcher, processes=self.opts.processes,
                                 accelerate_args=tuple(self.opts.accelerate_args))
        render.write_plan(plan)
        return plan

    def argv(self, stage) -> list[str]:
        argv = list(stage.argv)
        if argv[1:3] == ["-m", "accelerate.commands.launch"]:
            if self.opts.rehearse:
                argv[2] = "kohyawan.rehearse.accelerate"
        return argv

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(schedule.pyshim_dir()), env.get("PYTHONPATH")) if p)
        if self.opts.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.opts.gpus
        if self.opts.rehearse and self.opts.gpu_memory_gb:
            env["KOHYAWAN_REHEARSE_GPU_GB"] = str(self.opts.gpu_memory_gb)
        return env

    # --- one supervised process -------------------------------------------------------------------------
    def supervise(self, argv, log_path: Path, *, stage: str, tracker: Tracker | None, attempt: int):
        wd = Watchdog(self.wd_cfg, stage="train" if tracker else "cache", started=time.monotonic())
        peaks = {"vram": None, "ram": None}
        sample_every = float(wd.cfg["sample_seconds"])
        last_sample = [0.0]

        holder = {}

        def on_event(ev):
            if tracker is None:
                return
            tracker.on_event(ev)
            if ev.kind == "progress" and ev.step:
                wd.step(tracker.start + ev.step, ev.loss, time.monotonic())
                alert = wd.loss_alert()  # judged at once: a fast trainer could finish before the next tick
                if alert is not None and "sup" in holder:
                    holder["sup"].request_stop(alert.kind, alert.message)
                s = self.status
                s.step, s.loss, s.s_per_it, s.eta_s = tracker.absolute, tracker.loss, tracker.s_per_it, ev.eta_s

        def on_line(_line):
            wd.output(time.monotonic())

        def on_tick(sup, now):
            if now - last_sample[0] >= sample_every and sup.pid:
                last_sample[0] = now
                ram, _swap, pids = host_sample(sup.pid)
                used, total, proc, util = self.gpu.sample(pids) if self.gpu else (None, None, None, None)
                vram = proc if proc is not None else used
                wd.gpu(util, used, total, now)
                peaks["vram"] = max(filter(None, (peaks["vram"], vram)), default=None)
                peaks["ram"] = max(filter(None, (peaks["ram"], ram)), default=None)
                self.status.vram_used, self.status.vram_total, self.status.ram_gb = used, total, ram
                if tracker:
                    tracker.sample(vram, ram)
            for alert in wd.check(now):
                if alert.fatal:
                    sup.request_stop(alert.kind, alert.message)
                else:
                    self.view.say(f"warning: {alert.message}")
                    self.notifier.send("alert", f"warning: {alert.message}", kind=alert.kind)
            self.view.refresh()

        sup = Supervisor(argv, log_path=log_path, env=self.env(), cwd=str(self.opts.trainer_dir), on_event=on_event,
                         on_tick=on_tick, on_line=on_line, tick_s=min(1.0, sample_every), timeouts=self.opts.timeouts)
        holder["sup"] = sup
        sup.start()
        write_pid(self.dir, guard_pid=sup.pid, pgid=sup.pid, supervisor_pid=os.getpid(), stage=stage, attempt=attempt)
        self.ledger.set(supervisor_pid=os.getpid(), trainer_pgid=sup.pid)
        try:
            result = sup.run()
        finally:
            clear_pid(self.dir)
        return result, peaks, wd

    # --- stages ---------------------------------------------------------------------------------------------
    def cache_stage(self, stage, force: bool, quiet_skip: bool = False) -> None:
        dataset_toml = self.dir / "dataset.toml"
        model = stage.argv[stage.argv.index("--vae" if stage.name == "cache_latents" else "--t5") + 1]
        why = "forced (--recache)" if force else caches.missing(stage.name, dataset_toml, model)
        record = self._stage_record(stage.name)
        if why is None:
            if not quiet_skip:
                record.update(status="skipped", reason="outputs complete and newer than their inputs")
                self.ledger.save()
                self.view.say(f"{stage.name}: skipped (caches complete and up to date)")
            return
        self.status.stage = stage.name
        self.view.say(f"{stage.name}: running ({why})")
        record.update(status="running", reason=why)
        self.ledger.save()
        log = self.dir / "logs" / f"{stage.name}.log"
        result, _peaks, _wd = self.supervise(self.argv(stage), log, stage=stage.name, tracker=None, attempt=0)
        if result.stopped_for == "interrupted":
            record.update(status="stopped", reason=result.stop_reason)
            raise _Stop("stopped", result.stop_reason)
        if result.stopped_for or result.exit_code != 0:
            failure = classify_failure(result.tail, result.exit_code)
            reason = result.stop_reason or failure.line
            record.update(status="failed", reason=reason, exit_code=result.exit_code, log=str(log))
            raise _Stop("failed", f"{stage.name} failed: {reason} (log: {log})")
        caches.mark_done(stage.name, dataset_toml, model)
        record.update(status="done", reason=why, log=str(log))
        self.ledger.save()

    def _stage_record(self, name: str) -> dict:
        for rec in self.ledger.data.setdefault("stages", []):
            if rec["name"] == name:
                return rec
        rec = {"name": name, "status": "pending"}
        self.ledger.data["stages"].append(rec)
        return rec

    def train_stage(self, stage_name: str) -> None:
        rec = self._stage_record(stage_name)
        if rec.get("status") == "done":
            return
        base = self.base_spec
        vram, ram = rungs.vram_rungs(base), rungs.ram_rungs(base)
        by_name = {r.name: r for r in vram + ram}
        max_attempts = self.opts.max_attempts or int(base.extra.get("ladder", {}).get("max_attempts", 8))
        if "rungs" not in rec:
            # a second expert has the first one's size: start from the rungs the first one needed
            earlier = [r for r in self.ledger.data.get("stages", []) if r["name"].startswith("train")
                       and r is not rec and r.get("status") == "done"]
            inherited = [n for n in (earlier[-1].get("rungs", []) if earlier else []) if n in by_name]
            rec["rungs"] = inherited
            if inherited:
                self.view.say(f"{stage_name}: starting with the rungs {earlier[-1]['name']} needed: "
                              f"{', '.join(inherited)}")
            elif self.opts.start_rung == "auto":
                rec["rungs"] = self.estimated_start(base, vram)
        rec.setdefault("lr_scale", 1.0)
        rec.setdefault("saves", [])
        rec["status"] = "running"
        saves = _present([ladder.Saved(**s) for s in rec["saves"]])
        latest = max(saves, key=lambda s: (s.step, s.state_dir is not None), default=None)
        action, start, state, weights, how = ladder.start_from(latest, None)
        nxt = ladder.Next(action, how if latest else "first attempt", tuple(rec["rungs"]), None, start, state, weights,
                          rec["lr_scale"])
        while True:
            spec = rungs.apply(base, [by_name[n] for n in nxt.rungs if n in by_name])
            plan = self.plan(spec)
            # caches must match this attempt's dataset config (a rung may change frames or resolution)
            for st in plan.stages:
                if st.name.startswith("cache"):
                    self.cache_stage(st, force=nxt.recache and st.name == "cache_latents", quiet_skip=True)
            stage = next(s for s in plan.stages if s.name == stage_name)
            total = rec.setdefault("total_steps", plan.steps.total_steps)
            self.ledger.data["total_steps"] = total
            outcome, reason, tracker, wd = self.attempt(plan, stage, spec, nxt, total, rec)
            saves = _present([ladder.Saved(**s) for s in rec["saves"]])
            if outcome == "succeeded":
                rec.update(status="done", final=tracker.final, steps_done=tracker.absolute, reason=None)
                self.ledger.save()
                return
            bad_from = (wd.bad_loss[0] if outcome == "nan" and wd.bad_loss else
                        tracker.absolute - int(wd.cfg["loss_spike_patience"]) - int(wd.cfg["loss_spike_window"]) // 2
                        if outcome == "loss_spike" else None)
            usable = [s for s in saves if s.state_dir or s.weights]
            latest = max(usable, key=lambda s: (s.step, s.state_dir is not None), default=None)
            good = max((s for s in usable if bad_from is None or s.step < bad_from),
                       key=lambda s: (s.step, s.state_dir is not None), default=None)
            previous = [a["outcome"] for a in self.ledger.data["attempts"] if a.get("stage") == stage_name][:-1]
            nxt = ladder.decide(outcome, failure_line=reason, vram=vram, ram=ram, applied=rec["rungs"],
                                lr_scale=rec["lr_scale"], attempts_made=len(previous) + 1, max_attempts=max_attempts,
                                saved=latest, good_saved=good, previous=previous)
            rec.update(rungs=list(nxt.rungs), lr_scale=nxt.lr_scale)
            self.ledger.update_attempt(next=nxt.reason)
            if nxt.action == "stop":
                status = "stopped" if outcome == "interrupted" else "failed"
                rec.update(status=status, reason=nxt.reason)
                self.ledger.save()
                raise _Stop(status, f"{stage_name}: {nxt.reason}")
            self.view.say(f"attempt {self.status.attempt} ended: {outcome} ({brief(reason)}); {brief(nxt.reason)}")
            self.notifier.send("ladder", f"{outcome}: {reason}. Next: {nxt.reason}", outcome=outcome,
                               rung=nxt.new_rung)

    def estimated_start(self, base, vram) -> list[str]:
        """The rungs to start with: the first position of the ladder that ``kohyawan estimate`` says fits
        this GPU with the profile's safety margin (none when the GPU's size is unknown)."""
        from kohyawan.estimate import plan as estimate, observations

        gpu = None if self.opts.rehearse else _gpu(self.opts.gpus)
        if gpu is not None:  # the estimator learns from runs on the same GPU: record which one this is
            self.ledger.data["gpu"] = gpu
        gib = (self.opts.gpu_memory_gb or 24.0) if self.opts.rehearse else (gpu or {}).get("total_gib")
        if gib is None:
            self.view.say("estimate: GPU size unknown, starting at the profile's settings")
            return []
        margin = float(base.extra.get("watchdog", {}).get("vram_margin_gb", estimate.DEFAULT_MARGIN_GIB))
        seen = observations.load_observations(self.opts.runs_dir) if gpu else []
        index, rung, est = estimate.first_fitting_rung(base, gib, margin_gb=margin, observations=seen,
                                                       gpu_name=gpu["name"] if gpu else None)
        self.ledger.data["estimate"] = {"gpu_gib": gib, "margin_gib": margin, "start_index": index,
                                        "predicted_peak_gib": round(est.vram_gib, 2)}
        if index == 0:
            self.view.say(f"estimate: the profile's settings fit {gib:g} GiB (predicted peak {est.vram_gib:.1f} GiB)")
            return []
        if index < 0:
            self.view.say(f"estimate: nothing on the ladder fits {gib:g} GiB (last rung {est.vram_gib:.1f} GiB); "
                          f"starting at the profile's settings and climbing")
            return []
        names = [r.name for r in vram[:index]]
        self.view.say(f"estimate: starting at rung {rung.name} (predicted peak {est.vram_gib:.1f} GiB of "
                      f"{gib:g}); --start-rung base starts at the profile's settings")
        return names

    def attempt(self, plan, stage, spec, nxt: ladder.Next, total: int, rec: dict):
        n = len(self.ledger.data["attempts"]) + 1
        adir = self.ledger.attempt_dir(n)
        name = f"{stage.output_name}-a{n:02d}"
        overrides: dict[str, Any] = {"output_name": name, "max_train_steps": total - nxt.start_step}
        if nxt.resume_state:
            overrides["resume"] = nxt.resume_state
        if nxt.network_weights:
            overrides["network_weights"] = nxt.network_weights
        cont = schedule.continuation(spec.train, total_steps=rec.get("lr_total_steps", total),
                                     start_step=nxt.start_step, lr_scale=nxt.lr_scale,
                                     num_processes=self.opts.processes)
        rec.setdefault("lr_total_steps", total)
        if cont:
            overrides.update(cont)
        elif n == 1 or nxt.lr_scale != 1.0:
            self.view.say("warning: " + schedule.supported(spec.train)[1])
        from kohyawan.files.atomic import write_text as atomic_write

        atomic_write(Path(stage.config_file), attempt_config(Path(stage.config_file).read_text(encoding="utf-8"),
                                                             overrides))
        for fname in plan.files:
            shutil.copyfile(self.dir / fname, adir / fname)
        changes = {k: v for r in nxt.rungs for k, v in _rung_changes(self.base_spec, r).items()}
        self.ledger.start_attempt(rung=nxt.new_rung, changes=changes, resumed_from=nxt.resume_state or nxt.network_weights,
                                  first_step=nxt.start_step, stage=stage.name, output_name=name, rungs=list(nxt.rungs),
                                  lr_scale=nxt.lr_scale, console_log=str(adir / "console.log"))
        def on_save(saved):  # on the books at once: a SIGKILLed kohyawan must still know where to resume
            for entry in rec["saves"]:
                if entry["step"] == saved.step:  # weights first, then the state of the same step
                    entry.update({k: v for k, v in saved.__dict__.items() if v is not None})
                    break
            else:
                rec["saves"].append(dict(saved.__dict__))
            self.ledger.save()

        tracker = Tracker(self.ledger, attempt=n, stage=stage.name, base_name=stage.output_name,
                          start_step=nxt.start_step, total_steps=total, on_save=on_save)
        s = self.status
        s.stage, s.attempt, s.rung, s.step, s.total = stage.name, n, ",".join(nxt.rungs) or None, nxt.start_step, total
        s.loss = s.s_per_it = s.eta_s = None
        self.view.say(f"{stage.name}: attempt {n} from step {nxt.start_step}/{total}"
                      + (f" with {', '.join(nxt.rungs)}" if nxt.rungs else ""))
        result, peaks, wd = self.supervise(self.argv(stage), adir / "console.log", stage=stage.name,
                                           tracker=tracker, attempt=n)
        succeeded = result.stopped_for is None and result.exit_code == 0 and tracker.model_saved
        tracker.close(succeeded)
        if result.stopped_for:
            outcome, reason = result.stopped_for, result.stop_reason
        elif succeeded:
            outcome, reason = "succeeded", f"trained to step {tracker.absolute}"
        elif result.exit_code == 0:
            outcome, reason = "crashed", "the trainer exited without saving the model"
        else:
            failure = classify_failure(result.tail, result.exit_code)
            outcome, reason = failure.outcome, failure.line
        if succeeded and tracker.absolute != total:
            outcome, reason = "crashed", f"the trainer stopped at step {tracker.absolute}, expected {total}"
        self.ledger.end_attempt(outcome=outcome, reason=reason, exit_code=result.exit_code,
                                steps=[nxt.start_step, tracker.absolute], peak_vram_gb=_r(peaks["vram"]),
                                peak_ram_gb=_r(peaks["ram"]), escalated=result.escalated)
        return outcome, reason, tracker, wd

    # --- the whole run -------------------------------------------------------------------------------------
    def drive(self) -> dict:
        led = self.ledger
        lock = RunLock(self.dir)
        lock.acquire()
        previous_term = signal.signal(signal.SIGTERM, _term_as_interrupt)
        try:
            with self.view:
                self.gpu = GpuSampler(warn=lambda m: self.view.say(f"note: {m}"))
                if self.opts.rehearse:
                    self.view.say("*** REHEARSAL: kohyawan's simulated trainer runs; NO TRAINING HAPPENS ***")
                plan = self.plan(self.base_spec)
                led.set(status="running", plan_total_steps=plan.steps.total_steps)
                try:
                    for st in plan.stages:
                        if st.name.startswith("cache"):
                            self.cache_stage(st, force=self.opts.recache and not led.data.get("recached"))
                    led.set(recached=True)
                    for st in plan.stages:
                        if st.name.startswith("train"):
                            self.train_stage(st.name)
                    self.verify()
                    led.set(status="succeeded", reason=None)
                    self.notifier.send("succeeded", f"succeeded: {led.data['final']['path']}")
                except _Stop as stop:
                    led.set(status=stop.status, reason=stop.reason)
                    self.notifier.send(stop.status, f"{stop.status}: {stop.reason}")
                except KeyboardInterrupt:
                    led.set(status="stopped", reason="interrupted by the user")
                    self.notifier.send("stopped", "stopped by the user")
                self.status.stage = led.data["status"]
                self.view.refresh(force=True)
        finally:
            signal.signal(signal.SIGTERM, previous_term)
            lock.release()
        return led.data

    def verify(self) -> None:
        from kohyawan.lora.stamp import stamp_run_checkpoint

        self.status.stage = "verify"
        outputs = []
        for rec in self.ledger.data.get("stages", []):
            if not rec["name"].startswith("train"):
                continue
            path = rec.get("final")
            if not path or not Path(path).is_file():
                raise _Stop("failed", f"{rec['name']}: the final LoRA file is missing ({path})")
            try:
                meta = stamp_run_checkpoint(self.ledger.data, path)  # absolute ss_* values from the ledger
            except Exception as exc:
                raise _Stop("failed", f"{path} is not a readable safetensors file ({exc})") from None
            entry = next(c for c in self.ledger.data["checkpoints"] if c["path"] == path)
            outputs.append({"stage": rec["name"], "path": path, "step": rec.get("steps_done"),
                            "bytes": entry["bytes"], "sha256": entry["sha256"],
                            "rehearsal": meta.get("kohyawan.rehearsal") == "true"})
        self.ledger.set(final={**outputs[-1], "outputs": outputs})


class _Stop(Exception):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


STATE_FILES = ("model.safetensors", "optimizer.bin", "scheduler.bin")


def _present(saves: list) -> list:
    """Resume points whose files still exist: a state folder missing a file falls back to the LoRA saved
    at the same step (fresh optimizer), and a point with neither is dropped, so an attempt never launches
    (and loads a 14B DiT for minutes) only to find its --resume folder gone."""
    kept = []
    for s in saves:
        state = s.state_dir if s.state_dir and all((Path(s.state_dir) / f).is_file() for f in STATE_FILES) else None
        weights = s.weights if s.weights and Path(s.weights).is_file() else None
        if state or weights:
            kept.append(ladder.Saved(s.step, state, weights))
    return kept


def _gpu(gpus: str | None) -> dict | None:
    """Name and total memory of the GPU the trainer will use (first of CUDA_VISIBLE_DEVICES), via NVML."""
    from kohyawan.doctor import host as doctor

    found = doctor.probe_gpus(doctor.real_nvml())
    if not found:
        return None
    first = (gpus or "0").split(",")[0].strip()
    index = int(first) if first.isdigit() and int(first) < len(found) else 0
    return {"name": str(found[index]["name"]), "total_gib": float(found[index]["total_gib"])}


def _term_as_interrupt(signum, frame):
    raise KeyboardInterrupt()


def _r(v):
    return round(v, 3) if v is not None else None


def _rung_changes(spec, name: str) -> dict:
    if name == ladder.HALF_LR:
        return {"lr_scale": 0.5}
    for r in rungs.vram_rungs(spec) + rungs.ram_rungs(spec):
        if r.name == name:
            return dict(r.changes)
    return {}


