"""kohyawan ui as a real server process while real rehearsal runs train: live updates (server-sent events),
the live step in ``runs list``/``runs show`` too, and stop and resume from the page doing what the CLI does."""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from runtime_helpers import ledger  # noqa: E402
from ui_helpers import UiServer, cli, metrics_step, start_run, stop_process, wait_until  # noqa: E402

pytestmark = pytest.mark.slow


def get(server, path):
    with urllib.request.urlopen(server.base + path, timeout=30) as r:
        return r.status, r.read().decode()


def post(server, path):
    req = urllib.request.Request(server.base + path, data=b"", method="POST", headers={"HX-Request": "true"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def next_change(server, query: str, timeout: float = 10.0) -> float:
    """Seconds until the event stream says "change" (after its first, initial message)."""
    u = urlsplit(server.base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    conn.request("GET", f"/events?{query}")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            line = resp.fp.readline().decode()
            if line.startswith("event: change"):
                return time.monotonic() - t0
    finally:
        conn.close()
    raise AssertionError("no change event")


def test_runs_list_follows_a_training_run_live(tmp_path):
    proc = start_run(tmp_path, "live", "--set", "max_train_epochs=25", step_s="0.2")
    try:
        run_dir = tmp_path / "runs" / "live"
        wait_until(lambda: metrics_step(run_dir) >= 3, timeout=120)
        with UiServer("--runs-dir", str(tmp_path / "runs")) as server:
            status, body = get(server, "/api/runs")
            (row,) = json.loads(body)
            assert status == 200 and row["state"] == "running" and row["stage"] == "train"
            assert row["step"] >= 3 and row["total_steps"] == 100 and row["eta_s"] > 0
            # the stream says "changed" within the 2 s the page has, and the list then shows the new step
            assert next_change(server, "topic=runs") < 2.0
            assert next_change(server, "topic=run&root=0&id=live") < 2.0
            seen = json.loads(get(server, "/api/runs")[1])[0]["step"]
            assert seen > row["step"]
            assert abs(seen - metrics_step(run_dir)) <= 3
            # the CLI reads the same: no more "0/100 steps" or "None" while a run trains (issue 15)
            listed = cli("runs", "list", "--runs-dir", str(tmp_path / "runs")).stdout
            step = int(listed.split()[2].split("/")[0])
            assert listed.split()[1] == "running" and step >= seen
            shown = cli("runs", "show", "live", "--runs-dir", str(tmp_path / "runs")).stdout
            assert "None" not in shown and " running" in shown and "state: running, train step" in shown
    finally:
        stop_process(proc)


def test_stop_and_resume_from_the_page(tmp_path):
    proc = start_run(tmp_path, "sr", "--set", "max_train_epochs=25", step_s="0.2")
    run_dir = tmp_path / "runs" / "sr"
    try:
        wait_until(lambda: metrics_step(run_dir) >= 12, timeout=120)
        # the server's own environment makes the resumed (detached) trainer fast
        with UiServer("--runs-dir", str(tmp_path / "runs"), KOHYAWAN_REHEARSE_STEP_S="0.02") as server:
            status, body = post(server, "/runs/0/sr/resume")
            assert status == 409 and "is already being supervised by process" in body
            status, body = post(server, "/runs/0/sr/stop")
            assert status == 200 and f"asked kohyawan (pid {proc.pid}) to stop run sr" in body
            assert proc.wait(timeout=90) == 130
            assert ledger(tmp_path / "runs", "sr")["status"] == "stopped"
            status, body = post(server, "/runs/0/sr/resume")
            assert status == 200 and "resumed run sr: kohyawan pid" in body, body
            pid = int(body.split("kohyawan pid ")[1].split()[0])
            assert os.getsid(pid) == pid != os.getsid(0)     # its own session: it outlives the request and the server
        # the server is gone; the resumed run goes on to the end
        wait_until(lambda: ledger(tmp_path / "runs", "sr")["status"] == "succeeded", timeout=180)
        data = ledger(tmp_path / "runs", "sr")
        assert data["attempts"][-1]["steps"][1] == data["total_steps"] == 100
        assert data["attempts"][-2]["outcome"] == "interrupted"
        # the ledger says succeeded a moment before the process prints its summary and exits
        wait_until(lambda: "run sr: succeeded" in (run_dir / "resume.log").read_text(), timeout=60)
        assert "kohyawan runs resume sr" in (run_dir / "resume.log").read_text()
    finally:
        stop_process(proc)


def test_a_non_local_bind_needs_its_token(tmp_path):
    (tmp_path / "runs").mkdir()
    with UiServer("--runs-dir", str(tmp_path / "runs"), "--host", "127.0.0.2") as server:
        assert "?token=" in server.url
        token = server.url.split("?token=")[1]
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(server, "/runs")
        assert refused.value.code == 401
        req = urllib.request.Request(server.base + "/api/runs", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200 and json.loads(r.read()) == []
