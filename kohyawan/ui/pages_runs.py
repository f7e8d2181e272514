"""Runs: the list, a run's page (summary, charts, attempts, console tail, stop and resume), its checkpoints
and export to the registry. What is shown comes from ``kohyawan.run.report`` (``runs list``/``runs show``)
and ``kohyawan.run.checkpoints`` (``kohyawan checkpoints``); stop and resume do what ``runs stop`` and
``runs resume`` do, the resume as a detached process that outlives the request."""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kohyawan.run import report
from kohyawan.ui.app import message, render
from kohyawan.ui.config import Conflict, NotFound, check_name, pick

CONSOLE_LINES = 40
RESUME_WAIT_S = 8.0


def all_runs(cfg) -> list[dict]:
    rows = []
    for i, root in enumerate(cfg.runs_dirs):
        for row in report.list_runs(root):
            rows.append({**row, "root": i})
    return sorted(rows, key=lambda r: r.get("updated") or "", reverse=True)


def run_dir_of(request: Request) -> Path:
    root = pick(request.app.state.cfg.runs_dirs, request.path_params["root"], "runs")
    run_id = check_name(request.path_params["run_id"], "run")
    path = root / run_id
    if not (path / "run.json").is_file():
        raise NotFound(f"no run {run_id!r} in {root}")
    return path


def console_tail(run_dir: Path, data: dict) -> tuple[str | None, list[str]]:
    """The newest output: the open attempt's console.log, else the last cache log, else resume.log."""
    candidates = [a.get("console_log") for a in reversed(data.get("attempts") or [])]
    candidates += [s.get("log") for s in reversed(data.get("stages") or [])]
    candidates = [Path(c) for c in candidates if c] + [run_dir / report.RESUME_LOG]
    inside = run_dir.resolve()
    existing = [c for c in candidates if c.is_file() and c.resolve().is_relative_to(inside)]
    if not existing:
        return None, []
    newest = max(existing, key=lambda p: p.stat().st_mtime)
    lines = []
    for line in report.tail_lines(newest, 32768):
        lines.extend(part for part in line.split("\r") if part.strip())
    return str(newest), lines[-CONSOLE_LINES:]


def _run_context(request: Request) -> dict:
    run_dir = run_dir_of(request)
    data = report.read_run(run_dir)
    row = report.summary(run_dir, data)
    log, tail = console_tail(run_dir, data)
    lines = [report.attempt_line(a, state=row["state"], live_step=row["step"]) for a in data.get("attempts") or []]
    return {"run": row, "data": data, "root": request.path_params["root"], "attempt_lines": lines,
            "console_path": log, "console": tail, "show_lines": report.show_lines(run_dir, data)}


def metrics_files(cfg) -> list[Path]:
    """Every run's metrics.jsonl, the most recently updated run first."""
    return [Path(r["path"]) / "metrics.jsonl" for r in all_runs(cfg)]


def runs_page(request: Request) -> Response:
    rows = all_runs(request.app.state.cfg)
    request.app.state.metrics.warm(lambda: [Path(r["path"]) / "metrics.jsonl" for r in rows])
    return render(request, "runs.html", rows=rows, nav="runs")


def runs_table(request: Request) -> Response:
    return render(request, "_runs_table.html", rows=all_runs(request.app.state.cfg))


def api_runs(request: Request) -> Response:
    return JSONResponse(all_runs(request.app.state.cfg))


def run_page(request: Request) -> Response:
    return render(request, "run.html", nav="runs", **_run_context(request))


def run_body(request: Request) -> Response:
    return render(request, "_run_body.html", **_run_context(request))


def api_run(request: Request) -> Response:
    ctx = _run_context(request)
    return JSONResponse({"summary": ctx["run"], "attempts": ctx["attempt_lines"], "console": ctx["console"]})


def run_series(request: Request) -> Response:
    run_dir = run_dir_of(request)
    data = report.read_run(run_dir)
    body = request.app.state.metrics.payload(run_dir / "metrics.jsonl", data.get("attempts") or [])
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


def run_stop(request: Request) -> Response:
    return message(request, report.stop(run_dir_of(request)))


def run_resume(request: Request) -> Response:
    """``runs resume`` in its own session; waits until it supervises the run or fails (its first line)."""
    from kohyawan.run import runlock

    run_dir = run_dir_of(request)
    pid = report.resume_detached(run_dir)
    deadline = time.monotonic() + RESUME_WAIT_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            tail = [line for line in report.tail_lines(run_dir / report.RESUME_LOG) if line.startswith("error:")]
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                raise Conflict(tail[-1][len("error: "):] if tail else f"runs resume exited with {code}")
            return message(request, f"run {run_dir.name} resumed and finished")
        if runlock.is_locked(run_dir):
            return message(request, f"resumed run {run_dir.name}: kohyawan pid {pid} supervises it "
                                    f"(output in {run_dir / report.RESUME_LOG})")
        time.sleep(0.1)
    return message(request, f"resume of {run_dir.name} started (pid {pid}); see {run_dir / report.RESUME_LOG}")


def checkpoints_page(request: Request) -> Response:
    from kohyawan.registry.naming import KINDS
    from kohyawan.run.checkpoints import CANDIDATE_WINDOW, list_checkpoints

    run_dir = run_dir_of(request)
    items = list_checkpoints(run_dir)
    return render(request, "checkpoints.html", nav="runs", run=report.summary(run_dir), root=request.path_params["root"],
                  items=items, names={c.path: Path(c.path).name for c in items}, kinds=KINDS,
                  window=[int(100 * w) for w in CANDIDATE_WINDOW], registry=request.app.state.cfg.registry)


async def form(request: Request) -> dict[str, str]:
    """A urlencoded form (what htmx sends), without the multipart parser starlette would need."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[-1].strip() for k, v in parse_qs(body, keep_blank_values=True).items()}


def _export(request: Request, fields: dict[str, str]) -> Response:
    from kohyawan.registry import export as ex

    cfg = request.app.state.cfg
    if cfg.registry is None:
        raise Conflict("no registry configured: start kohyawan ui with --registry DIR")
    run_dir = run_dir_of(request)
    warnings: list[str] = []
    req = ex.ExportRequest(source=str(run_dir), name=fields.get("name", ""), kind=fields.get("kind", ""),
                           client=fields.get("client") or None, checkpoint=fields.get("checkpoint") or "auto",
                           notes=fields.get("notes") or None)
    result = ex.export(cfg.registry, req, warn=warnings.append)
    files = ", ".join(f"{Path(f['path']).name} (step {f['step']}, {f['why']})" for f in result["files"])
    text = f"exported {result['model']} v{result['version']} ({result['status']}): {files}"
    if warnings:
        text += " — warning: " + "; ".join(warnings)
    return message(request, text, link=f"/registry/{result['model']}")


async def run_export(request: Request) -> Response:
    fields = await form(request)
    return await run_in_threadpool(_export, request, fields)


ROUTES = [
    Route("/runs", runs_page), Route("/runs/table", runs_table), Route("/api/runs", api_runs),
    Route("/runs/{root:int}/{run_id}", run_page), Route("/runs/{root:int}/{run_id}/body", run_body),
    Route("/api/runs/{root:int}/{run_id}", api_run), Route("/api/runs/{root:int}/{run_id}/series", run_series),
    Route("/runs/{root:int}/{run_id}/stop", run_stop, methods=["POST"]),
    Route("/runs/{root:int}/{run_id}/resume", run_resume, methods=["POST"]),
    Route("/runs/{root:int}/{run_id}/checkpoints", checkpoints_page),
    Route("/runs/{root:int}/{run_id}/export", run_export, methods=["POST"]),
]
