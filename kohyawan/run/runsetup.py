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
from kohyawan.run.runner import Run


def new_run(spec, request: dict, opts: RunOptions) -> Run:
    """Preflight and create the run folder; nothing is launched yet."""
    preflight.runs_dir_writable(opts.runs_dir)
    if opts.rehearse:
        rehearsal.use_simulator(opts)
        spec = rehearsal.rehearsal_models(spec, opts.runs_dir)
    else:
        preflight.trainer(opts.trainer_dir, opts.python, opts.launcher)
    run_id = opts.name or f"{spec.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = _new_run_dir(opts.runs_dir, run_id)
    _check_data_parallel(opts)
    plan = render.build_plan(spec, run_dir, trainer_dir=opts.trainer_dir, python=opts.python, launcher=opts.launcher,
                             processes=opts.processes)
    for warning in plan.warnings:
        console.warn(warning)
    preflight.dataset(Path(spec.dataset_dir), spec.dataset.get("caption_extension", ".txt"), warn=console.warn)
    run_dir.mkdir(parents=True, exist_ok=True)
    rank = min(spec.train.get("network_dim", 32), 4) if opts.rehearse else spec.train.get("network_dim", 32)
    outputs = sum(1 for s in plan.stages if s.name.startswith("train"))
    preflight.disk(run_dir, preflight.disk_needed(spec.task, spec.train, plan.steps.total_steps, plan.steps.epochs,
                                                  outputs, rank))
    led = Ledger.create(run_dir, run_id=run_id, profile=spec.profile, task=spec.task,
                        total_steps=plan.steps.total_steps, variant=spec.variant, expert=spec.expert,
                        rehearsal=opts.rehearse, request=request, options=opts.to_document())
    _record_dataset(led, spec)
    return Run(led, spec, opts)


def _new_run_dir(runs_dir: Path, run_id: str) -> Path:
    if not re.fullmatch(r"[\w.-]+", run_id):
        raise BadInput(f"run name {run_id!r}: use letters, digits, '.', '-' and '_'")
    run_dir = runs_dir / run_id
    if (run_dir / "run.json").exists():
        raise BadInput(f"run {run_id} already exists in {runs_dir}; continue it with 'kohyawan runs resume {run_id}'")
    return run_dir


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
    led = Ledger.load(run_dir)
    # an attempt left open was cut short with its supervisor (kohyawan killed): close it honestly
    for attempt in led.data.get("attempts", []):
        if attempt.get("outcome") is None:
            attempt.update(outcome="interrupted", ended=attempt.get("ended") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           reason="the supervisor died (kohyawan was killed) during this attempt")
    led.save()
    return Run(led, spec, opts)
