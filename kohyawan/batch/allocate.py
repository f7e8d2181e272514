"""GPU allocation for local batches and sweeps (pure): one job per GPU, handed out lowest id first.

A "GPU" here is whatever string goes into the child's ``CUDA_VISIBLE_DEVICES``: an index ("0"), a UUID
("GPU-…"), a MIG id, or - for a job that trains on several GPUs with data parallelism - a group such as
"0,1". In rehearsal the ids are virtual: ``--gpus 0,1`` on a machine without GPUs gives two slots.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kohyawan.errors import BadInput

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._/-]*")


def parse_gpus(text: str | None, *, per_job: int = 1) -> list[str]:
    """``"0,1,2,3"`` -> slots. ``per_job`` > 1 groups consecutive ids: ``"0,1,2,3"``, 2 -> ["0,1", "2,3"].

    ``None`` or ``""`` means no GPU assignment (one slot, the child inherits the environment).
    """
    if text is None or not text.strip():
        return [""]
    ids = [p.strip() for p in text.split(",")]
    bad = [p for p in ids if not _ID.fullmatch(p)]
    if bad:
        raise BadInput(f"--gpus: {bad[0]!r} is not a GPU id (use indices like 0,1 or UUIDs)")
    dupes = sorted({p for p in ids if ids.count(p) > 1})
    if dupes:
        raise BadInput(f"--gpus: {', '.join(dupes)} listed twice (one job per GPU)")
    if per_job < 1:
        raise BadInput("GPUs per job must be 1 or more")
    if len(ids) % per_job:
        raise BadInput(f"--gpus: {len(ids)} GPU(s) do not divide into groups of {per_job}")
    return [",".join(ids[i:i + per_job]) for i in range(0, len(ids), per_job)]


@dataclass
class Allocator:
    """Free and busy slots. ``take`` never hands one slot to two jobs; ``give_back`` frees it."""

    slots: list[str]
    busy: dict[str, str] = field(default_factory=dict)     # slot -> job key

    def free(self) -> list[str]:
        return [s for s in self.slots if s not in self.busy]

    def take(self, key: str, prefer: str | None = None) -> str | None:
        free = self.free()
        if not free:
            return None
        slot = prefer if prefer in free else free[0]
        self.busy[slot] = key
        return slot

    def hold(self, slot: str, key: str) -> None:
        """Mark a slot busy for a job already running there (adopted after a restart)."""
        if slot in self.busy and self.busy[slot] != key:
            raise ValueError(f"slot {slot!r} already holds {self.busy[slot]}")
        self.busy[slot] = key

    def give_back(self, slot: str) -> None:
        self.busy.pop(slot, None)
