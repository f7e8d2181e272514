"""The registry's view of the LoRA tools: verify before export, header facts, metadata key names."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kohyawan.lora import metadata as md

META_VERSION = md.VERSION
META_TASK = md.TASK
META_EXPERT = md.EXPERT
META_PROFILE = md.PROFILE
META_RUN_ID = md.RUN_ID
META_DATASET_HASH = md.DATASET_HASH
META_DATASET_SIZE = md.DATASET_SIZE
META_REHEARSAL = md.REHEARSAL
META_NOTES = md.NOTES
# keys only the registry writes
META_HYPERPARAMETERS = "kohyawan.hyperparameters"  # JSON object
META_NAME = "kohyawan.name"                        # "<kind>/<client>/<name>"
META_STEP = "kohyawan.step"


@dataclass
class Verdict:
    ok: bool
    problems: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    loaded: int = 0


@dataclass
class Info:
    rank: int | None
    alpha: float | None
    dtype: str | None
    metadata: dict[str, str]
    bytes: int


def verify(path: Path, task: str) -> Verdict:
    from kohyawan.lora.verify import verify_file

    rep = verify_file(Path(path), task)
    return Verdict(ok=bool(rep.ok), problems=list(rep.problems), ignored=list(rep.ignored), loaded=int(rep.loaded))


def info(path: Path) -> Info:
    from kohyawan.lora.inspect import read_info

    i = read_info(Path(path))
    return Info(rank=i.rank, alpha=i.alpha, dtype=str(i.dtype) if i.dtype else None,
                metadata=dict(i.metadata), bytes=int(getattr(i, "bytes", 0) or Path(path).stat().st_size))
