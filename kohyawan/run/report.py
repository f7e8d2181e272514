"""What ``runs list``, ``runs show``, ``runs stop`` and ``runs resume`` know about a run folder, as library
functions: the CLI prints them and ``kohyawan ui`` shows them, through this one module.

A run's *state* joins ``run.json`` with the supervisor's lock (``running``, ``orphaned``, ``dead`` besides
the ledger's own status). While a run trains, ``run.json`` holds the attempt's first step only; the live
step, loss and speed come from the last line of ``metrics.jsonl``, which the tracker appends as the
trainer prints progress (the same events that drive the terminal's live panel).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from kohyawan.errors import BadInput, Busy, WorkFailed
from kohyawan.run.ledger import locate

RUN_ID = r"[\w.-]+"
RESUME_LOG = "resume.log"   # output of a resume started in the background (kohyawan ui)
_TAIL_BYTES = 16384


def find_run(runs_dir: Path, run_id: str) -> Path:
    """The folder of run ``run_id`` (a folder path, or an id under ``runs_dir``); BadInput when none."""
    path = Path(run_id)
    if not (path / "run.json").is_file():
        path = Path(runs_dir) / run_id
    if not (path / "run.json").is_file():
        raise BadInput(f"no run {run_id!r} in {runs_dir}")
    return Path(os.path.abspath(path))   # absolute: every path a resumed run records is built from it


def read_run(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WorkFailed(f"{Path(run_dir) / 'run.json'}: unreadable ({exc})") from None


def live_state(run_dir: Path, data: dict) -> str:
    """running / orphaned / dead (supervisor gone; resume continues it) / the ledger's status."""
    from kohyawan.run import runlock

    if runlock.is_locked(run_dir):
        return "running"
    if runlock.orphan(run_dir):
        return "orphaned"
    if data["status"] == "running":
        return "dead"
    return data["status"]


def tail_lines(path: Path, max_bytes: int = _TAIL_BYTES) -> list[str]:
    """The complete lines at the end of a file (a line still being written is left out)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").split("\n")
    if size > max_bytes:
        lines = lines[1:]  # the first one is cut
    return [line for line in lines[:-1]]  # the last element is "" or an unfinished line


def last_metric(run_dir: Path) -> dict | None:
    """The newest complete record of ``metrics.jsonl``, or None."""
    for line in reversed(tail_lines(Path(run_dir) / "metrics.jsonl")):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            return rec
    return None


def _stage(run_dir: Path, data: dict, state: str) -> str:
    """The stage running now; for a run not running, the last stage it reached."""
    stages = data.get("stages") or []
    if state != "running":
        return stages[-1]["name"] if stages else "-"
    from kohyawan.run import runlock

    info = runlock.read_pid(run_dir) or {}
    if info.get("stage"):
        return info["stage"]
    running = [s["name"] for s in stages if s.get("status") == "running"]
    return running[-1] if running else "preparing"


def _gpu(data: dict) -> str | None:
    gpu, est = data.get("gpu"), data.get("estimate") or {}
    ids = (data.get("options") or {}).get("gpus")
    if isinstance(gpu, dict) and gpu.get("name"):
        text = f"{gpu['name']} ({gpu.get('total_gib', 0):.0f} GiB)"
    elif data.get("rehearsal") and est.get("gpu_gib"):
        text = f"virtual {est['gpu_gib']:g} GiB"
    else:
        text = None
    if ids:
        text = f"{text or 'GPU'} [{ids}]"
    return text


def summary(run_dir: Path, data: dict | None = None) -> dict[str, Any]:
    """One run as ``runs list`` shows it, with the live step, loss and ETA while it trains."""
    run_dir = Path(run_dir)
    data = read_run(run_dir) if data is None else data
    state = live_state(run_dir, data)
    attempts = data.get("attempts") or []
    last = attempts[-1] if attempts else {}
    step = (last.get("steps") or [0, 0])[1]
    metric = last_metric(run_dir)
    if metric and last and metric.get("attempt") == last.get("n") and last.get("outcome") is None:
        step = max(step, metric["step"])
    total = data.get("total_steps")
    s_per_it = metric.get("s_per_it") if metric else None
    eta = (total - step) * s_per_it if state == "running" and total and s_per_it else None
    return {"id": data["id"], "status": data["status"], "state": state, "stage": _stage(run_dir, data, state),
            "profile": data.get("profile"), "task": data.get("task"), "total_steps": total, "step": step,
            "loss": metric.get("loss") if metric else None, "s_per_it": s_per_it,
            "eta_s": round(eta, 1) if eta is not None else None, "gpu": _gpu(data), "attempts": len(attempts),
            "rungs": list(last.get("rungs") or []), "rehearsal": bool(data.get("rehearsal")),
            "updated": data.get("updated"), "path": str(run_dir)}


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every run folder directly under ``root`` (unreadable ones are skipped), sorted by id."""
    root = Path(root)
    rows = []
    for path in sorted(root.glob("*/run.json")) if root.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "id" in data:
            rows.append(summary(path.parent, data))
    return rows


def list_line(row: dict) -> str:
    return (f"{row['id']:<32} {row['state']:<10} {row['step']}/{row['total_steps'] or '?'} steps  "
            f"{row['attempts']} attempt(s)  {row['profile']} {row['task']}" + ("  (rehearsal)" if row["rehearsal"] else ""))


def brief(text: str | None) -> str:
    from kohyawan.run.runview import brief as cut

    return cut(text)


def attempt_line(attempt: dict, *, state: str, live_step: int | None = None) -> str:
    """``attempt 2 train: steps 5-66 running [rung fp8_base] - ...``; an open attempt says so, never None."""
    first, last = (attempt.get("steps") or [0, 0])[:2]
    outcome = attempt.get("outcome")
    if outcome is None:
        outcome = "running" if state == "running" else "unfinished (its supervisor is gone)"
        last = max(last, live_step or 0)
    return (f"attempt {attempt['n']} {attempt.get('stage', '')}: steps {first}-{last} {outcome}"
            + (f" [rung {attempt['rung']}]" if attempt.get("rung") else "")
            + (f" - {brief(attempt['reason'])}" if attempt.get("reason") else ""))


def show_lines(run_dir: Path | None, data: dict, *, with_checkpoints: bool = True) -> list[str]:
    """What ``runs show`` prints (and ``kohyawan run`` at the end, without checkpoints)."""
    row = summary(run_dir, data) if with_checkpoints else None
    state = row["state"] if row else data["status"]
    lines = [f"run {data['id']}: {data['status']}" + (" (REHEARSAL: no training happened)" if data.get("rehearsal") else "")]
    for a in data.get("attempts") or []:
        lines.append("  " + attempt_line(a, state=state, live_step=row["step"] if row else None))
    if data.get("final"):
        lines.append(f"  final: {data['final']['path']}")
    for cache in data.get("caches") or []:
        lines.append(f"  cache: {cache['cache_directory']} ({cache.get('kind')}s of {cache.get('media')})")
    if row:
        lines.append(f"  state: {state}" + (f", {row['stage']} step {row['step']}/{row['total_steps']}"
                                             if state == "running" else "")
                     + f"; {len(data.get('checkpoints') or [])} checkpoint(s):")
        for ck in data.get("checkpoints") or []:
            lines.append(f"    step {ck['step']:>7}  {locate(run_dir, ck['path'])}" + ("  (removed)" if ck.get("removed") else ""))
    return lines


def stop(run_dir: Path) -> str:
    """Ask the supervising kohyawan to stop (SIGTERM, which it turns into a clean stop), or stop an orphan."""
    from kohyawan.run import runlock
    from kohyawan.run.supervise import kill_group

    run_dir = Path(run_dir)
    run_id = run_dir.name
    holder = runlock.holder_pid(run_dir) if runlock.is_locked(run_dir) else None
    if holder:
        os.kill(holder, signal.SIGTERM)
        return f"asked kohyawan (pid {holder}) to stop run {run_id}"
    pgid = runlock.orphan(run_dir)
    if pgid:
        kill_group(pgid)
        runlock.clear_pid(run_dir)
        return f"stopped the orphaned trainer of {run_id}"
    return f"run {run_id} is not running"


def ensure_resumable(run_dir: Path) -> dict:
    """Refuse a resume that would make two trainers or redo a finished run; returns run.json."""
    from kohyawan.run import runlock

    run_dir = Path(run_dir)
    if runlock.is_locked(run_dir):
        raise Busy(runlock.held_message(run_dir))
    data = read_run(run_dir)
    if data["status"] == "succeeded":
        raise BadInput(f"run {run_dir.name} already succeeded")
    return data


def resume_detached(run_dir: Path) -> int:
    """Start ``kohyawan runs resume`` for this run in its own session (it outlives the caller), its output
    appended to ``resume.log`` in the run folder. Returns the child's pid."""
    run_dir = Path(run_dir).absolute()
    ensure_resumable(run_dir)
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-m", "kohyawan", "runs", "resume", run_dir.name, "--runs-dir", str(run_dir.parent),
            "--plain", "--interval", "30"]
    with open(run_dir / RESUME_LOG, "ab") as log:
        log.write(f"\n$ kohyawan runs resume {run_dir.name}  (started by kohyawan ui)\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=str(run_dir), start_new_session=True, close_fds=True)
    return proc.pid
