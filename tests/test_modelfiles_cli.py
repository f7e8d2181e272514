"""``kohyawan models inspect``: exact output, the JSON schema, every file reported, exit 2 on bad files."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from kohyawan.modelfiles import standins as fabricate
from kohyawan.cli import cli


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    fabricate.write_dit(tmp_path / "wan2.2_t2v_high_noise_14B_fp16.safetensors", dtype="fp16")
    fabricate.write_dit(tmp_path / "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors", variant="i2v", dtype="fp8_scaled")
    fabricate.write_vae(tmp_path / "wan_2.1_vae.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(*args):
    return CliRunner().invoke(cli, ["models", "inspect", *args])


TABLE_120 = """\
file                                              kind   model            dtype        params    expert   notes
────────────────────────────────────────────────────────────────────────────────────────────────────────────────────────
wan2.2_t2v_high_noise_14B_fp16.safetensors        dit    Wan 2.2 T2V      fp16         14.29B    high     Wan 2.2 by
                                                         A14B                                             name (same
                                                                                                          layout as Wan
                                                                                                          2.1 T2V 14B)
wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors   dit    Wan 2.2 I2V      fp8_scaled   14.29B    low      ComfyUI
                                                         A14B                                             scaled-fp8
                                                                                                          checkpoint
                                                                                                          (scale tensors
                                                                                                          beside fp8
                                                                                                          weights)
wan_2.1_vae.safetensors                           vae    Wan 2.1          bf16         126.89M   -        -
"""


def _strip(text):
    return "".join(line.rstrip() + "\n" for line in text.splitlines())


def test_table_exact(models_dir):
    r = _run("wan2.2_t2v_high_noise_14B_fp16.safetensors", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
             "wan_2.1_vae.safetensors")
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    assert _strip(r.stdout) == _strip(TABLE_120)
    assert max(len(line) for line in r.stdout.splitlines()) <= 120  # never wider than the terminal


def test_narrow_terminal_lists_each_file(models_dir, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    r = _run("wan2.2_t2v_high_noise_14B_fp16.safetensors", "wan_2.1_vae.safetensors")
    assert r.exit_code == 0
    assert r.stdout == (
        "wan2.2_t2v_high_noise_14B_fp16.safetensors\n"
        "  Wan 2.2 T2V A14B DiT (high-noise expert by name), fp16, 14.29B parameters\n"
        "  note: Wan 2.2 by name (same layout as Wan 2.1 T2V 14B)\n"
        "wan_2.1_vae.safetensors\n"
        "  Wan 2.1 VAE (z_dim 16), bf16, 126.89M parameters\n")


def test_bad_file_among_good_ones_reports_all_and_exits_2(models_dir):
    r = _run("wan_2.1_vae.safetensors", "empty.safetensors", "missing.safetensors", "wan2.2_t2v_high_noise_14B_fp16.safetensors")
    assert r.exit_code == 2
    assert r.stderr == ("error: empty.safetensors: not a safetensors file (empty)\n"
                        "error: missing.safetensors: no such file\n")
    assert "wan_2.1_vae.safetensors" in r.stdout and "wan2.2_t2v_high_noise_14B_fp16" in r.stdout


def test_single_bad_file_is_one_line(models_dir):
    r = _run("empty.safetensors")
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", "error: empty.safetensors: not a safetensors file (empty)\n")


def test_json_schema(models_dir):
    r = _run("--json", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors", "empty.safetensors")
    assert r.exit_code == 2
    doc = json.loads(r.stdout)
    assert doc["version"] == 1 and len(doc["files"]) == 2
    good, bad = doc["files"]
    assert set(good) == {"ok", "path", "kind", "family", "size", "variant", "dtype", "t5_format", "vae_version",
                         "expert_hint", "params", "tensors", "file_size", "key_prefix", "layout_ok", "arch", "notes",
                         "file_format", "description"}
    assert (good["ok"], good["kind"], good["family"], good["size"], good["variant"], good["dtype"]) == (
        True, "dit", "wan2.2", "14B", "i2v", "fp8_scaled")
    assert (good["expert_hint"], good["params"], good["tensors"], good["layout_ok"]) == ("low", 14288901584, 1496, True)
    assert good["arch"] == {"dim": 5120, "layers": 40, "in_dim": 36, "out_dim": 16}
    assert bad == {"path": "empty.safetensors", "ok": False,
                   "error": "empty.safetensors: not a safetensors file (empty)"}
    assert r.stderr == "error: empty.safetensors: not a safetensors file (empty)\n"


def test_no_files_is_a_usage_error():
    r = _run()
    assert r.exit_code == 2 and "Missing argument" in r.stderr


@pytest.mark.parametrize("name", ["my [red]model[bold] (v2) 'q' $(touch pwned).safetensors",
                                  "模型 low_noise ünïcode.safetensors", "semi;colon `tick`.safetensors"])
def test_hostile_names_print_as_typed(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    fabricate.write_vae(tmp_path / name)
    r = _run("--json", name)
    assert r.exit_code == 0
    assert json.loads(r.stdout)["files"][0]["path"] == name
    monkeypatch.setenv("COLUMNS", "80")
    r = _run(name)
    assert r.stdout.splitlines()[0] == name  # not eaten as rich markup
    assert not (tmp_path / "pwned").exists()


def test_newline_in_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fabricate.write_vae(tmp_path / "two\nlines.safetensors")
    monkeypatch.setenv("COLUMNS", "80")
    r = _run("two\nlines.safetensors")
    assert r.exit_code == 0 and r.stdout.splitlines()[0] == "'two\\nlines.safetensors'"


def test_real_process(models_dir, kohyawan_argv):
    p = subprocess.run([*kohyawan_argv, "models", "inspect", "--json", "wan_2.1_vae.safetensors"],
                       capture_output=True, text=True, cwd=models_dir, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["files"][0]["vae_version"] == "2.1"
