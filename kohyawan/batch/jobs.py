"""One job -> the command lines that do it (pure).

The CLI is the contract: a job is exactly ``kohyawan run ...`` (and ``kohyawan runs resume`` to continue an
interrupted one, ``kohyawan export`` to publish it), the same lines a user would type and the same lines a
SLURM array task runs. GPUs are given through ``CUDA_VISIBLE_DEVICES`` in the child's environment, never
``--gpus``: ``runs resume`` would otherwise pin a resumed run to the GPU it first had.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from kohyawan.batch.manifest import Job, Manifest

_MODEL_FLAGS = {"dit": "--dit", "dit_high_noise": "--dit-high-noise", "vae": "--vae", "t5": "--t5"}
BATCH_STORE = ".kohyawan-cache"       # a batch's default cache store, beside its manifest


@dataclass(frozen=True)
class Launch:
    """Everything that does not depend on the job: where runs go, which trainer, rehearsal or not."""

    runs_dir: Path
    rehearse: bool = False
    trainer: Path | None = None
    python: str | None = None          # the trainer environment's python
    notify: tuple[str, ...] = ()
    kohyawan: tuple[str, ...] = ()     # how to call kohyawan; default: this interpreter's ``-m kohyawan``
    cache_dir: Path | None = None      # the cache store every job shares (None: each run's default)

    @classmethod
    def from_manifest(cls, manifest: Manifest, runs_dir: Path, kohyawan: Sequence[str] = ()) -> "Launch":
        """A batch's jobs share one cache store: the manifest's ``cache_dir``, else one beside the manifest,
        so next month's batch (a new batch folder, a new runs folder) caches only what changed."""
        return cls(runs_dir=runs_dir, rehearse=manifest.rehearse, trainer=manifest.trainer,
                   python=manifest.python, notify=manifest.notify, kohyawan=tuple(kohyawan),
                   cache_dir=manifest.cache_dir or manifest.path.parent / BATCH_STORE)

    def base(self) -> list[str]:
        return list(self.kohyawan) or [sys.executable, "-m", "kohyawan"]


def run_name(job: Job, attempt: int) -> str:
    """A fresh run folder per batch attempt: a retried job never overwrites the failed run's evidence."""
    return job.run_name if attempt <= 1 else f"{job.run_name}.r{attempt}"


def fresh_try(job: Job, runs_dir: Path, after: int) -> int:
    """The next try number whose run folder is free: a runs folder shared between batches (a retrain next
    month) may already hold ``client__name`` from an earlier batch, and ``kohyawan run`` never reuses one."""
    n = after + 1
    while (Path(runs_dir) / run_name(job, n) / "run.json").exists():
        n += 1
    return n


def run_argv(job: Job, launch: Launch, attempt: int = 1) -> list[str]:
    argv = launch.base() + ["run", "--profile", job.profile, "--dataset", str(job.dataset), "--task", job.task,
                            "--expert", job.expert, "--runs-dir", str(launch.runs_dir),
                            "--name", run_name(job, attempt), "--plain", "--json"]
    if launch.cache_dir is not None:
        argv += ["--cache-dir", str(launch.cache_dir)]
    if job.variant:
        argv += ["--variant", job.variant]
    for role, path in sorted(job.models.items()):
        argv += [_MODEL_FLAGS[role], path]
    for item in job.sets:
        argv += ["--set", item]
    if launch.rehearse:
        argv.append("--rehearse")
        if job.gpu_memory:
            argv += ["--gpu-memory", _num(job.gpu_memory)]
    else:
        if launch.trainer:
            argv += ["--trainer-dir", str(launch.trainer)]
        if launch.python:
            argv += ["--python", launch.python]
    if job.max_attempts:
        argv += ["--max-attempts", str(job.max_attempts)]
    for url in launch.notify:
        argv += ["--notify", url]
    return argv


def resume_argv(run_dir: Path, launch: Launch) -> list[str]:
    return launch.base() + ["runs", "resume", str(run_dir), "--plain", "--json"]


def export_argv(job: Job, run_dir: Path, launch: Launch, registry: Path | None, notes: str | None) -> list[str]:
    argv = launch.base() + ["export", str(run_dir), "--name", job.name, "--kind", job.kind, "--client", job.client,
                            "--checkpoint", job.checkpoint, "--json"]
    if job.dtype:
        argv += ["--dtype", job.dtype]
    if registry is not None:
        argv += ["--registry", str(registry)]
    if notes:
        argv += ["--notes", notes]
    return argv


def child_env(base: Mapping[str, str], job: Job, gpu: str | None) -> dict[str, str]:
    env = dict(base)
    env.update(job.env)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    # A batch's children are not on a terminal: no live panels or colour codes in their logs.
    env.setdefault("NO_COLOR", "1")
    return env


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
