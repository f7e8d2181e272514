"""CLI surface of lora inspect/verify/convert/resize/merge and checkpoints: exact text, --json, exit codes."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from kohyawan.cli import cli
from kohyawan.lora.fabricate import write_lora


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_commands_module_does_not_import_torch():
    code = "import sys, kohyawan.commands.lora, kohyawan.lora.inspect, kohyawan.lora.verify; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_verify_ok_and_not_ok(tmp_path):
    pytest.importorskip("torch")  # the LoRA fabricator and tools need torch
    good = write_lora(tmp_path / "my lora $(x).safetensors", rank=2, blocks=[0])
    code, out, _ = run("lora", "verify", good, "--task", "t2v-A14B")
    assert (code, out) == (0, "ok: 30 keys (10 modules) load onto t2v-A14B; 0 would be ignored\n")
    i2v = write_lora(tmp_path / "i2v.safetensors", task="i2v-14B", rank=2, blocks=[3])
    code, out, _ = run("lora", "verify", i2v, "--task", "i2v-A14B")
    assert code == 1
    assert out.splitlines()[:3] == [
        "NOT OK: 30 keys (10 modules) load onto i2v-A14B; 6 would be ignored",
        "  problem: 6 keys are Wan 2.1 image cross-attention (k_img/v_img), which the Wan 2.2 14B model of "
        "i2v-A14B does not have: ComfyUI drops them silently; this LoRA was trained for a Wan 2.1 I2V model",
        "  ignored: lora_unet_blocks_3_cross_attn_k_img.alpha (image_attn)",
    ]
    assert len(out.splitlines()) == 8
    code, out, _ = run("lora", "verify", i2v, "--task", "i2v-A14B", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and doc["loaded"] == 30 and len(doc["ignored"]) == 6
    assert set(doc) >= {"path", "task", "ok", "loaded", "modules", "ignored", "problems", "reasons"}


def test_bad_files_exit_2_with_one_line(tmp_path):
    (tmp_path / "cut.safetensors").write_bytes(b"\x08\x00")
    code, out, err = run("lora", "inspect", tmp_path / "cut.safetensors")
    assert (code, out) == (2, "")
    assert err == "error: cut.safetensors: not a safetensors file (2 bytes, too short for a header)\n"
    code, _, err = run("lora", "verify", tmp_path / "none.safetensors", "--task", "t2v-A14B")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


def test_inspect_text_and_json(tmp_path):
    pytest.importorskip("torch")  # the LoRA fabricator and tools need torch
    path = write_lora(tmp_path / "sarah_high.safetensors", task="t2v-1.3B", rank=2, alpha=1,
                      metadata={"kohyawan.task": "t2v-1.3B", "ss_steps": "600"})
    code, out, _ = run("lora", "inspect", path)
    assert code == 0
    assert out.splitlines()[1:8] == [
        "model     wan-1.3B",
        "naming    musubi, 300 modules in 30 blocks, 900 keys",
        "rank      2   alpha 1   dtype bf16",
        "size      as expected",
        "loads on  t2v-1.3B, t2v-1.3B-FC",
        "trained   task t2v-1.3B, expert high",
        "metadata  13 keys",
    ]
    doc = json.loads(run("lora", "inspect", path, "--json")[1])
    assert doc["rank"] == 2 and doc["model"] == "wan-1.3B" and doc["metadata"]["ss_steps"] == "600"
    # 30 blocks x (8 x (2*1536 + 1536*2 + 1) + (2*1536 + 8960*2 + 1) + (2*8960 + 1536*2 + 1)) x 2 bytes
    assert doc["expected_bytes"] == 30 * (8 * 6145 + 2 * 20993) * 2 and doc["size_ok"] is True


def test_convert_resize_merge_and_checkpoints_commands(tmp_path):
    pytest.importorskip("torch")  # the LoRA fabricator and tools need torch
    a = write_lora(tmp_path / "a.safetensors", task="t2v-1.3B", rank=4, blocks=[0], dtype="fp32")
    b = write_lora(tmp_path / "b.safetensors", task="t2v-1.3B", rank=2, blocks=[0], seed=2)
    code, out, _ = run("lora", "convert", a, "--to", "comfy", "--dtype", "bf16")
    assert (code, out) == (0, f"wrote {tmp_path}/a-comfy-bf16.safetensors: 10 modules, 20 keys, bf16, "
                              "alpha folded into the matrices\n")
    code, _, err = run("lora", "convert", a, "--to", "comfy", "--dtype", "bf16")
    assert code == 2 and "exists; choose another --out or pass --force" in err
    code, out, _ = run("lora", "resize", a, "--rank", "2", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["new_rank"] == 2 and len(doc["modules"]) == 10 and 0 < doc["retained"] < 1
    code, out, _ = run("lora", "merge", f"{a}:0.9", f"{b}:0.8", "--out", tmp_path / "m.safetensors")
    assert (code, out) == (0, f"wrote {tmp_path}/m.safetensors: a.safetensors x 0.9 + b.safetensors x 0.8; "
                              "rank 6, 10 modules, fp32\n")
    code, _, err = run("lora", "resize", a, "--rank", "8", "--out", tmp_path / "r8.safetensors")
    assert (code, err) == (2, "error: a.safetensors has rank 4; resize only lowers the rank (asked for 8)\n")
    code, out, _ = run("lora", "resize", a, "--rank", "3", "--device", "cpu")
    assert code == 0 and out.startswith(f"wrote {tmp_path}/a-r3.safetensors: rank 4 -> 3, fp32 (SVD on cpu)\n")
    code, _, err = run("lora", "resize", a, "--rank", "3", "--device", "tpu", "--out", tmp_path / "t.safetensors")
    assert (code, err) == (2, "error: --device 'tpu': expected auto, cpu, cuda or cuda:N\n")
    code, out, _ = run("checkpoints", tmp_path, "--json")
    assert code == 0 and {c["path"].rsplit("/", 1)[1] for c in json.loads(out)} == {
        "a.safetensors", "b.safetensors", "a-comfy-bf16.safetensors", "a-r2.safetensors", "a-r3.safetensors",
        "m.safetensors"}
    code, out, _ = run("checkpoints", tmp_path, "--no-effect")
    assert code == 0 and out.splitlines()[0].split() == ["file", "step", "ep", "att", "expert", "size", "dtype",
                                                          "rank", "effect", "loss", "trend"]
