"""Setting a run up: the run folder and its preflight, the per-attempt training config, rehearsal stand-ins."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from kohyawan.dataset import inventory
from kohyawan.run import preflight
from kohyawan.errors import BadInput
from kohyawan.run.ledger import Ledger
from kohyawan.config.tomlfmt import toml_value


def rehearse_trainer() -> Path:
    from kohyawan.rehearse import trainer_dir

    return trainer_dir()


_EPOCHS_LINE = re.compile(r"^\s*max_train_epochs\s*=.*$\n?", re.M)


def attempt_config(text: str, overrides: dict[str, Any]) -> str:
    """The rendered training TOML with this attempt's settings: ``max_train_epochs`` removed (it would
    override ``max_train_steps``) and a last table the trainer flattens over the earlier ones."""
    from kohyawan.files import toml

    text = _EPOCHS_LINE.sub("", text)
    for key in overrides:  # one value per key: the trainer would take the later one, a checker flags both
        text = re.sub(rf"(?m)^{re.escape(key)} = .*\n", "", text)
    lines = [text.rstrip("\n"), "", "# kohyawan: this attempt's output name, remaining steps, resume point and "
             "LR continuation", "[kohyawan_attempt]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in overrides.items()]
    out = "\n".join(lines) + "\n"
    parsed = toml.loads(out)
    flat = {}
    for body in parsed.values():
        if isinstance(body, dict):
            flat.update(body)
    assert all(flat[k] == v for k, v in overrides.items()) and "max_train_epochs" not in flat
    return out


def new_run(spec, request: dict, opts):
    """Preflight and create the run folder (a ``runner.Run``); nothing is launched yet."""
    from kohyawan.run.runner import Run

    preflight.runs_dir_writable(opts.runs_dir)
    if opts.rehearse:
        opts.trainer_dir, opts.python = rehearse_trainer(), sys.executable
        spec = rehearsal_models(spec, opts.runs_dir)
    else:
        preflight.trainer(opts.trainer_dir, opts.python, opts.launcher)
    run_id = opts.name or f"{spec.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not re.fullmatch(r"[\w.-]+", run_id):
        raise BadInput(f"run name {run_id!r}: use letters, digits, '.', '-' and '_'")
    run_dir = opts.runs_dir / run_id
    if (run_dir / "run.json").exists():
        raise BadInput(f"run {run_id} already exists in {opts.runs_dir}; continue it with 'kohyawan runs resume {run_id}'")
    from kohyawan.config import render

    if opts.data_parallel and opts.processes < 2:
        raise BadInput("--data-parallel trains one run on several GPUs: give them with --gpus, e.g. --gpus 0,1")
    if opts.data_parallel and opts.launcher != "accelerate":
        raise BadInput("--data-parallel needs the accelerate launcher (accelerate launch --multi_gpu)")
    plan = render.build_plan(spec, run_dir, trainer_dir=opts.trainer_dir, python=opts.python, launcher=opts.launcher,
                             processes=opts.processes)
    from kohyawan import console

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
                        rehearsal=opts.rehearse, request=request, options=_options_doc(opts))
    # what the run trained on, for the registry's notes ("retrained on 50 new images")
    found = inventory.fingerprint(Path(spec.dataset_dir))
    inv = inventory.scan(Path(spec.dataset_dir), spec.dataset.get("caption_extension", ".txt"))
    led.data.update(dataset_hash=found[0] if found else None, dataset_size=inv.samples,
                    dataset_images=inv.images, dataset_clips=inv.clips)
    led.save()
    return Run(led, spec, opts)


def _options_doc(opts) -> dict:
    return {"trainer_dir": str(opts.trainer_dir) if opts.trainer_dir else None, "python": opts.python,
            "launcher": opts.launcher, "accelerate_args": list(opts.accelerate_args), "gpus": opts.gpus,
            "max_attempts": opts.max_attempts, "notify": list(opts.notify), "rehearse": opts.rehearse,
            "gpu_memory_gb": opts.gpu_memory_gb, "start_rung": opts.start_rung,
            "data_parallel": opts.data_parallel}


def rehearsal_models(spec, runs_dir: Path):
    """Rehearsals need no model files: sparse stand-ins with the real headers (``fabricate``) are written
    for the ones not given, once per task, so model checks see exactly what real files would show."""
    from dataclasses import replace

    from kohyawan.modelfiles.standins import write_task_models

    given = spec.models
    missing = [r for r in ("dit", "dit_high_noise", "vae", "t5") if getattr(given, r) is None]
    if not missing:
        return spec
    import fcntl

    from kohyawan.files import atomic

    folder = runs_dir / ".rehearsal-models" / spec.task
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / ".complete"
    # parallel rehearsals (a sweep, a batch) share this folder: one writes, the others wait for it
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            files = write_task_models(folder, spec.task)
            atomic.write_text(marker, json.dumps({k: str(v) for k, v in files.items()}))
    files = json.loads(marker.read_text())
    fields = {r: Path(files[r]) for r in missing if r in files}
    return replace(spec, models=replace(given, **fields)) if fields else spec


def load_run(run_dir: Path, spec, opts):
    from kohyawan.run.runner import Run

    led = Ledger.load(run_dir)
    # an attempt left open was cut short with its supervisor (kohyawan killed): close it honestly
    for attempt in led.data.get("attempts", []):
        if attempt.get("outcome") is None:
            attempt.update(outcome="interrupted", ended=attempt.get("ended") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           reason="the supervisor died (kohyawan was killed) during this attempt")
    led.save()
    return Run(led, spec, opts)
