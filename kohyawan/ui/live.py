"""Live pages: a server-sent event stream per open page that says "changed" when the files behind that page
change (size and modification time of run.json, metrics.jsonl and the console logs, looked at every
``poll_s``), so the page refetches its parts; nothing is pushed when nothing changed. A tick every
``TICK_S`` catches what no file shows (a supervisor that died)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import StreamingResponse

from kohyawan.errors import BadInput
from kohyawan.ui.config import check_name, pick

TICK_S = 10.0
PING_S = 15.0
_RUN_FILES = ("run.json", "metrics.jsonl", "trainer.pid", "resume.log")


def _stat(path: Path) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_size, st.st_mtime_ns)


def run_signature(run_dir: Path) -> tuple:
    sig = [_stat(run_dir / name) for name in _RUN_FILES]
    attempts = run_dir / "attempts"
    try:
        latest = max(attempts.iterdir(), default=None)
    except OSError:
        latest = None
    if latest is not None:
        sig.append(_stat(latest / "console.log"))
    logs = run_dir / "logs"
    if logs.is_dir():
        sig.extend(_stat(p) for p in sorted(logs.iterdir()))
    return tuple(sig)


def runs_signature(roots: tuple[Path, ...]) -> tuple:
    sig = []
    for root in roots:
        sig.append(_stat(root))
        for run_json in sorted(root.glob("*/run.json")):
            sig.append((run_json.parent.name, _stat(run_json), _stat(run_json.parent / "metrics.jsonl"),
                        _stat(run_json.parent / "trainer.pid")))
    return tuple(sig)


def watcher(request: Request):
    """The function that fingerprints what the requested page shows."""
    cfg = request.app.state.cfg
    topic = request.query_params.get("topic", "runs")
    if topic == "run":
        try:
            index = int(request.query_params.get("root", ""))
        except ValueError:
            raise BadInput("root: give the number of a runs folder, e.g. root=0") from None
        root = pick(cfg.runs_dirs, index, "runs")
        run_dir = root / check_name(request.query_params.get("id", ""), "run")
        return lambda: run_signature(run_dir)
    return lambda: runs_signature(cfg.runs_dirs)


async def events(request: Request) -> StreamingResponse:
    signature = watcher(request)
    poll = request.app.state.cfg.poll_s

    async def stream():
        last = await to_thread.run_sync(signature)
        yield "retry: 2000\n\n"
        quiet_since = tick_at = time.monotonic()
        while True:
            await asyncio.sleep(poll)
            now = time.monotonic()
            sig = await to_thread.run_sync(signature)
            if sig != last or now - tick_at >= TICK_S:
                last, tick_at, quiet_since = sig, now, now
                yield "event: change\ndata: {}\n\n"
            elif now - quiet_since >= PING_S:
                quiet_since = now
                yield ": ping\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
