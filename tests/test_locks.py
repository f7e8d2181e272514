"""files.locks: exclusive flock taken with or without waiting, the holder probed and named, across real processes."""

import os
import time

import pytest

from kohyawan.files import locks
from runtime_helpers import holder, release

HOLD = ("import sys, time; from pathlib import Path; from kohyawan.files import locks\n"
        "lock = locks.FileLock(Path(sys.argv[1]))\n"
        "assert lock.try_acquire()\n"
        "if sys.argv[2] == 'pid':\n    lock.record_pid()\n"
        "print('held', flush=True)\n"
        "sys.stdin.readline()\n")


def _holder(path, record="pid"):
    return holder(HOLD, path, record)


def _let_go(proc):
    assert release(proc) == 0


def test_a_missing_or_free_lock_has_no_holder(tmp_path):
    path = tmp_path / "x.lock"
    assert not locks.is_held(path) and locks.holder(path) is None
    with locks.FileLock(path):
        pass
    assert path.exists() and not locks.is_held(path) and locks.holder(path) is None


def test_another_process_holding_the_lock_is_found_with_its_pid(tmp_path):
    path = tmp_path / "x.lock"
    proc = _holder(path)
    try:
        assert locks.is_held(path)
        assert locks.holder(path) == proc.pid == locks.recorded_pid(path)
        mine = locks.FileLock(path)
        assert mine.try_acquire() is False and mine.recorded() == str(proc.pid)
        mine.release()
    finally:
        _let_go(proc)
    # the holder is gone: the kernel dropped its lock, the pid it wrote stays behind
    assert not locks.is_held(path) and locks.holder(path) is None and locks.recorded_pid(path) == proc.pid
    mine = locks.FileLock(path)
    assert mine.try_acquire()
    mine.record_pid()
    assert locks.recorded_pid(path) == os.getpid()
    mine.release()


def test_a_holder_that_wrote_no_pid_is_minus_one(tmp_path):
    path = tmp_path / "x.lock"
    proc = _holder(path, record="none")
    try:
        assert locks.holder(path) == -1
    finally:
        _let_go(proc)


def test_waiting_with_a_timeout_tells_once_then_gives_up(tmp_path):
    path = tmp_path / "x.lock"
    proc = _holder(path)
    told = []
    try:
        lock = locks.FileLock(path)
        t0 = time.monotonic()
        assert lock.acquire(0.3, on_wait=lambda: told.append(1)) is False
        assert time.monotonic() - t0 >= 0.3 and told == [1]
        lock.release()
    finally:
        _let_go(proc)
    lock = locks.FileLock(path)
    assert lock.acquire(5.0, on_wait=lambda: told.append(2)) is True and told == [1]
    lock.release()


def test_a_blocking_acquire_waits_for_the_holder(tmp_path):
    import threading

    path = tmp_path / "x.lock"
    proc = _holder(path)
    threading.Timer(0.5, _let_go, (proc,)).start()
    t0 = time.monotonic()
    with locks.FileLock(path) as lock:
        assert lock.held and time.monotonic() - t0 >= 0.4


def test_a_prepare_into_a_folder_being_written_is_refused(tmp_path):
    from kohyawan.dataset import provenance
    from kohyawan.dataset.layout import STATE
    from kohyawan.errors import DatasetError

    proc = _holder(tmp_path / STATE / provenance.LOCK)
    try:
        with pytest.raises(DatasetError, match="another `kohyawan dataset prepare` is writing to"):
            with provenance.locked(tmp_path):
                pass
    finally:
        _let_go(proc)
    with provenance.locked(tmp_path):
        assert locks.is_held(tmp_path / STATE / provenance.LOCK)  # a probe opens its own file description
    assert not locks.is_held(tmp_path / STATE / provenance.LOCK)
