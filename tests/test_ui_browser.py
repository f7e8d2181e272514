"""kohyawan ui end to end in a real headless browser (Debian's chromium, driven by playwright, which downloads
no browser of its own): the runs list follows a training rehearsal live, the run page shows the loss curve
and the ladder step of an injected OOM, a promotion on the page changes the registry on disk, a request
without the token on a non-local bind and a ``..`` path are refused. It screenshots every page: into a
temporary folder, or into ``$KOHYAWAN_UI_SCREENSHOTS`` (``docs/ui`` for the README)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from comfy_fake_server import FakeComfy, ffmpeg_path
from runtime_helpers import make_dataset, run_cli
from ui_helpers import KOHYAWAN, UiServer, cli, export, finished_run_with_oom, metrics_step, start_run, stop_process, \
    wait_until

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    path = os.environ.get("KOHYAWAN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    why = None
    if not path:
        why = "no chromium (apt-get install -y chromium; .ci/run installs it when it can)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            why = "playwright is not installed (pip install '.[test]')"
    if why:
        if os.environ.get("KOHYAWAN_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return path


def shoot(page, folder: Path, name: str) -> Path:
    """A full-page screenshot, reduced to 256 colours so each PNG stays small."""
    from PIL import Image

    raw = folder / f".{name}.raw.png"
    page.screenshot(path=str(raw), full_page=True)
    with Image.open(raw) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        out = folder / f"{name}.png"
        small.save(out, optimize=True)
    raw.unlink()
    return out


@pytest.fixture
def world(tmp_path):
    make_dataset(tmp_path / "data")
    done = finished_run_with_oom(tmp_path, "sarah-oom")
    registry = tmp_path / "registry"
    export(done, registry)
    sweep = run_cli([*KOHYAWAN, "sweep", "--profile", "character", "--dataset", str(tmp_path / "data"), "--task",
                     "t2v-1.3B", "--variants", "conservative,standard", "--runs-dir", str(tmp_path / "runs"),
                     "--name", "ab", "--rehearse", "--set", "max_train_epochs=3", "--set", "save_every_n_steps=4",
                     "--set", "resolution=[64,64]"], timeout=300)
    assert sweep.returncode == 0, sweep.stderr
    # v2 from the sweep's "standard" variant: its hyperparameters differ, and the model page shows how
    export(tmp_path / "runs" / "ab-standard", registry, "--notes", "standard variant: lower learning rate")
    assert cli("registry", "promote", "sarah", "v1", "--registry", str(registry), "--reason", "first tests passed",
               "--force", KOHYAWAN_USER="ana").returncode == 0  # --force: a rehearsal's LoRA
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sarah waves at the camera\nsarah walks on a beach at sunset\n")
    lora = "wan2.2_character_sarah_v1.safetensors"
    with FakeComfy(tmp_path / "comfy", loras=[lora, "wan2.2_character_sarah_v2.safetensors"],
                   ffmpeg=ffmpeg_path()) as fake:
        grid = run_cli([*KOHYAWAN, "comfy", "grid", "--lora", "wan2.2_character_sarah_v2.safetensors", "--strengths",
                        "0.6,0.8,1.0", "--prompts", str(prompts), "--include-base", "--compare", lora,
                        "--frames", "9", "--steps", "4", "--out", str(tmp_path / "grids" / "sarah-v2"),
                        "--server", fake.url], timeout=300)
    assert grid.returncode == 0, grid.stderr
    return {"root": tmp_path, "registry": registry}


def open_browser(pw, exe: str, profile: Path):
    return pw.chromium.launch_persistent_context(str(profile), executable_path=exe, headless=True, args=CHROMIUM_FLAGS,
                                                 viewport={"width": 1280, "height": 860})


def runs_list_goes_live(page, base: str, run_dir: Path, shots: Path) -> None:
    """The live run's step advances on the runs list without a reload."""
    from playwright.sync_api import expect

    wait_until(lambda: metrics_step(run_dir) >= 2, timeout=120)
    page.goto(base + "/runs")
    cell = page.locator('tr[data-run="sarah-live"] .steps')
    expect(cell).to_be_visible()
    first = int(cell.inner_text().split("/")[0])
    page.evaluate("window.__same_page = true")
    page.wait_for_function(
        "n => parseInt(document.querySelector('tr[data-run=\"sarah-live\"] .steps').textContent) > n",
        arg=first, timeout=15000)
    assert page.evaluate("window.__same_page") is True
    expect(page.locator('tr[data-run="sarah-live"] .state')).to_have_text("running")
    shoot(page, shots, "runs")


def run_page_shows_the_oom(page, base: str, run_dir: Path, shots: Path) -> None:
    """The loss curve, and the ladder step of the injected OOM (it comes in live); then the checkpoints."""
    from playwright.sync_api import expect

    page.goto(base + "/runs/0/sarah-live")
    expect(page.locator("#loss-chart canvas").first).to_be_visible()
    expect(page.locator("#mem-chart canvas").first).to_be_visible()
    mark = page.locator(".ladder-mark").filter(has_text="oom_vram")
    expect(mark).to_have_count(1, timeout=30000)
    assert "rung fp8_base" in mark.inner_text()
    expect(page.locator("tr.attempt.oom_vram")).to_have_count(1)
    wait_until(lambda: metrics_step(run_dir) >= 30, timeout=120)
    page.wait_for_timeout(1500)
    shoot(page, shots, "run")
    page.goto(base + "/runs/0/sarah-oom/checkpoints")
    expect(page.locator("tr.candidate").first).to_be_visible()
    shoot(page, shots, "checkpoints")


def promote_on_the_page(page, base: str, registry: Path, shots: Path) -> None:
    """Promote v2 on the model page, then read the index on disk."""
    from playwright.sync_api import expect

    page.goto(base + "/registry")
    shoot(page, shots, "registry")
    page.goto(base + "/registry/character/demo/sarah")
    row = page.locator('tr[data-version="2"]')
    row.locator('form:has(button.promote) input[name="reason"]').fill("sharper faces at 0.8")
    row.locator("input.force").check()  # a rehearsal's LoRA: promoted on purpose
    row.locator("button.promote").click()
    expect(page.locator("#done")).to_contain_text("v2 promoted; current is v2 (by ana)")
    model = json.loads((registry / "index.json").read_text())["models"]["character/demo/sarah"]
    assert [v["status"] for v in model["versions"]] == ["deprecated", "current"]
    assert model["events"][-1]["reason"] == "sharper faces at 0.8" and model["events"][-1]["user"] == "ana"
    assert "learning_rate" in page.locator('tr[data-version="2"] td.diff').inner_text()
    expect(page.locator("#current")).to_have_text("v2")
    shoot(page, shots, "model")


def grids_and_sweeps(page, base: str, shots: Path) -> None:
    from playwright.sync_api import expect

    page.goto(base + "/tests")
    expect(page.locator(".card img")).to_be_visible()
    shoot(page, shots, "tests")
    page.locator(".card").first.click()
    expect(page.locator("img.sheet")).to_be_visible()
    assert page.locator("table.cells video").count() == 2 * 7
    shoot(page, shots, "grid")
    page.goto(base + "/sweeps/0/ab")
    expect(page.locator("table.sweep tbody tr")).to_have_count(2)
    shoot(page, shots, "sweep")


def test_dashboard_end_to_end(world, tmp_path):
    from playwright.sync_api import sync_playwright

    exe = chromium()
    shots = Path(os.environ.get("KOHYAWAN_UI_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    root = world["root"]
    live = start_run(root, "sarah-live", "--set", "max_train_epochs=25", step_s="0.25",
                     KOHYAWAN_REHEARSE_FAULTS="oom@7", KOHYAWAN_REHEARSE_FAULT_STATE=str(root / "live-faults.json"))
    try:
        with UiServer("--runs-dir", str(root / "runs"), "--registry", str(world["registry"]), "--grids",
                      str(root / "grids"), KOHYAWAN_USER="ana") as server, sync_playwright() as pw:
            browser = open_browser(pw, exe, tmp_path / "profile")
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # an event stream is cut whenever the page is left, and a refresh still in flight when the test
            # navigates away is aborted by the browser (net::ERR_ABORTED): neither is an error of the server
            page.on("requestfailed", lambda req: "/events?" in req.url or "ERR_ABORTED" in (req.failure or "")
                    or errors.append(f"request failed: {req.url} ({req.failure})"))
            runs_list_goes_live(page, server.base, root / "runs" / "sarah-live", shots)
            run_page_shows_the_oom(page, server.base, root / "runs" / "sarah-live", shots)
            promote_on_the_page(page, server.base, world["registry"], shots)
            grids_and_sweeps(page, server.base, shots)
            bad = page.goto(server.base + "/files/0/..%2F..%2Fetc%2Fpasswd")     # a '..' path is refused
            assert bad.status == 403 and "leaves the served folder" in page.content()
            assert not errors, errors
            browser.close()

        # a non-local bind: no token, no page; the printed address (with its token) opens it
        with UiServer("--runs-dir", str(root / "runs"), "--host", "127.0.0.2") as guarded, sync_playwright() as pw:
            browser = open_browser(pw, exe, tmp_path / "profile2")
            page = browser.new_page()
            refused = page.goto(guarded.base + "/runs")
            assert refused.status == 401 and "needs its access token" in page.content()
            assert page.goto(guarded.url).status == 200
            assert page.goto(guarded.base + "/runs").status == 200     # the cookie carries the token now
            browser.close()
    finally:
        stop_process(live)
