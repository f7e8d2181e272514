"""The local loop: start pending jobs on free GPUs as child processes, record what happened, export.

Each job is a real ``kohyawan run`` process (``runs resume`` when it was interrupted) in its own session,
with ``CUDA_VISIBLE_DEVICES`` set to its GPU. The loop sleeps on pidfds, so a job's exit wakes it at once
and the next job starts on the freed GPU within milliseconds (benchmarks/scheduling_bench.py). A failed job
is recorded and the loop goes on. Exports run in worker threads (they need no GPU and must not hold one);
only this thread writes the queue.

Stopping (Ctrl-C, SIGTERM or SIGHUP to the driver; jobs run in their own sessions, so a terminal's Ctrl-C
reaches only the driver): every running job gets SIGTERM, which ``kohyawan run`` turns into a
clean stop with its state saved; the jobs go back to pending with their run folders remembered, and the
next ``kohyawan batch`` resumes them. If the driver itself is killed outright, its jobs keep running
without it; the next driver adopts them (same pid and start time) and waits for them.
See docs/architecture.md.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psutil

from kohyawan.batch import results
from kohyawan.batch.jobs import Launch, child_env, export_argv, fresh_try, resume_argv, run_argv, run_name
from kohyawan.batch.allocate import Allocator
from kohyawan.batch.manifest import Job
from kohyawan.batch.queue import Queue
from kohyawan.files import jsonfile

STOP_GRACE_S = 120.0   # as long as SLURM's warning before a time limit: kohyawan run saves its state


@dataclass
class Child:
    key: str
    slot: str
    pid: int
    proc: subprocess.Popen | None      # None for a job adopted from a previous driver
    run_dir: Path
    fd: int | None = None              # pidfd: readable when the process exits
    created: float | None = None       # the process's start time (pid reuse guard)


class Scheduler:
    def __init__(self, queue: Queue, jobs: list[Job], launch: Launch, slots: list[str], *,
                 registry: Path | None = None, export: bool = True, say: Callable[[str], None] = lambda m: None,
                 base_env: dict[str, str] | None = None, exporter: Callable[..., dict] | None = None):
        self.q, self.jobs, self.launch = queue, {j.key: j for j in jobs}, launch
        self.alloc = Allocator(list(slots))
        self.registry, self.export_enabled, self.say = registry, export, say
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.children: dict[str, Child] = {}
        self.exports: dict[str, threading.Thread] = {}
        self.export_results: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.exporter = exporter or run_export
        self.stopping = False
        self.logs = queue.folder / "logs"

    # --- the loop ---------------------------------------------------------------------------------------
    def run(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        # A signal only sets a flag and writes to this pipe, which the wait below watches: the loop wakes
        # at once and stops the jobs itself, never in the middle of a queue update.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        for s in previous:
            signal.signal(s, self._on_signal)
        try:
            self._recover()
            while not self.stopping:
                self._collect_exports()
                self._start_ready()
                if not self.children and not self.exports and not self._startable():
                    break
                self._wait(timeout=1.0)
                self._reap()
        except KeyboardInterrupt:
            self.stopping = True
        finally:
            if self.children or self.exports:
                self._stop_all()
            for s, h in previous.items():
                signal.signal(s, h)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _startable(self) -> bool:
        return any(r["key"] in self.jobs and r["key"] not in self.exports for r in self.q.rows("pending"))

    # --- start ------------------------------------------------------------------------------------------
    def _start_ready(self) -> None:
        for row in self.q.rows("pending"):
            key = row["key"]
            if key not in self.jobs or key in self.children or key in self.exports:
                continue
            if row["run_status"] == "succeeded":     # trained; only its export is missing
                self._begin_export(key, Path(row["run_dir"]))
                continue
            slot = self.alloc.take(key)
            if slot is None:
                continue      # no free GPU; a later row may still need only its export
            self._spawn(self.jobs[key], row, slot)

    def _spawn(self, job: Job, row, slot: str) -> None:
        run_dir = Path(row["run_dir"]) if row["run_dir"] else None
        resuming = run_dir is not None and (run_dir / "run.json").is_file() and \
            (jsonfile.read_object(run_dir / "run.json") or {}).get("status") in ("running", "stopped")
        tries = row["tries"] if resuming else fresh_try(job, self.launch.runs_dir, row["tries"])
        if resuming:
            argv = resume_argv(run_dir, self.launch)
        else:
            argv = run_argv(job, self.launch, tries)
            run_dir = self.launch.runs_dir / run_name(job, tries)
        name = run_name(job, tries)
        env = child_env(self.base_env, job, slot or None)
        with open(self.logs / f"{name}.out", "ab") as out, open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=log, env=env,
                                    start_new_session=True, close_fds=True)
        now = time.time()
        child = Child(job.key, slot, proc.pid, proc, run_dir, _pidfd(proc.pid), _create_time(proc.pid))
        self.children[job.key] = child
        self.q.update(job.key, state="running", attempts=row["attempts"] + 1, tries=tries, run_id=run_dir.name,
                      run_dir=str(run_dir), gpu=slot, pid=proc.pid, pid_started=child.created,
                      started_at=now, ended_at=None, exit_code=None, reason=None)
        self.q.event(job.key, "resume" if resuming else "start", {"slot": slot, "pid": proc.pid}, t=now)
        self.say(f"{'resumed' if resuming else 'started'} {job.key} on GPU {slot or '-'} (run {run_dir.name})")

    # --- wait and reap ----------------------------------------------------------------------------------
    def _wait(self, timeout: float) -> None:
        fds = [c.fd for c in self.children.values() if c.fd is not None]
        if self.exports:
            timeout = min(timeout, 0.2)
        if len(fds) != len(self.children):        # no pidfd (old kernel): poll
            timeout = min(timeout, 0.05)
        ready, _, _ = select.select(fds + [self._wake_r], [], [], timeout)
        if self._wake_r in ready:
            os.read(self._wake_r, 64)

    def _reap(self) -> None:
        for key, child in list(self.children.items()):
            code = _exited(child)
            if code is None:
                continue
            now = time.time()
            if child.fd is not None:
                os.close(child.fd)
            del self.children[key]
            self.alloc.give_back(child.slot)
            self._finished(key, child, code, now)

    def _finished(self, key: str, child: Child, code: int | None, now: float) -> None:
        info = results.summarize(child.run_dir)
        status = info["status"]
        self.q.event(key, "end", {"slot": child.slot, "exit_code": code, "status": status}, t=now)
        fields: dict[str, Any] = {"ended_at": now, "exit_code": code, "run_status": status, "pid": None}
        if status == "succeeded":
            self.q.update(key, **fields)
            self.say(f"finished {key}: run succeeded")
            if self.export_enabled and self.jobs[key].export:
                self._begin_export(key, child.run_dir)
            else:
                self.q.update(key, state="succeeded", export_state="skipped")
        elif status in ("stopped", "running") or (self.stopping and status is None):
            # Interrupted (by us or by a signal): resume it next time, from its saved state.
            self.q.update(key, state="pending", reason=f"interrupted ({status or 'no run.json'})", **fields)
            self.say(f"interrupted {key}; it resumes on the next 'kohyawan batch'")
        else:
            reason = info.get("reason") or _tail(self.logs, child.run_dir.name) or f"exit code {code}"
            self.q.update(key, state="failed", reason=reason, **fields)
            self.say(f"FAILED {key}: {reason}")

    # --- export -----------------------------------------------------------------------------------------
    def _begin_export(self, key: str, run_dir: Path) -> None:
        job = self.jobs[key]
        self.q.update(key, export_state="running", state="running")
        self.q.event(key, "export-start")

        def work():
            try:
                result = self.exporter(job, run_dir, self.launch, self.registry, self.base_env, self.logs)
            except Exception as exc:  # a bug or a dead disk: record it, keep the batch going
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            with self.lock:
                self.export_results.append((key, result))

        thread = threading.Thread(target=work, name=f"export {key}", daemon=True)
        self.exports[key] = thread
        thread.start()

    def _collect_exports(self) -> None:
        with self.lock:
            done, self.export_results = self.export_results, []
        for key, result in done:
            self.exports.pop(key, None)
            if result.get("ok"):
                self.q.update(key, state="succeeded", export_state="done", exported_version=result.get("version"),
                              export_detail=json.dumps(result, default=str))
                self.q.event(key, "export-end", {"version": result.get("version")})
                self.say(f"exported {key} as v{result.get('version')}")
            else:
                self.q.update(key, state="failed", export_state="failed", reason=f"export: {result.get('error')}",
                              export_detail=json.dumps(result, default=str))
                self.q.event(key, "export-failed", {"error": result.get("error")})
                self.say(f"FAILED export of {key}: {result.get('error')}")

    # --- recovery and stopping --------------------------------------------------------------------------
    def _recover(self) -> None:
        """Rows left 'running' by a driver that died: adopt live jobs, settle the rest."""
        for row in self.q.rows("running"):
            key = row["key"]
            run_dir = Path(row["run_dir"]) if row["run_dir"] else None
            pid = row["pid"]
            if pid and run_dir and _same_process(pid, row["pid_started"]):
                self.alloc.hold(row["gpu"] or "", key)
                self.children[key] = Child(key, row["gpu"] or "", pid, None, run_dir, _pidfd(pid), row["pid_started"])
                self.q.event(key, "adopt", {"pid": pid})
                self.say(f"adopted {key} (pid {pid}, still running from an earlier batch)")
                continue
            status = (jsonfile.read_object(run_dir / "run.json") or {}).get("status") if run_dir else None
            if status == "succeeded":
                self.q.update(key, state="pending", run_status="succeeded", pid=None)
            elif status == "failed":
                self.q.update(key, state="failed", run_status="failed", pid=None,
                              reason=results.summarize(run_dir).get("reason") or "run failed")
            else:
                self.q.update(key, state="pending", pid=None, reason="interrupted (driver died)")
            self.q.event(key, "recovered", {"status": status})

    def _stop_all(self) -> None:
        self.say(f"stopping {len(self.children)} running job(s); they resume on the next 'kohyawan batch'")
        for child in self.children.values():
            _signal(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while self.children and time.monotonic() < deadline:
            self._wait(timeout=0.5)
            self._reap()
        for child in list(self.children.values()):
            _signal(child.pid, signal.SIGKILL, group=True)
        while self.children:
            self._wait(timeout=0.5)
            self._reap()
        for thread in list(self.exports.values()):
            thread.join()
        self._collect_exports()


def run_export(job: Job, run_dir: Path, launch: Launch, registry: Path | None, env: dict,
               logs: Path) -> dict:
    """Publish a finished run as the next version: ``kohyawan registry show`` for the previous version's
    dataset size (for the note), then ``kohyawan export``. Both are the CLI, as a user would run them."""
    previous = _previous_version(job, launch, registry, env)
    info = results.summarize(run_dir)
    note = results.change_note(info["items"], previous, results.dataset_word(job.dataset))
    notes = f"{note}. {job.notes}" if job.notes else note
    argv = export_argv(job, run_dir, launch, registry, f"batch: {notes}")
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    with open(logs / f"{run_dir.name}.export.log", "a", encoding="utf-8") as fh:
        fh.write(proc.stderr)
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        return {"ok": False, "error": lines[-1] if lines else f"exit code {proc.returncode}", "notes": notes}
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        return {"ok": False, "error": "kohyawan export printed no JSON", "notes": notes}
    return {"ok": True, "version": doc.get("version"), "model": doc.get("model"), "notes": notes,
            "files": [f.get("abs_path") or f.get("path") for f in doc.get("files", [])]}


def _previous_version(job: Job, launch: Launch, registry: Path | None, env: dict) -> dict | None:
    argv = launch.base() + ["registry", "show", job.name, "--client", job.client, "--kind", job.kind, "--json"]
    if registry is not None:
        argv += ["--registry", str(registry)]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return None   # no such model yet (or no registry): this export is its first version
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        return None
    versions = doc.get("versions") or (doc.get("model") or {}).get("versions") or []
    return max(versions, key=lambda v: v.get("version", 0)) if versions else None


# --- process helpers ------------------------------------------------------------------------------------
def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _same_process(pid: int, started: float | None) -> bool:
    try:
        proc = psutil.Process(pid)
        return started is not None and abs(proc.create_time() - started) < 0.01 and \
            proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _exited(child: Child) -> int | None:
    if child.proc is not None:
        return child.proc.poll()
    if _same_process(child.pid, child.created):
        return None
    return -1   # adopted: not our child, its exit code is gone; run.json says how it ended


def _signal(pid: int, sig: int, group: bool = False) -> None:
    try:
        if group:
            os.killpg(os.getpgid(pid), sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(logs: Path, name: str) -> str | None:
    try:
        lines = [l.strip() for l in (logs / f"{name}.log").read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return None
    lines = [l for l in lines if l]
    return lines[-1][:300] if lines else None
