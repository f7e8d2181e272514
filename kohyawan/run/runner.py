"""A whole run: preflight -> cache latents -> cache text encoder -> train (each expert in turn for a
sequential run, ``kohyawan.run.training``) -> verify, under the run folder's lock.

``Run`` owns what every stage shares: the ledger (run.json), the rendered plan, the trainer's command
line and environment, one supervised process at a time (``supervise``) and the live view. See
docs/architecture.md ("A run").
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from kohyawan.run import caches, gpuenv, lrschedule, rehearsal
from kohyawan.run.ladder import Next
from kohyawan.run.ledger import Ledger
from kohyawan.run.monitor import AttemptMonitor
from kohyawan.run.notify import Notifier
from kohyawan.run.options import RunOptions
from kohyawan.run.runlock import RunLock, clear_pid, write_pid
from kohyawan.run.runview import Status, View
from kohyawan.run.samplers import GpuSampler
from kohyawan.run.steps import Stop, stage_record
from kohyawan.run.supervise import AttemptResult, Supervisor
from kohyawan.run.tracker import Tracker
from kohyawan.run.training import StageTrainer
from kohyawan.trainer.musubi_log import classify_failure

REHEARSAL_BANNER = "*** REHEARSAL: kohyawan's simulated trainer runs; NO TRAINING HAPPENS ***"


class Run:
    def __init__(self, ledger: Ledger, spec, opts: RunOptions, lock: RunLock | None = None):
        self.ledger, self.base_spec, self.opts = ledger, spec, opts
        self.dir = ledger.dir
        self.lock = lock or RunLock(self.dir)  # taken by runsetup before run.json was touched, or by drive
        self.status = Status(run_id=ledger.data["id"], rehearsal=opts.rehearse)
        self.view = View(self.status, live=opts.live, interval_s=opts.plain_interval_s, quiet=opts.quiet)
        self.notifier = Notifier(opts.notify, run_id=ledger.data["id"], warn=self.view.say)
        self.gpu: GpuSampler | None = None
        self.wd_cfg = dict(spec.extra.get("watchdog", {}))
        self.caching = caches.Caching(self)
        self.cache_folders: list | None = None   # the store folders of the current plan (None: RUN/cache/)
        if opts.rehearse:
            rehearsal.use_simulator(opts)
            self.base_spec = rehearsal.rehearsal_models(spec, opts.runs_dir)

    # --- plan -----------------------------------------------------------------------------------------
    def plan(self, spec, config_dir: Path | None = None):
        """Render and write the plan: the run folder's current one, or (``config_dir``) an attempt's own."""
        from kohyawan.config import render

        plan = render.build_plan(spec, self.dir, trainer_dir=self.opts.trainer_dir, python=self.opts.python,
                                 launcher=self.opts.launcher, processes=self.opts.processes,
                                 accelerate_args=tuple(self.opts.accelerate_args), config_dir=config_dir,
                                 cache_store=self.opts.cache_dir)
        render.write_plan(plan)
        self.cache_folders = caches.plan_folders(plan.document) if self.opts.cache_dir else None
        return plan

    def argv(self, stage) -> list[str]:
        return rehearsal.simulated_argv(stage.argv) if self.opts.rehearse else list(stage.argv)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The trainer's environment: kohyawan's own, its pyshim on PYTHONPATH, the GPUs (``gpuenv``)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(lrschedule.pyshim_dir()), env.get("PYTHONPATH")) if p)
        env.update(gpuenv.trainer_env(os.environ, self.opts.gpus))
        if self.opts.rehearse and self.opts.gpu_memory_gb:
            env["KOHYAWAN_REHEARSE_GPU_GB"] = str(self.opts.gpu_memory_gb)
        env.update(extra or {})
        return env

    def watch_gpus(self) -> GpuSampler | None:
        """The sampler of the GPUs the trainer uses, and their record in run.json. A rehearsal's trainer uses
        no GPU: its VRAM is the simulation's, reported through the allocator file like a real trainer's."""
        record = gpuenv.env_record(os.environ, self.opts.gpus)
        if self.opts.rehearse:
            self.ledger.set(**record, **gpuenv.rehearsal_record(self.opts.gpu_memory_gb
                                                                 or rehearsal.virtual_gpu_gib()))
            return None
        env = self.env()
        sampler = GpuSampler(env.get(gpuenv.VISIBLE_VAR), processes=self.opts.processes,
                             order=env.get(gpuenv.ORDER_VAR), warn=lambda m: self.view.say(f"note: {m}"))
        self.ledger.set(**record, **gpuenv.gpu_record(sampler.devices))
        return sampler

    @property
    def gpu_name(self) -> str | None:
        return (self.ledger.data.get("gpu") or {}).get("name")

    def gpu_brief(self) -> dict | None:
        """The GPU an attempt ran on, for its record (a resumed run may be on another machine)."""
        gpu = self.ledger.data.get("gpu")
        return {"name": gpu.get("name"), "total_gib": gpu.get("total_gib")} if gpu else None

    def host_ram_gib(self) -> float | None:
        """The host RAM the trainer has: this machine's, or a rehearsal's virtual RAM."""
        if self.opts.rehearse:
            return rehearsal.virtual_ram_gib()
        import psutil

        return psutil.virtual_memory().total / 2**30

    # --- one supervised process -------------------------------------------------------------------------
    def supervise(self, argv, log_path: Path, *, stage: str, tracker: Tracker | None, attempt: int,
                  env: dict[str, str] | None = None) -> tuple[AttemptResult, AttemptMonitor]:
        monitor = AttemptMonitor(self.wd_cfg, tracker=tracker, status=self.status, view=self.view,
                                 notifier=self.notifier, gpu=self.gpu)
        sup = Supervisor(argv, log_path=log_path, env=self.env(env), cwd=str(self.opts.trainer_dir),
                         on_event=monitor.on_event, on_tick=monitor.on_tick, on_line=monitor.on_line,
                         tick_s=monitor.tick_s, timeouts=self.opts.timeouts)
        monitor.supervisor = sup
        sup.start()
        write_pid(self.dir, guard_pid=sup.pid, pgid=sup.pid, supervisor_pid=os.getpid(), stage=stage, attempt=attempt)
        self.ledger.set(supervisor_pid=os.getpid(), trainer_pgid=sup.pid)
        try:
            result = sup.run()
        finally:
            clear_pid(self.dir)
        return result, monitor

    def show_attempt(self, stage: str, n: int, nxt: Next, total: int) -> None:
        s = self.status
        s.stage, s.attempt, s.rung, s.step, s.total = stage, n, ",".join(nxt.rungs) or None, nxt.start_step, total
        s.loss = s.s_per_it = s.eta_s = None
        self.view.say(f"{stage}: attempt {n} from step {nxt.start_step}/{total}"
                      + (f" with {', '.join(nxt.rungs)}" if nxt.rungs else ""))

    # --- stages ---------------------------------------------------------------------------------------------
    def cache_stage(self, stage, force: bool, quiet_skip: bool = False) -> None:
        """Skip the caching stage when its caches are complete, else bring them up to date
        (``kohyawan.run.caches``: the shared store, or the run folder's own caches of an older run)."""
        if self.cache_folders is not None:
            self.caching.stage(stage, self.cache_folders, force=force, quiet_skip=quiet_skip)
            return
        dataset_toml = caches.dataset_config_of(stage.argv)
        model = stage.argv[stage.argv.index("--vae" if stage.name == "cache_latents" else "--t5") + 1]
        why = "forced (--recache)" if force else caches.legacy_missing(stage.name, dataset_toml, model)
        record = stage_record(self.ledger.data, stage.name)
        if why is None:
            if not quiet_skip:
                record.update(status="skipped", reason="outputs complete and newer than their inputs")
                self.ledger.save()
                self.view.say(f"{stage.name}: skipped (caches complete and up to date)")
            return
        self.run_cache_script(stage, why, record)
        caches.legacy_mark_done(stage.name, dataset_toml, model)

    def run_cache_script(self, stage, why: str, record: dict) -> None:
        """Run one caching script under supervision; a failure or an interruption stops the run."""
        self.status.stage = stage.name
        self.view.say(f"{stage.name}: running ({why})")
        record.update(status="running", reason=why)
        self.ledger.save()
        log = self.dir / "logs" / f"{stage.name}.log"
        result, _monitor = self.supervise(self.argv(stage), log, stage=stage.name, tracker=None, attempt=0)
        if result.stopped_for == "interrupted":
            record.update(status="stopped", reason=result.stop_reason)
            raise Stop("stopped", result.stop_reason)
        if result.stopped_for or result.exit_code != 0:
            reason = result.stop_reason or classify_failure(result.tail, result.exit_code).line
            record.update(status="failed", reason=reason, exit_code=result.exit_code, log=str(log))
            raise Stop("failed", f"{stage.name} failed: {reason} (log: {log})")
        record.update(status="done", reason=why, log=str(log))
        self.ledger.save()

    def train_stage(self, stage_name: str) -> None:
        StageTrainer(self, stage_name).train()

    # --- the whole run -------------------------------------------------------------------------------------
    def drive(self) -> dict:
        lock = self.lock
        if not lock.held:
            lock.acquire()
        previous_term = signal.signal(signal.SIGTERM, _term_as_interrupt)
        try:
            with self.view:
                if self.opts.rehearse:
                    self.view.say(REHEARSAL_BANNER)
                self.gpu = self.watch_gpus()
                self._stages()
                self.status.stage = self.ledger.data["status"]
                self.view.refresh(force=True)
        finally:
            self.caching.release()
            signal.signal(signal.SIGTERM, previous_term)
            lock.release()
        return self.ledger.data

    def _stages(self) -> None:
        """Every stage in order; how the run ended goes to run.json and the webhooks."""
        led = self.ledger
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
        except Stop as stop:
            led.set(status=stop.status, reason=stop.reason)
            self.notifier.send(stop.status, f"{stop.status}: {stop.reason}")
        except KeyboardInterrupt:
            led.set(status="stopped", reason="interrupted by the user")
            self.notifier.send("stopped", "stopped by the user")

    def verify(self) -> None:
        """Every training stage left a readable final LoRA: run.json's ``final`` lists them."""
        from kohyawan.lora.stamp import stamp_run_checkpoint

        self.status.stage = "verify"
        outputs = []
        for rec in self.ledger.data.get("stages", []):
            if not rec["name"].startswith("train"):
                continue
            path = rec.get("final")
            if not path or not Path(path).is_file():
                raise Stop("failed", f"{rec['name']}: the final LoRA file is missing ({path})")
            try:
                meta = stamp_run_checkpoint(self.ledger.data, path)  # absolute ss_* values from the ledger
            except Exception as exc:
                raise Stop("failed", f"{path} is not a readable safetensors file ({exc})") from None
            entry = next(c for c in self.ledger.data["checkpoints"] if c["path"] == path)
            outputs.append({"stage": rec["name"], "path": path, "step": rec.get("steps_done"),
                            "bytes": entry["bytes"], "sha256": entry["sha256"],
                            "rehearsal": meta.get("kohyawan.rehearsal") == "true"})
        self.ledger.set(final={**outputs[-1], "outputs": outputs})


def _term_as_interrupt(signum, frame):
    raise KeyboardInterrupt()
