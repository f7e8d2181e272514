"""kohyawan ui through starlette's test client, over real run folders (``kohyawan run --rehearse``), a real
registry (``kohyawan export``) and a real grid (``kohyawan comfy grid`` against the fake ComfyUI)."""

from __future__ import annotations

import json
import re
import sys

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx2", reason="starlette's test client needs httpx2")

from starlette.testclient import TestClient  # noqa: E402

from kohyawan.ui.app import create_app  # noqa: E402
from kohyawan.ui.config import UiConfig  # noqa: E402
from ui_helpers import cli, export, finished_run_with_oom  # noqa: E402

LOCAL = "http://127.0.0.1:8765"
HTML = {"accept": "text/html"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    run_dir = finished_run_with_oom(root)
    registry = root / "registry"
    export(run_dir, registry)
    export(run_dir, registry, "--checkpoint", "final", "--notes", "second try")
    return {"root": root, "runs": root / "runs", "run": run_dir, "registry": registry}


def said(r) -> str:
    """The one line a page, a fragment or the API answered with (unescaped)."""
    import html

    if r.headers.get("content-type", "").startswith("application/json"):
        return "error: " + r.json()["error"]
    found = re.search(r'class="message (?:ok|err)"[^>]*>(.*?)</', r.text, re.S)
    return html.unescape(found.group(1)).strip() if found else r.text.strip()


def client(world, base_url: str = LOCAL, **cfg) -> TestClient:
    base = dict(runs_dirs=(world["runs"],), registry=world["registry"], grid_dirs=(world["root"],))
    base.update(cfg)
    return TestClient(create_app(UiConfig(**base)), base_url=base_url)


def test_runs_list_is_what_runs_list_prints(world):
    api = client(world).get("/api/runs").json()
    r = cli("runs", "list", "--runs-dir", str(world["runs"]), "--json")
    assert r.returncode == 0, r.stderr
    assert [{k: v for k, v in row.items() if k != "root"} for row in api] == json.loads(r.stdout)
    (row,) = api
    assert (row["id"], row["state"], row["step"], row["total_steps"], row["attempts"], row["rungs"]) == (
        "oomy", "succeeded", 20, 20, 2, ["fp8_base"])
    page = client(world).get("/runs", headers=HTML).text
    assert 'href="/runs/0/oomy"' in page and "20/20" in page and "fp8_base" in page


def test_run_page_shows_attempts_ladder_and_console(world):
    c = client(world)
    page = c.get("/runs/0/oomy", headers=HTML)
    assert page.status_code == 200
    text = re.sub(r"\s+", " ", page.text)
    assert "oom_vram" in text and "CUDA out of memory: next rung fp8_base" in text
    assert 'id="loss-chart"' in text and 'data-src="/api/runs/0/oomy/series"' in text
    assert "trained to step 20" in text and "REHEARSAL" in text
    # the console tail is the newest attempt's console.log
    log = (world["run"] / "attempts" / "02" / "console.log").read_text().replace("\r", "\n").splitlines()
    from markupsafe import escape

    assert str(escape([x for x in log if x.strip()][-1].strip())) in page.text
    # a finished run cannot be stopped or resumed from the page
    assert re.search(r'id="resume-btn"[^>]*disabled', page.text) and re.search(r'id="stop-btn"[^>]*disabled', page.text)


def test_series_have_both_attempts_and_the_ladder_step(world):
    doc = client(world).get("/api/runs/0/oomy/series").json()
    metrics = [json.loads(x) for x in (world["run"] / "metrics.jsonl").read_text().splitlines()]
    assert doc["records"] == len(metrics)
    by_attempt = {a["attempt"]: a for a in doc["loss"]["attempts"]}
    assert set(by_attempt) == {1, 2}
    x = doc["loss"]["x"]
    for m in metrics:  # every raw loss is where its step is (a short run is not downsampled)
        assert by_attempt[m["attempt"]]["raw"][x.index(m["step"])] == pytest.approx(m["loss"])
    (mark,) = doc["ladder"]
    assert mark["outcome"] == "oom_vram" and mark["attempt"] == 1 and "rung fp8_base" in mark["label"]
    assert mark["step"] == max(m["step"] for m in metrics if m["attempt"] == 1)
    assert mark["t"] is not None and 0 <= mark["t"] <= doc["memory"]["x"][-1]


def test_checkpoints_page_is_the_checkpoints_table(world):
    r = cli("checkpoints", str(world["run"]), "--json")
    items = json.loads(r.stdout)
    page = client(world).get("/runs/0/oomy/checkpoints", headers=HTML).text
    rows = re.findall(r'<tr class="([^"]*)">\s*<td>(★?)</td>\s*<td><code>([^<]+)</code>', page)
    assert [name for _, _, name in rows] == [it["path"].rsplit("/", 1)[-1] for it in items]
    assert [bool(star) for _, star, _ in rows] == [it["candidate"] for it in items]
    assert any(it["candidate"] for it in items)


def test_export_from_the_page_adds_a_version(world, monkeypatch):
    c = client(world)
    r = c.post("/runs/0/oomy/export", data={"name": "sarah", "kind": "character", "client": "demo", "checkpoint": "10"},
               headers={"HX-Request": "true"})
    assert r.status_code == 200, r.text
    assert "exported character/demo/sarah v3 (testing)" in r.text
    index = json.loads((world["registry"] / "index.json").read_text())
    v3 = index["models"]["character/demo/sarah"]["versions"][-1]
    assert v3["version"] == 3 and v3["source"]["step"] == 10 and v3["status"] == "testing"
    bad = c.post("/runs/0/oomy/export", data={"name": "Sarah!", "kind": "character"}, headers={"HX-Request": "true"})
    assert bad.status_code == 400 and bad.headers["HX-Retarget"] == "#msg" and "error:" in bad.text


def test_registry_pages_promote_and_rollback_change_the_index_on_disk(world, monkeypatch):
    c = client(world)
    page = c.get("/registry", headers=HTML).text
    assert 'href="/registry/character/demo/sarah"' in page
    model = c.get("/registry/character/demo/sarah", headers=HTML).text
    assert "<h1>Training notes: sarah" in model and "<table>" in model  # training_notes.md, rendered
    assert re.search(r"sha256 <code>[0-9a-f]{16}</code>", model)
    monkeypatch.setenv("KOHYAWAN_USER", "ana")
    refused = c.post("/registry/character/demo/sarah/action", data={"action": "promote", "version": "1"},
                     headers={"HX-Request": "true"})  # a rehearsal's LoRA, as `registry promote` without --force
    assert refused.status_code == 400 and "comes from a rehearsal run" in refused.text
    assert 'name="force"' in model
    r = c.post("/registry/character/demo/sarah/action",
               data={"action": "promote", "version": "1", "reason": "ok", "force": "1"}, headers={"HX-Request": "true"})
    assert r.status_code == 200 and "v1 promoted; current is v1 (by ana)" in r.text
    r = c.post("/registry/character/demo/sarah/action", data={"action": "promote", "version": "2", "force": "1"},
               headers={"HX-Request": "true"})
    assert "current is v2" in r.text
    statuses = {v["version"]: v["status"] for v in
                json.loads((world["registry"] / "index.json").read_text())["models"]["character/demo/sarah"]["versions"]}
    assert statuses[1] == "deprecated" and statuses[2] == "current"
    no_reason = c.post("/registry/character/demo/sarah/action", data={"action": "rollback", "reason": " "},
                       headers={"HX-Request": "true"})
    assert no_reason.status_code == 400 and "rollback needs --reason" in no_reason.text
    r = c.post("/registry/character/demo/sarah/action", data={"action": "rollback", "reason": "faces melt"},
               headers={"HX-Request": "true"})
    assert "rolled back from v2 to v1 (faces melt)" in r.text
    index = json.loads((world["registry"] / "index.json").read_text())["models"]["character/demo/sarah"]
    assert [e["user"] for e in index["events"]][-2:] == ["ana", "ana"]
    assert "rolled back from v2: faces melt" in (world["registry"] / "characters" / "demo" /
                                                  "wan2.2_character_sarah_training_notes.md").read_text()


def test_roles_are_checked_for_the_acting_user_as_in_the_cli(world, monkeypatch):
    (world["registry"] / "roles.toml").write_text('[users]\nalice = ["admin"]\nbob = ["training"]\n')
    try:
        before = (world["registry"] / "index.json").read_bytes()
        monkeypatch.setenv("KOHYAWAN_USER", "bob")
        r = client(world).post("/registry/character/demo/sarah/action", data={"action": "promote", "version": "2"},
                               headers={"HX-Request": "true"})
        assert r.status_code == 403
        assert said(r).startswith("error: user 'bob' may not promote in this registry: promote needs role admin "
                                  "(alice may); 'bob' has training")
        cli_says = cli("registry", "promote", "sarah", "v2", "--registry", str(world["registry"]), KOHYAWAN_USER="bob")
        assert cli_says.returncode == 2 and "user 'bob' may not promote" in cli_says.stderr
        assert (world["registry"] / "index.json").read_bytes() == before
        assert "bob has training" in client(world).get("/registry/character/demo/sarah", headers=HTML).text
        assert "roles.toml: bob has training" in client(world).get("/registry", headers=HTML).text
    finally:
        (world["registry"] / "roles.toml").unlink()


def test_paths_never_leave_the_configured_folders(world):
    c = client(world)
    for url in ("/files/0/%2E%2E/%2E%2E/etc/passwd", "/files/0/..%2F..%2Fetc%2Fpasswd", "/grids/0/%2E%2E",
                "/runs/0/%2E%2E", "/api/runs/0/%2E%2E/series", "/sweeps/0/%2E%2E"):
        r = c.get(url)
        assert r.status_code == 403, (url, r.status_code)
        assert said(r).startswith("error: ") and "\n" not in said(r)
    assert c.get("/files/0/runs/oomy/run.json").status_code == 404      # inside, but not a grid's file
    assert c.get("/runs/7/oomy").status_code == 404
    assert c.get("/events?topic=run&root=x&id=oomy").status_code == 400
    assert c.get("/runs/0/nothing").status_code == 404


def test_token_host_and_origin_rules(world):
    # a non-local bind always has a token; without it every request is refused
    app = create_app(UiConfig(runs_dirs=(world["runs"],), host="0.0.0.0"))
    token = app.state.cfg.token
    assert token and len(token) >= 24
    c = TestClient(app, base_url="http://192.0.2.1:8765")
    for path in ("/runs", "/api/runs", "/static/app.js", "/events"):
        assert c.get(path).status_code == 401
    assert c.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    first = c.get(f"/runs?token={token}")
    assert first.status_code == 200 and "kohyawan_token=" in first.headers["set-cookie"]
    assert "HttpOnly" in first.headers["set-cookie"] and "SameSite=Strict" in first.headers["set-cookie"]
    assert c.get("/api/runs").status_code == 200                       # the cookie carries it from now on
    c.cookies.clear()
    assert TestClient(app, base_url="http://192.0.2.1:8765").get(
        "/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # on 127.0.0.1 without a token: only local host names (no DNS rebinding), and no writes from other sites
    local = client(world)
    assert TestClient(local.app, base_url="http://evil.example:8765").get("/runs").status_code == 400
    r = local.post("/runs/0/oomy/stop", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "another site" in r.text
    assert local.post("/runs/0/oomy/stop", headers={"Origin": LOCAL}).status_code == 200
    assert "default-src 'self'" in local.get("/runs").headers["content-security-policy"]


def test_pages_load_nothing_from_outside(world):
    c = client(world)
    for path in ("/runs", "/runs/0/oomy", "/runs/0/oomy/checkpoints", "/registry", "/registry/character/demo/sarah",
                 "/tests"):
        page = c.get(path, headers=HTML).text
        for ref in re.findall(r'(?:src|href)="([^"]+)"', page):
            assert ref.startswith(("/", "#", "data:")), (path, ref)
    for ref in re.findall(r'(?:src|href)="(/static/[^"]+)"', c.get("/runs").text):
        assert c.get(ref).status_code == 200
    for vendored in ("htmx.min.js", "uPlot.iife.min.js", "uPlot.min.css"):
        assert c.get(f"/static/vendor/{vendored}").status_code == 200


def test_stop_and_resume_of_a_finished_run_say_why_not(world):
    c = client(world)
    r = c.post("/runs/0/oomy/resume", headers={"HX-Request": "true"})
    assert r.status_code == 400 and "run oomy already succeeded" in r.text
    assert "run oomy is not running" in c.post("/runs/0/oomy/stop", headers={"HX-Request": "true"}).text


def test_ui_without_the_extra_is_one_line_and_exit_2():
    import subprocess

    code = ("import sys; sys.modules['starlette'] = None; sys.argv = ['kohyawan', 'ui']; "
            "from kohyawan.cli import main; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr == "error: kohyawan ui needs starlette: pip install 'kohyawan[ui]'\n"


def test_importing_the_cli_imports_no_web_stack_and_help_has_an_example():
    import subprocess

    code = ("import sys, kohyawan.cli; heavy = [m for m in ('torch', 'starlette', 'uvicorn', 'kohyawan.ui') "
            "if m in sys.modules]; print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]"
    r = cli("ui", "--help")
    assert r.returncode == 0 and "Example:" in r.stdout and "pip install 'kohyawan[ui]'" in r.stdout


def test_busy_port_and_bad_token_are_one_line_exit_2():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = cli("ui", "--port", str(port))
    assert r.returncode == 2 and r.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert r.stderr.count("\n") == 1
    r = cli("ui", "--token", "short")
    rule = "error: --token: use at least 8 characters, each a letter, a digit or one of . _ ~ -\n"
    assert r.returncode == 2 and r.stderr == rule
    r = cli("ui", "--token", "s3cr+t&x=1#y")      # would be read back from the printed URL as another token
    assert r.returncode == 2 and r.stderr == rule


BATCH = """
[defaults]
profile = "character"
task = "t2v-1.3B"
rehearse = true
registry = "batch-registry"
overrides = { max_train_epochs = 2 }

[[jobs]]
client = "brand-x"
name = "sarah"
dataset = "data/sarah"
"""


@pytest.mark.slow
def test_grid_sweep_and_batch_pages_show_what_the_commands_wrote(tmp_path):
    from batchkit import FAST_ENV, write_manifest
    from comfy_fake_server import FakeComfy, ffmpeg_path
    from kohyawan.batch import driver, tables

    manifest = write_manifest(tmp_path, BATCH, datasets=("sarah",))
    r = cli("batch", str(manifest), **FAST_ENV)
    assert r.returncode == 0, r.stderr
    r = cli("sweep", "--profile", "character", "--dataset", str(tmp_path / "data" / "sarah"), "--task", "t2v-1.3B",
            "--variants", "conservative,standard", "--runs-dir", str(tmp_path / "runs"), "--name", "ab", "--rehearse",
            "--set", "max_train_epochs=2", **FAST_ENV)
    assert r.returncode == 0, r.stderr
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\nsarah <smiles>\n")
    with FakeComfy(tmp_path / "comfy", loras=["sarah_v1.safetensors"], ffmpeg=ffmpeg_path()) as fake:
        r = cli("comfy", "grid", "--lora", "sarah_v1.safetensors", "--strengths", "0.8,1.0", "--prompts", str(prompts),
                "--include-base", "--frames", "5", "--steps", "2", "--out", str(tmp_path / "grids" / "g1"),
                "--server", fake.url)
    assert r.returncode == 0, r.stderr
    app = create_app(UiConfig(runs_dirs=(tmp_path / "runs",), grid_dirs=(tmp_path / "grids",),
                              batch_dirs=(tmp_path / "clients.batch",)))
    c = TestClient(app, base_url=LOCAL)
    overview = c.get("/tests", headers=HTML).text
    assert 'href="/grids/0/g1"' in overview and 'href="/sweeps/0/ab"' in overview and 'href="/batches/0"' in overview
    assert "6/6 cells done" in overview and "1 succeeded" in overview
    grid = c.get("/grids/0/g1", headers=HTML).text
    manifest = json.loads((tmp_path / "grids" / "g1" / "grid.json").read_text())
    assert "sarah &lt;smiles&gt;" in grid and 'src="/files/0/g1/contact_sheet.png"' in grid
    for cell in manifest["cells"]:
        (out,) = cell["outputs"]
        assert f'src="/files/0/g1/{out}"' in grid
        assert c.get(f"/files/0/g1/{out}").content == (tmp_path / "grids" / "g1" / out).read_bytes()
    sweep_doc = json.loads((tmp_path / "runs" / "ab" / "sweep.json").read_text())
    sweep = c.get("/sweeps/0/ab", headers=HTML).text
    for row in tables.sweep_rows(sweep_doc):
        assert all(f">{cell}<" in sweep for cell in row[1:]), row
    assert 'href="/runs/0/ab-standard">standard<' in sweep
    batch = c.get("/batches/0", headers=HTML).text
    for row in tables.batch_rows(driver.status(tmp_path / "clients.batch")):
        assert all(f"<td>{cell}</td>" in batch for cell in row if cell), row
