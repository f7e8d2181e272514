"""Setting a run up: a new run folder after its preflight (``new_run``), or an existing one to continue
(``load_run``); nothing is launched yet. See docs/architecture.md ("A run").
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from kohyawan import console
from kohyawan.config import render
from kohyawan.dataset import inventory
from kohyawan.errors import BadInput
from kohyawan.run import preflight, rehearsal
from kohyawan.run.ledger import Ledger
from kohyawan.run.options import RunOptions
from kohyawan.run.runlock import RunLock
from kohyawan.run.runner import Run


def trainer_ready(spec, opts: RunOptions):
    """The checks before anything is written: the runs folder, and the trainer (a rehearsal: the simulated one
    and its stand-in model files, which the returned spec names)."""
    preflight.runs_dir_writable(opts.runs_dir)
    if opts.rehearse:
        rehearsal.use_simulator(opts)
        return rehearsal.rehearsal_models(spec, opts.runs_dir)
    preflight.trainer(opts.trainer_dir, opts.python, opts.launcher)
    return spec


def new_run(spec, request: dict, opts: RunOptions) -> Run:
    """Preflight and create the run folder; nothing is launched yet."""
    spec = trainer_ready(spec, opts)
    run_id = opts.name or f"{spec.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = _new_run_dir(opts.runs_dir, run_id)
    _check_data_parallel(opts)
    plan = render.build_plan(spec, run_dir, trainer_dir=opts.trainer_dir, python=opts.python, launcher=opts.launcher,
                             processes=opts.processes, cache_store=opts.cache_dir)
    for warning in plan.warnings:
        console.warn(warning)
    preflight.dataset(Path(spec.dataset_dir), spec.dataset.get("caption_extension", ".txt"), warn=console.warn)
    rank = min(spec.train.get("network_dim", 32), 4) if opts.rehearse else spec.train.get("network_dim", 32)
    outputs = sum(1 for s in plan.stages if s.name.startswith("train"))
    preflight.disk(opts.runs_dir, preflight.disk_needed(spec.task, spec.train, plan.steps.total_steps,
                                                        plan.steps.epochs, outputs, rank))
    lock = _claim(run_dir)
    try:
        led = Ledger.create(run_dir, run_id=run_id, profile=spec.profile, task=spec.task,
                            total_steps=plan.steps.total_steps, variant=spec.variant, expert=spec.expert,
                            rehearsal=opts.rehearse, request=request, options=opts.to_document())
        _record_dataset(led, spec)
    except BaseException:
        lock.release()
        raise
    return Run(led, spec, opts, lock)


def _new_run_dir(runs_dir: Path, run_id: str) -> Path:
    if not re.fullmatch(r"[\w.-]+", run_id):
        raise BadInput(f"run name {run_id!r}: use letters, digits, '.', '-' and '_'")
    run_dir = runs_dir / run_id
    if (run_dir / "run.json").exists():
        raise BadInput(_exists(run_dir))
    return run_dir


def _exists(run_dir: Path) -> str:
    return (f"run {run_dir.name} already exists in {run_dir.parent}; continue it with "
            f"'kohyawan runs resume {run_dir.name}'")


def _claim(run_dir: Path) -> RunLock:
    """The new run folder, taken under its lock before run.json is written: of two runs of one name started
    together, the second is refused (bad usage) and writes nothing."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    lock.acquire()
    if (run_dir / "run.json").exists():
        lock.release()
        raise BadInput(_exists(run_dir))
    return lock


def _check_data_parallel(opts: RunOptions) -> None:
    if opts.data_parallel and opts.processes < 2:
        raise BadInput("--data-parallel trains one run on several GPUs: give them with --gpus, e.g. --gpus 0,1 "
                       "(or start kohyawan with CUDA_VISIBLE_DEVICES naming them)")
    if opts.data_parallel and opts.launcher != "accelerate":
        raise BadInput("--data-parallel needs the accelerate launcher (accelerate launch --multi_gpu)")


def _record_dataset(led: Ledger, spec) -> None:
    """What the run trained on, for the registry's notes ("retrained on 50 new images")."""
    found = inventory.fingerprint(Path(spec.dataset_dir))
    inv = inventory.scan(Path(spec.dataset_dir), spec.dataset.get("caption_extension", ".txt"))
    led.data.update(dataset_hash=found[0] if found else None, dataset_size=inv.samples,
                    dataset_images=inv.images, dataset_clips=inv.clips)
    led.save()


def load_run(run_dir: Path, spec, opts: RunOptions) -> Run:
    """Reopen a run folder under its lock (a run another kohyawan supervises is refused) and close what its
    dead supervisor left open."""
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        return Run(_reopen(run_dir), spec, opts, lock)
    except BaseException:
        lock.release()
        raise


def _reopen(run_dir: Path) -> Ledger:
    led = Ledger.load(run_dir)
    led.absolutize()  # an older run.json may hold paths relative to where it was started
    # an attempt left open was cut short with its supervisor (kohyawan killed): close it honestly, at the
    # last step its metrics and saves show
    for attempt in led.data.get("attempts", []):
        if attempt.get("outcome") is None:
            first = attempt["steps"][0]
            attempt.update(outcome="interrupted", ended=attempt.get("ended") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           reason="the supervisor died (kohyawan was killed) during this attempt",
                           steps=[first, max(first, led.last_step(attempt["n"]) or first)])
    led.save()
    return led
