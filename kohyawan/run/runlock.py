"""One supervisor per run folder: a lock held while kohyawan babysits it, and the trainer's pid file.

The lock is an ``flock`` on ``.lock``: the kernel drops it when the holder dies, however it dies, so a
free lock with a live trainer group recorded in ``trainer.pid`` means an orphan.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from kohyawan.errors import WorkFailed
from kohyawan.run.supervise import group_alive


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = holder_pid(self.path.parent)
            raise WorkFailed(f"run {self.path.parent.name} is already being supervised"
                             + (f" by process {holder}" if holder else "") + "; never two trainers for one run")
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def is_locked(run_dir: Path) -> bool:
    path = Path(run_dir) / ".lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def holder_pid(run_dir: Path) -> int | None:
    try:
        return int((Path(run_dir) / ".lock").read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


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
