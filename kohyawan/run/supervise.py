"""One attempt: start the trainer in its own process group, tee its output, parse it, stop it cleanly.

The trainer runs under ``kohyawan.run.guard`` (the group leader), which kills the group if kohyawan dies.
Output (stdout and stderr merged, so their order is kept) is appended raw to ``console.log`` and split
on ``\\r`` and ``\\n`` into events. One thread, one ``select`` loop: at 20 progress updates a second
this costs well under 1 % of a core (benchmarks/supervisor_bench.py).
See docs/architecture.md ("A run").
"""

from __future__ import annotations

import collections
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from kohyawan.trainer.musubi_log import Event, LineSplitter, parse_line

TAIL_LINES = 300


@dataclass
class Timeouts:
    sigint_s: float = 30.0   # after SIGINT, before SIGTERM (a trainer may be mid-save)
    sigterm_s: float = 15.0  # after SIGTERM, before SIGKILL
    orphan_grace_s: float = 5.0  # the guard's SIGTERM -> SIGKILL delay once kohyawan is gone


@dataclass
class AttemptResult:
    exit_code: int | None            # the trainer's status; negative: killed by that signal
    stopped_for: str | None          # why kohyawan stopped it ("interrupted", "stall", "nan", ...), else None
    stop_reason: str | None
    tail: list[str]
    duration_s: float
    lines: int = 0
    escalated: list[str] = field(default_factory=list)  # signals that had to be sent


class Supervisor:
    def __init__(self, argv: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None,
                 cwd: str | None = None, on_event: Callable[[Event], None] | None = None,
                 on_tick: Callable[["Supervisor", float], None] | None = None, tick_s: float = 1.0,
                 timeouts: Timeouts | None = None, on_line: Callable[[str], None] | None = None):
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.cwd = cwd
        self.on_event = on_event or (lambda ev: None)
        self.on_tick = on_tick or (lambda sup, now: None)
        self.on_line = on_line
        self.tick_s = tick_s
        self.timeouts = timeouts or Timeouts()
        self.proc: subprocess.Popen | None = None
        self._stop: tuple[str, str] | None = None
        self._stop_phase = 0
        self._stop_at = 0.0
        self.escalated: list[str] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def request_stop(self, why: str, reason: str) -> None:
        """Stop the trainer: SIGINT to its group now, SIGTERM and SIGKILL later if it lingers."""
        if self._stop is None:
            self._stop = (why, reason)

    def start(self) -> None:
        guard = [sys.executable, "-m", "kohyawan.run.guard", str(os.getpid()), str(self.timeouts.orphan_grace_s), "--"]
        env = dict(self.env)
        # the guard imports kohyawan: make sure it finds this very copy, whatever the trainer's paths are
        pkg_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(guard + self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.cwd, start_new_session=True)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _advance_stop(self, now: float) -> None:
        if self._stop is None or self.proc.poll() is not None:
            return
        if self._stop_phase == 0:
            self._signal(signal.SIGINT)
            self._stop_phase, self._stop_at = 1, now + self.timeouts.sigint_s
        elif self._stop_phase == 1 and now >= self._stop_at:
            self.escalated.append("SIGTERM")
            self._signal(signal.SIGTERM)
            self._stop_phase, self._stop_at = 2, now + self.timeouts.sigterm_s
        elif self._stop_phase == 2 and now >= self._stop_at:
            self.escalated.append("SIGKILL")
            self._signal(signal.SIGKILL)
            self._stop_phase = 3

    def run(self) -> AttemptResult:
        if self.proc is None:
            self.start()
        try:
            return self._run()
        except BaseException:
            # a bug in a callback must not leave a trainer running unattended
            self._signal(signal.SIGKILL)
            raise

    def _run(self) -> AttemptResult:
        t0 = time.monotonic()
        out = _Output(self.proc.stdout.fileno(), self._line)
        next_tick = t0
        exited = 0.0
        with open(self.log_path, "ab") as log:
            while not out.eof or self.proc.poll() is None:
                try:
                    now = time.monotonic()
                    if now >= next_tick:
                        log.flush()
                        self.on_tick(self, now)
                        next_tick = now + self.tick_s
                    self._advance_stop(now)
                    if out.eof:
                        self._wait_for_exit()
                        continue
                    exited = self._kill_pipe_holders(now, exited)
                    out.read(log, timeout=max(0.0, min(next_tick - now, 0.5)))
                except KeyboardInterrupt:
                    self._interrupted()
            out.close()
        self.proc.stdout.close()
        # a grandchild that ignored everything must not outlive the attempt
        self._signal(signal.SIGKILL)
        why, reason = self._stop if self._stop else (None, None)
        return AttemptResult(self.proc.returncode, why, reason, list(out.tail), time.monotonic() - t0, out.lines,
                             list(self.escalated))

    def _wait_for_exit(self) -> None:
        """Output closed but the guard still runs: nothing left to read, just wait."""
        try:
            self.proc.wait(timeout=min(0.2, self.tick_s))
        except subprocess.TimeoutExpired:
            pass

    def _kill_pipe_holders(self, now: float, exited: float) -> float:
        """The guard is gone but something still holds the pipe open: kill the group after 5 s."""
        if self.proc.poll() is None:
            return exited
        exited = exited or now
        if now - exited > 5.0:
            self._signal(signal.SIGKILL)
        return exited

    def _interrupted(self) -> None:
        if self._stop is not None and self._stop[0] == "interrupted" and self._stop_phase == 1:
            self._stop_at = 0.0  # a second Ctrl-C: escalate now
        self.request_stop("interrupted", "stopped by the user (Ctrl-C or kohyawan runs stop)")

    def _line(self, line: str, tail) -> None:
        tail.append(line)
        if self.on_line is not None:
            self.on_line(line)
        for ev in parse_line(line):
            self.on_event(ev)


class _Output:
    """The trainer's merged output: read without blocking, appended raw to the log, split into lines."""

    def __init__(self, fd: int, on_line: Callable[[str, collections.deque], None]):
        self.fd, self.on_line = fd, on_line
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.splitter = LineSplitter()
        self.lines = 0
        self.eof = False
        os.set_blocking(fd, False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(fd, selectors.EVENT_READ)

    def read(self, log, timeout: float) -> None:
        for _key, _ in self.sel.select(timeout=timeout):
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            if not data:
                self.eof = True
                return
            log.write(data)
            self._lines(self.splitter.feed(data))

    def close(self) -> None:
        """The last, unterminated line counts too."""
        self._lines(self.splitter.flush())
        self.sel.close()

    def _lines(self, lines) -> None:
        for line in lines:
            self.lines += 1
            self.on_line(line, self.tail)


def group_alive(pgid: int) -> bool:
    """A live (non-zombie) process is in the group. Zombies count as gone: an orphan's dead guard may
    wait forever for a reaper in a container whose init does not reap."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    import psutil

    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return False


def kill_group(pgid: int, grace_s: float = 10.0) -> bool:
    """Stop an orphaned trainer group found by ``runs resume``/``runs stop``: SIGINT, SIGTERM, SIGKILL."""
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGTERM, grace_s / 2), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return True
            time.sleep(0.1)
    return not group_alive(pgid)
