"""A run's options: one definition, and the part of it that run.json keeps (``options``) so that
``kohyawan runs resume`` continues with what the run was started with.

Stored options are the fields marked ``stored``; ``to_document`` writes them in field order (run.json's
``options`` object) and ``resolve`` merges what a command was given with what was stored: a value that
was given (anything but None, so 0, False and "" included) wins over the stored one, which wins over
the default. See docs/architecture.md ("A run").
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from kohyawan.run.supervise import Timeouts


def _stored(default: Any = None) -> Any:
    """A field that run.json keeps under ``options``."""
    return field(default=default, metadata={"stored": True})


@dataclass
class RunOptions:
    runs_dir: Path
    name: str | None = None
    trainer_dir: Path | None = _stored()
    python: str = _stored("python")
    launcher: str = _stored("accelerate")
    accelerate_args: tuple[str, ...] = _stored(())
    gpus: str | None = _stored()
    max_attempts: int | None = _stored()
    notify: tuple[str, ...] = _stored(())
    rehearse: bool = _stored(False)
    gpu_memory_gb: float | None = _stored()
    start_rung: str = _stored("auto")  # "auto": the first rung the estimator says fits; "base": the profile's
    data_parallel: bool = _stored(False)  # one run on every GPU in --gpus (accelerate --multi_gpu)
    cache_dir: Path | None = _stored()  # the shared cache store; None: the run folder's own cache/ (older runs)
    # this invocation only
    recache: bool = False
    live: bool | None = None
    quiet: bool = False
    plain_interval_s: float = 30.0
    timeouts: Timeouts = field(default_factory=Timeouts)

    @property
    def processes(self) -> int:
        """Trainer processes: with --data-parallel one per GPU in --gpus, or in the CUDA_VISIBLE_DEVICES
        kohyawan inherited (a SLURM allocation); else one."""
        from kohyawan.run.gpuenv import device_count

        return device_count(self.gpus, os.environ) if self.data_parallel else 1

    @classmethod
    def stored_fields(cls) -> tuple[dataclasses.Field, ...]:
        return tuple(f for f in dataclasses.fields(cls) if f.metadata.get("stored"))

    def to_document(self) -> dict[str, Any]:
        """The stored options as JSON values (run.json's ``options``)."""
        return {f.name: _to_json(getattr(self, f.name)) for f in self.stored_fields()}

    @classmethod
    def resolve(cls, runs_dir: Path, given: Mapping[str, Any], stored: Mapping[str, Any] | None = None,
                **session: Any) -> "RunOptions":
        """Options from what a command was given (None: not given), else what run.json stored, else the
        defaults; ``session`` holds the options of this invocation only (never stored)."""
        stored = stored or {}
        values: dict[str, Any] = {}
        for f in cls.stored_fields():
            if given.get(f.name) is not None:
                values[f.name] = _from_json(f.name, given[f.name])
            elif stored.get(f.name) is not None:
                values[f.name] = _from_json(f.name, stored[f.name])
        return cls(runs_dir=runs_dir, name=given.get("name"), **values, **session)


def _to_json(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _from_json(name: str, value: Any) -> Any:
    if name in ("trainer_dir", "cache_dir"):
        return Path(value)
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value
