"""Against a real ComfyUI, when one is configured (skipped otherwise):

- ``KOHYAWAN_COMFYUI_URL=http://host:port``: a running server. Only read-only checks plus prompts that its
  own validation rejects, so nothing is rendered on it.
- ``KOHYAWAN_COMFYUI_DIR=/path/to/ComfyUI``: a checkout this test starts on CPU on a free port, with a temporary
  base directory holding empty placeholder model files (names as in ComfyUI's WAN 2.2 templates). Its Python is
  ``KOHYAWAN_COMFYUI_PYTHON`` (default: this interpreter); extra server arguments go in ``KOHYAWAN_COMFYUI_ARGS``
  (e.g. ``--front-end-root DIR`` when comfyui-frontend-package is not installed). Prompts are validated and
  queued for real; execution then stops at the first loader (the placeholders are empty), which exercises the
  ``execution_error`` path.
"""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from kohyawan.cli import cli
from kohyawan.comfy.client import ComfyClient, ExecutionFailed, PromptRejected
from kohyawan.comfy.validate import check_workflow
from kohyawan.comfy.workflow import DEFAULT_MODELS, build_workflow

pytestmark = [pytest.mark.integration, pytest.mark.slow]

URL = os.environ.get("KOHYAWAN_COMFYUI_URL")
DIR = os.environ.get("KOHYAWAN_COMFYUI_DIR")
LORA = "kohyawan_integration_test.safetensors"
FILE_INPUTS = {"unet_name", "clip_name", "vae_name", "lora_name", "image"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    if URL:
        yield {"url": URL, "own": False}
        return
    if not DIR:
        pytest.skip("set KOHYAWAN_COMFYUI_URL or KOHYAWAN_COMFYUI_DIR to run against a real ComfyUI")
    if not (Path(DIR) / "main.py").is_file():
        pytest.fail(f"KOHYAWAN_COMFYUI_DIR={DIR} is not a ComfyUI checkout (no main.py)")
    base = tmp_path_factory.mktemp("comfy base")
    models = base / "models"
    names = {("diffusion_models", n) for m in DEFAULT_MODELS.values() for n in (m.unet_high, m.unet_low)}
    names |= {("text_encoders", m.clip) for m in DEFAULT_MODELS.values()}
    names |= {("vae", m.vae) for m in DEFAULT_MODELS.values()} | {("loras", LORA)}
    for folder, name in names:
        (models / folder).mkdir(parents=True, exist_ok=True)
        (models / folder / name).touch()
    (base / "custom_nodes").mkdir()
    port = _free_port()
    python = os.environ.get("KOHYAWAN_COMFYUI_PYTHON", sys.executable)
    argv = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
            "--disable-auto-launch", *shlex.split(os.environ.get("KOHYAWAN_COMFYUI_ARGS", ""))]
    log = open(base / "comfyui.log", "w")
    proc = subprocess.Popen(argv, cwd=DIR, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(360):
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode}; see {base / 'comfyui.log'}")
            try:
                urllib.request.urlopen(url + "/object_info/UNETLoader", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"ComfyUI did not answer within 180 s; see {base / 'comfyui.log'}")
        yield {"url": url, "own": True, "base": base}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _small(task="t2v-A14B", **kw):
    return build_workflow(task, loras_high=[(LORA, 1.0)], loras_low=[(LORA, 0.8)], prompt="a fox in snow",
                          width=64, height=64, frames=5, steps=2, **kw)


def test_our_graphs_validate_against_real_object_info(comfy, tmp_path):
    client = ComfyClient(comfy["url"])
    info = client.object_info()
    graphs = [_small(), _small(output="webp")]
    if comfy["own"]:
        from PIL import Image
        image = tmp_path / "start frame.png"
        Image.new("RGB", (64, 64), (200, 100, 50)).save(image)
        graphs.append(_small("i2v-A14B", image=client.upload_image(image)))
    for graph in graphs:
        problems = check_workflow(graph, info)
        if comfy["own"]:
            assert [str(p) for p in problems] == []
        else:  # someone's server: its model files are its own business, the graph must still fit
            assert [str(p) for p in problems if p.input not in FILE_INPUTS] == []


def test_real_validation_rejects_unknown_lora_per_node(comfy):
    graph = _small()
    graph["7"]["inputs"]["lora_name"] = "kohyawan_no_such_lora.safetensors"
    with pytest.raises(PromptRejected) as info:
        ComfyClient(comfy["url"]).queue_prompt(graph)
    assert any(d.startswith("node 7 (LoraLoaderModelOnly): Value not in list: lora_name: "
                            "'kohyawan_no_such_lora.safetensors' not in") for d in info.value.details), info.value.details


def test_real_queue_and_execution_error(comfy):
    if not comfy["own"]:
        pytest.skip("runs a prompt: only on a server this test started")
    with pytest.raises(ExecutionFailed, match=r"ComfyUI failed at node \d+ \((UNETLoader|VAELoader|CLIPLoader)\)"):
        ComfyClient(comfy["url"]).run(_small(), timeout=120)


def test_real_grid_records_failed_cells(comfy, tmp_path):
    if not comfy["own"]:
        pytest.skip("runs prompts: only on a server this test started")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n")
    out = tmp_path / "grid"
    r = CliRunner().invoke(cli, ["comfy", "grid", "--lora", LORA, "--strengths", "1.0", "--prompts", str(prompts),
                                 "--include-base", "--width", "64", "--height", "64", "--frames", "5", "--steps", "2",
                                 "--out", str(out), "--server", comfy["url"]])
    assert r.exit_code == 1, r.output
    manifest = json.loads((out / "grid.json").read_text())
    assert [c["status"] for c in manifest["cells"]] == ["failed", "failed"]
    assert (out / "index.html").is_file() and (out / "contact_sheet.png").is_file()
