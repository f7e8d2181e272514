"""``flock`` locks on a file, exclusive or shared: take one with or without waiting, record the holder's
pid, probe whether a holder exists and read its pid, release.

flock is advisory and the kernel drops it when its holder dies, however it dies: a lock file left behind
by a killed process is free again, so a free lock with a pid still written in it means a dead holder.
The run folder's lock, the batch folder's lock, the dataset writer's and the registry's lock and the
rehearsal stand-in models' lock all use this module, and so do the cache store's folders, the one user of
shared locks: runs that train from a cache folder share it, a run that writes into it holds it alone
(see docs/architecture.md).
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Callable

_HELD_ELSEWHERE = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
_PID_BYTES = 32


class FileLock:
    """One lock file. ``open`` creates it (errors from the file system propagate as they are), then
    ``try_acquire``/``acquire`` take the lock, exclusive unless ``shared``; ``release`` (or leaving the
    ``with``) drops it."""

    def __init__(self, path: Path, mode: int = 0o644):
        self.path = Path(path)
        self.mode = mode
        self.fd: int | None = None
        self.held = False

    def open(self) -> "FileLock":
        if self.fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, self.mode)
        return self

    def try_acquire(self, *, shared: bool = False) -> bool:
        """Take the lock now; False when another process holds it (exclusively, or at all when asking for
        it exclusively); other OSErrors propagate."""
        self.open()
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _HELD_ELSEWHERE:
                return False
            raise
        self.held = True
        return True

    def acquire(self, timeout: float | None = None, *, on_wait: Callable[[], None] | None = None,
                poll_s: float = 0.05, shared: bool = False) -> bool:
        """Wait for the lock: without a timeout until it is free, else at most ``timeout`` seconds
        (False when it stayed held). ``on_wait`` is called once, when the lock is first found held."""
        if timeout is None:
            if on_wait is not None and not self.try_acquire(shared=shared):
                on_wait()
            self.open()
            fcntl.flock(self.fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            self.held = True
            return True
        deadline = time.monotonic() + timeout
        told = False
        while not self.try_acquire(shared=shared):
            if time.monotonic() > deadline:
                return False
            if not told and on_wait is not None:
                on_wait()
            told = True
            time.sleep(poll_s)
        return True

    def record_pid(self) -> None:
        """Write this process's pid into the lock file (what ``holder`` reads)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def recorded(self) -> str:
        """What the lock file says about its holder (read through the open file, so even while held)."""
        return os.pread(self.open().fd, _PID_BYTES, 0).decode(errors="replace").strip()

    def release(self) -> None:
        """Drop the lock and close the file (closing alone would also drop it)."""
        if self.fd is None:
            return
        if self.held:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd, self.held = None, False

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def is_held(path: Path) -> bool:
    """Another process holds the lock on ``path`` (a missing file is a free lock). The probe takes a
    shared lock for an instant, so two probes at once never see each other as a holder."""
    return _refused(path, fcntl.LOCK_SH)


def _refused(path: Path, mode: int) -> bool:
    """Whether a non-blocking flock of ``mode`` on ``path`` is refused right now (taken and let go at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def recorded_pid(path: Path) -> int | None:
    """The pid written in the lock file, or None when there is none (held or not)."""
    try:
        text = Path(path).read_text(errors="replace").strip()
    except OSError:
        return None
    return int(text) or None if text.isdigit() else None


def holder(path: Path) -> int | None:
    """None when the lock is free; else the holder's recorded pid, or -1 when it wrote none."""
    if not is_held(path):
        return None
    return recorded_pid(path) or -1


def in_use(path: Path) -> bool:
    """Any process holds the lock on ``path``, shared or exclusive (a missing file is a free lock). The
    probe asks for it exclusively for an instant, so unlike ``is_held`` it sees shared holders, and two of
    these probes at the same moment may see each other: use it for reports, never to decide alone."""
    return _refused(path, fcntl.LOCK_EX)
