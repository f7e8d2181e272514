"""One supervisor per run folder: a lock held while kohyawan babysits it, and the trainer's pid file.

The lock is an ``flock`` on ``.lock``: the kernel drops it when the holder dies, however it dies, so a
free lock with a live trainer group recorded in ``trainer.pid`` means an orphan.
See docs/architecture.md ("A run").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kohyawan.errors import Busy
from kohyawan.files import locks
from kohyawan.run.supervise import group_alive

LOCK = ".lock"


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self._lock = locks.FileLock(self.path)

    @property
    def held(self) -> bool:
        return self._lock.held

    def acquire(self) -> None:
        """Take the run folder; a run another kohyawan holds is refused as bad usage (never two trainers)."""
        if not self._lock.try_acquire():
            self._lock.release()
            raise Busy(held_message(self.path.parent))
        self._lock.record_pid()

    def release(self) -> None:
        self._lock.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def held_message(run_dir: Path) -> str:
    holder = holder_pid(run_dir)
    return (f"run {Path(run_dir).name} is already being supervised" + (f" by process {holder}" if holder else "")
            + "; never two trainers for one run")


def is_locked(run_dir: Path) -> bool:
    return locks.is_held(Path(run_dir) / LOCK)


def holder_pid(run_dir: Path) -> int | None:
    return locks.recorded_pid(Path(run_dir) / LOCK)


def write_pid(run_dir: Path, **info) -> None:
    path = Path(run_dir) / "trainer.pid"
    tmp = path.with_name(".trainer.pid.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def read_pid(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / "trainer.pid").read_text())
    except (OSError, ValueError):
        return None


def clear_pid(run_dir: Path) -> None:
    try:
        os.unlink(Path(run_dir) / "trainer.pid")
    except OSError:
        pass


def orphan(run_dir: Path) -> int | None:
    """The process group of a trainer still running without its supervisor, if any."""
    info = read_pid(run_dir)
    if not info or is_locked(run_dir):
        return None
    pgid = info.get("pgid")
    return pgid if pgid and group_alive(pgid) else None
