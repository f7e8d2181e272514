"""Who may touch a cache folder: runs training from it share it, a run writing into it holds it alone.

Each folder has a ``.lock`` (``files/locks.py``, flock): a run holds it shared from the moment its caches
are found complete until its attempt ends (training reads the cache files all along, so nobody may remove
or rewrite them meanwhile), and exclusively while it tidies the folder and runs a caching script. A run
never waits for a lock while holding another: it takes all the folders of a stage at once or none, and
retries. While it waits, it keeps asking two questions in turn: can I write (all exclusive), or is the
work already done (all shared, and the stage's survey complete)? So a second run of the same dataset
waits only while the first one writes, then trains beside it, and a run that must change a folder waits
for the runs training from it. See docs/architecture.md ("Caches").
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable

from kohyawan.files.locks import FileLock

LOCK_NAME = ".lock"
SHARED, EXCLUSIVE = "shared", "exclusive"


class Leases:
    """The cache folders one run holds, and how (shared or exclusive)."""

    def __init__(self, *, poll_s: float = 0.05, max_poll_s: float = 2.0):
        self.held: dict[Path, FileLock] = {}
        self.poll_s, self.max_poll_s = poll_s, max_poll_s

    def release_all(self) -> None:
        for lock in self.held.values():
            lock.release()
        self.held = {}

    def try_all(self, folders: Iterable[Path], *, shared: bool) -> bool:
        """Take every folder's lock now, or none of them (False)."""
        self.release_all()
        for folder in sorted(set(Path(f) for f in folders)):
            lock = FileLock(folder / LOCK_NAME, mode=0o666)
            if not (lock.try_acquire(shared=shared) and _still_there(lock)):
                lock.release()
                self.release_all()
                return False
            self.held[folder] = lock
        return True

    def settle(self, folders: list[Path], done: Callable[[], bool], on_wait: Callable[[], None]) -> str:
        """Wait until either every folder is held shared and ``done()`` says there is nothing to write
        (returns SHARED), or every folder is held exclusively (returns EXCLUSIVE)."""
        delay, told = self.poll_s, False
        while True:
            if self.try_all(folders, shared=True):
                if done():
                    return SHARED
                self.release_all()
            if self.try_all(folders, shared=False):
                return EXCLUSIVE
            if not told:
                on_wait()
                told = True
            time.sleep(delay)
            delay = min(self.max_poll_s, delay * 2)


def _still_there(lock: FileLock) -> bool:
    """The lock file we hold is still the one at its path (``cache prune`` may have moved the folder away
    between our open and our flock): else the lock guards nothing."""
    try:
        mine, there = os.fstat(lock.fd), os.stat(lock.path)
    except OSError:
        return False
    return (mine.st_ino, mine.st_dev) == (there.st_ino, there.st_dev)
