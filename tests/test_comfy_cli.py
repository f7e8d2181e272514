import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from comfy_fake_server import FakeComfy, ffmpeg_path
from kohyawan.cli import cli


@pytest.fixture
def fake(tmp_path):
    with FakeComfy(tmp_path / "comfy", loras=["sarah_v1.safetensors", "sarah_v2.safetensors"], ffmpeg=ffmpeg_path()) as server:
        yield server


def invoke(*args):
    return CliRunner().invoke(cli, ["comfy", *args])


def test_workflow_exact_output(tmp_path):
    out = tmp_path / "my wf.json"
    r = invoke("workflow", "--lora", "sarah_high_v2.safetensors", "--lora", "sarah_low_v2.safetensors",
               "--lora", "grain.safetensors:0.5", "--prompt", "x", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert r.stdout == (f"wrote {out} (t2v-A14B, 18 nodes)\n"
                        "  high-noise LoRAs: sarah_high_v2.safetensors @ 0.80, grain.safetensors @ 0.50\n"
                        "  low-noise LoRAs:  sarah_low_v2.safetensors @ 0.80, grain.safetensors @ 0.50\n")
    assert len(json.loads(out.read_text())) == 18


def test_workflow_json(tmp_path):
    out = tmp_path / "wf.json"
    r = invoke("workflow", "--lora-high", "a.safetensors", "--frames", "33", "--json", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"path": str(out), "task": "t2v-A14B", "nodes": 15,
                                    "loras_high": [["a.safetensors", 1.0]], "loras_low": [], "validated_against": None}


def test_workflow_bad_input_is_one_line_exit_2(tmp_path):
    r = CliRunner().invoke(cli, ["comfy", "workflow", "--frames", "80", "--out", str(tmp_path / "w.json")])
    assert r.exit_code == 2
    assert r.stderr == "error: frames 80 must be of the form 4n+1 (1, 5, 9, ... 81)\n"
    assert not (tmp_path / "w.json").exists()


def test_workflow_validates_against_server(fake, tmp_path):
    out = tmp_path / "wf.json"
    r = CliRunner().invoke(cli, ["comfy", "workflow", "--lora", "nope.safetensors", "--vae", "vae2.2.safetensors",
                                                 "--out", str(out), "--server", fake.url])
    assert r.exit_code == 1
    assert r.stderr.splitlines() == [
        "  node 4 (VAELoader): vae_name: 'vae2.2.safetensors' is not available "
        "(allowed: 'wan_2.1_vae.safetensors', 'pixel_space')",
        "  node 7 (LoraLoaderModelOnly): lora_name: 'nope.safetensors' is not available "
        "(allowed: 'sarah_v1.safetensors', 'sarah_v2.safetensors')",
        "  node 10 (LoraLoaderModelOnly): lora_name: 'nope.safetensors' is not available "
        "(allowed: 'sarah_v1.safetensors', 'sarah_v2.safetensors')",
        f"error: the workflow does not validate against {fake.url}: 3 problems (listed above)",
    ]
    assert not out.exists()
    r = invoke("workflow", "--lora", "sarah_v1.safetensors", "--out", str(out), "--server", fake.url)
    assert r.exit_code == 0 and r.stdout.endswith(f"  validated against {fake.url}\n")


def test_i2v_workflow_uploads_local_image(fake, tmp_path):
    image = tmp_path / "start me.png"
    from PIL import Image
    Image.new("RGB", (32, 32), (1, 2, 3)).save(image)
    out = tmp_path / "wf.json"
    r = invoke("workflow", "--task", "i2v-A14B", "--image", str(image), "--lora", "sarah_v1.safetensors",
               "--unet-high", "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "--out", str(out), "--server", fake.url)
    assert r.exit_code == 0, r.output
    wf = json.loads(out.read_text())
    assert wf["5"] == {"class_type": "LoadImage", "inputs": {"image": "start me.png"}, "_meta": {"title": "start image"}}
    assert (fake.input_dir / "start me.png").is_file()


def test_grid_without_server_writes_workflows(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\na cat\n")
    r = invoke("grid", "--lora", "sarah_v2.safetensors", "--prompts", str(prompts), "--include-base", "--out", str(tmp_path / "g"))
    assert r.exit_code == 0, r.output
    assert r.stdout == (f"wrote 8 workflows to {tmp_path / 'g' / 'workflows'} (2 prompts x 4 columns)\n"
                        "  columns: base model (no LoRA); sarah_v2 @ 0.60; sarah_v2 @ 0.80; sarah_v2 @ 1.00\n"
                        "  (pass --server URL to run them and build the contact sheet)\n")
    assert len(list((tmp_path / "g" / "workflows").glob("*.json"))) == 8


def test_grid_runs_on_server_contact_sheet_and_index(fake, tmp_path):
    from PIL import Image

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\nsarah <smiles> & waves\n")
    out = tmp_path / "grid out"
    r = CliRunner().invoke(cli, [
        "comfy", "grid", "--lora", "sarah_v2.safetensors", "--strengths", "0.5,1.0", "--prompts", str(prompts),
        "--include-base", "--compare", "sarah_v1.safetensors", "--frames", "17", "--steps", "4",
        "--out", str(out), "--server", fake.url, "--json"])
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert {k: data[k] for k in ("cells", "done", "failed", "contact_sheet", "index")} == {
        "cells": 10, "done": 10, "failed": 0, "contact_sheet": "contact_sheet.png", "index": "index.html"}
    assert "[1/10] p01-base: base model (no LoRA), prompt 1" in r.stderr
    manifest = json.loads((out / "grid.json").read_text())
    assert all(c["status"] == "done" and c["prompt_id"] for c in manifest["cells"])
    for cell in manifest["cells"]:
        (output,) = cell["outputs"]
        assert (out / output).stat().st_size > 0 and output.endswith(".mp4")

    # contact sheet: one tile per cell; the fake's colour encodes the strengths (red) and the version (blue)
    sheet = Image.open(out / "contact_sheet.png").convert("RGB")
    cols, rows = 5, 2
    from kohyawan.comfy.sheet import LABEL_LINES, LINE_HEIGHT, PAD, THUMB
    assert sheet.size == (PAD + cols * (THUMB + PAD), PAD + rows * (THUMB + LABEL_LINES * LINE_HEIGHT + 2 * PAD))

    def tile(row, col):
        x = PAD + col * (THUMB + PAD) + THUMB // 2
        y = PAD + row * (THUMB + LABEL_LINES * LINE_HEIGHT + 2 * PAD) + THUMB // 2
        return sheet.getpixel((x, y))
    expected = [(0, 230, 40), (128, 120, 200), (255, 120, 200), (128, 120, 40), (255, 120, 40)]
    for row in range(rows):
        for col, want in enumerate(expected):
            got = tile(row, col)
            assert all(abs(a - b) <= 12 for a, b in zip(got, want)), (row, col, got, want)

    page = (out / "index.html").read_text()
    assert "sarah &lt;smiles&gt; &amp; waves" in page
    import re
    srcs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert srcs and all(not s.startswith(("/", "http")) for s in srcs)
    from urllib.parse import unquote
    assert all((out / unquote(s)).is_file() for s in srcs)
    assert sum(s.endswith(".mp4") for s in srcs) == 20  # a <video> and a link per cell


def test_grid_execution_error_fails_cells_exit_1(fake, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n")
    fake.fail_class = "VAEDecode"
    r = CliRunner().invoke(cli, [
        "comfy", "grid", "--lora", "sarah_v2.safetensors", "--strengths", "1.0", "--prompts", str(prompts),
        "--frames", "5", "--steps", "2", "--out", str(tmp_path / "g"), "--server", fake.url])
    assert r.exit_code == 1
    assert r.stderr.splitlines()[-1] == (f"error: 1 of 1 grid cells failed (see {tmp_path / 'g' / 'grid.json'}); first: "
                                         "p01-lora-s1.00: ComfyUI failed at node 14 (VAEDecode): "
                                         "torch.OutOfMemoryError: Allocation on device")
    manifest = json.loads((tmp_path / "g" / "grid.json").read_text())
    assert manifest["cells"][0]["status"] == "failed"
    assert "Allocation on device" in (tmp_path / "g" / "index.html").read_text()
    assert (tmp_path / "g" / "contact_sheet.png").is_file()


def test_grid_server_down_exit_2(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n")
    r = CliRunner().invoke(cli, ["comfy", "grid", "--lora", "a.safetensors", "--prompts", str(prompts),
                                                 "--out", str(tmp_path / "g"), "--server", f"http://127.0.0.1:{port}"])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: cannot reach ComfyUI at http://127.0.0.1:{port}: ")
    assert len(r.stderr.splitlines()) == 1


@pytest.mark.slow
def test_ctrl_c_interrupts_the_running_prompt(fake, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n")
    fake.hang = True
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "kohyawan", "comfy", "grid", "--lora", "sarah_v1.safetensors",
                             "--strengths", "1", "--prompts", str(prompts), "--out", str(tmp_path / "g"),
                             "--server", fake.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(200):
            if fake.running:
                break
            time.sleep(0.05)
        assert fake.running, "the grid never started a prompt"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert len(fake.interrupts) == 1 and fake.interrupts[0]["prompt_id"], stderr
    assert json.loads((tmp_path / "g" / "grid.json").read_text())["cells"][0]["status"] == "interrupted"
