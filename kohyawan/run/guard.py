"""The trainer's guard: a tiny process between kohyawan and the trainer (``python -m kohyawan.run.guard``).

It leads the trainer's process group. If kohyawan dies, even by SIGKILL, the kernel tells the guard
(``PR_SET_PDEATHSIG``; a once-a-second parent check covers systems without it) and the guard stops
the whole group: SIGTERM, then SIGKILL after a grace period. Without it an ``accelerate launch`` tree
would keep a GPU busy for hours with nobody watching. Signals sent to the group (SIGINT on a clean
stop) reach the trainer directly; the guard only waits, then exits the way its child did.
Standard library only: it must start fast and never import anything heavy.
See docs/architecture.md ("A run").
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1


class _ParentGone(Exception):
    pass


def _on_parent_death(signum, frame):
    raise _ParentGone()


def _arm(parent: int) -> None:
    signal.signal(signal.SIGUSR1, _on_parent_death)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGUSR1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the parent poll below still works
    if os.getppid() != parent:  # the parent died before prctl took effect
        raise _ParentGone()


def _stop_group(child: subprocess.Popen, grace: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pgid = os.getpgrp()
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)  # takes the guard too, and any grandchild that ignored SIGTERM


def main(argv: list[str]) -> int:
    parent, grace = int(argv[0]), float(argv[1])
    cmd = argv[3:] if argv[2] == "--" else argv[2:]
    # SIGINT/SIGTERM sent to the group are for the trainer; the guard outlives it to report its status
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = None
    try:
        _arm(parent)
        try:
            child = subprocess.Popen(cmd, preexec_fn=_child_defaults)
        except OSError as exc:
            print(f"kohyawan: cannot start the trainer: {exc}", file=sys.stderr, flush=True)
            return 127
        while True:
            try:
                rc = child.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if os.getppid() != parent:
                    raise _ParentGone()
    except _ParentGone:
        print("kohyawan: the supervising process died; stopping the trainer", file=sys.stderr, flush=True)
        if child is not None:
            _stop_group(child, grace)
        return 143
    if rc < 0:  # die the way the trainer died, so the supervisor sees the same signal
        signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    return rc


def _child_defaults() -> None:
    # the trainer must react to SIGINT/SIGTERM normally even though the guard ignores them
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
