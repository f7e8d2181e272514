"""Rehearsals: kohyawan's simulated trainer stands in for musubi-tuner and sparse stand-in files for the
models, so the whole pipeline runs without a GPU and without training. The only module of ``run/`` that
reaches into ``kohyawan.rehearse``, and only once a rehearsal was asked for. See docs/architecture.md.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

ACCELERATE_LAUNCH = ["-m", "accelerate.commands.launch"]
SIMULATED_LAUNCH = "kohyawan.rehearse.accelerate"


def use_simulator(opts) -> None:
    """Point the run's options at the simulated trainer checkout, run by this very python."""
    from kohyawan.rehearse.standin import trainer_dir

    opts.trainer_dir, opts.python = trainer_dir(), sys.executable


def virtual_gpu_gib() -> float:
    """The simulated trainer's GPU memory without --gpu-memory (KOHYAWAN_REHEARSE_GPU_GB, as it reads it)."""
    from kohyawan.rehearse import env

    return env.gpu_gb()


def virtual_ram_gib() -> float:
    """The simulated trainer's host RAM (KOHYAWAN_REHEARSE_RAM_GB, as it reads it)."""
    from kohyawan.rehearse import env

    return env.ram_gb()


def simulated_argv(argv: list[str]) -> list[str]:
    """The stage's command line with ``accelerate launch`` replaced by the simulation's launcher."""
    argv = list(argv)
    if argv[1:3] == ACCELERATE_LAUNCH:
        argv[2] = SIMULATED_LAUNCH
    return argv


def rehearsal_models(spec, runs_dir: Path):
    """Rehearsals need no model files: sparse stand-ins with the real headers (``fabricate``) are written
    for the ones not given, once per task, so model checks see exactly what real files would show."""
    from kohyawan.files import atomic, locks
    from kohyawan.modelfiles.standins import write_task_models

    given = spec.models
    missing = [r for r in ("dit", "dit_high_noise", "vae", "t5") if getattr(given, r) is None]
    if not missing:
        return spec
    folder = runs_dir / ".rehearsal-models" / spec.task
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / ".complete"
    # parallel rehearsals (a sweep, a batch) share this folder: one writes, the others wait for it
    with locks.FileLock(folder / ".lock", mode=0o666):
        if not marker.exists():
            files = write_task_models(folder, spec.task)
            atomic.write_text(marker, json.dumps({k: str(v) for k, v in files.items()}))
    files = json.loads(marker.read_text())
    fields = {r: Path(files[r]) for r in missing if r in files}
    return replace(spec, models=replace(given, **fields)) if fields else spec
