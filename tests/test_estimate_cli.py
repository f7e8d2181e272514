"""`kohyawan estimate` end to end (CliRunner on exact output, one real process)."""

import json
import os
import subprocess
from pathlib import Path

from click.testing import CliRunner

from kohyawan.config import profiles
from kohyawan.cli import cli
from test_estimate import make_dataset, write_run


def run(*args):
    return CliRunner().invoke(cli, ["estimate", *args])


def test_estimate_table_marks_the_starting_rung(tmp_path):
    data = make_dataset(tmp_path / "my data")
    r = run("--profile", "character", "--dataset", str(data), "--gpu", "rtx4090", "--runs-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "character (t2v-A14B, expert both) on rtx4090" in r.output
    marked = [line for line in r.output.splitlines() if line.lstrip().startswith(">")]
    assert len(marked) == 1 and "yes" in marked[0]
    assert "Start at: blocks_to_swap=" in r.output
    assert "Cost of 600 steps" in r.output and "RunPod" in r.output and "(guide price)" in r.output
    assert "Disk: latent caches" in r.output
    # what it rests on: the clips here are empty files, so it says it assumed their size and length
    assert "40 media file(s) could not be read" in r.output and "NOT read from the data" in r.output
    assert "Peak from step 2 on, when the optimizer state exists" in r.output
    assert "Time: fitted to 3 measured steps on h200 (A, D, C-calibrate)" in r.output and "rtx4090 scaled from it" in r.output
    assert "Memory model checked against 10 GPU measurements on NVIDIA H200" in r.output


def test_estimate_json_schema(tmp_path):
    data = make_dataset(tmp_path / "d")
    r = run("--profile", "motion", "--dataset", str(data), "--vram", "80", "--ram", "64", "--json",
            "--runs-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["version"] == 1 and doc["profile"] == "motion" and doc["items"] == 40
    assert doc["vram_gib"] == 80 and doc["ram_gib"] == 64 and doc["gpu"] is None
    assert doc["first_fit"] >= 0 and doc["first_fit_label"] == doc["rungs"][doc["first_fit"]]["label"]
    assert doc["rungs"][0]["label"] == "base" and doc["rungs"][0]["s_per_step"] is None   # no GPU throughput
    assert all(r_["fits"] is not None for r_ in doc["rungs"])
    flags = [(r_["label"], r_["needs_recache"], r_["keeps_state"]) for r_ in doc["rungs"]]
    assert flags[0] == ("base", False, True)
    recache = [label for label, needs, _ in flags if needs]
    assert recache and recache[0] == "fewer_frames"          # every rung from fewer_frames on needs new caches
    assert flags[-1] == ("lower_rank", True, False)
    base = doc["rungs"][0]
    assert base["workload"]["basis"] == "settings" and base["workload"]["clips"] == 40
    assert base["workload"]["largest_batch"]["frames"] == 33 and base["first_step_vram_gib"] < base["vram_gib"]
    assert doc["alloc_conf"] == "expandable_segments:True"
    assert all(c["ok"] for c in doc["checked_against"]["points"]) and doc["checked_against"]["tolerance"] == 0.07


def test_torchs_newer_allocator_variable_is_the_one_the_estimate_follows(tmp_path):
    """torch reads PYTORCH_ALLOC_CONF before PYTORCH_CUDA_ALLOC_CONF; kohyawan run does too, so must the estimate."""
    data = make_dataset(tmp_path / "d")
    args = ["estimate", "--profile", "motion", "--dataset", str(data), "--vram", "80", "--json", "--runs-dir",
            str(tmp_path)]
    env = {"PYTORCH_ALLOC_CONF": "expandable_segments:False", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    off = json.loads(CliRunner().invoke(cli, args, env=env).stdout)
    on = json.loads(CliRunner().invoke(cli, args, env={"PYTORCH_ALLOC_CONF": None}).stdout)
    assert off["alloc_conf"] == "expandable_segments:False" and on["alloc_conf"] == "expandable_segments:True"
    assert [r["expandable_segments"] for r in off["rungs"]] == [False] * len(off["rungs"])
    assert off["rungs"][0]["vram_gib"] > on["rungs"][0]["vram_gib"]    # the larger reserve without them


def test_estimate_accepts_every_config_render_option(tmp_path):
    data = make_dataset(tmp_path / "d")
    dit = tmp_path / "dit.safetensors"
    r = run("--profile", "style", "--dataset", str(data), "--task", "i2v-A14B", "--expert", "high",
            "--variant", "aggressive", "--dit", str(dit), "--dit-high-noise", str(dit), "--vae", str(dit),
            "--t5", str(dit), "--set", "blocks_to_swap=20", "--set", "resolution=[640,368]", "--gpu", "h100",
            "--json", "--runs-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert (doc["task"], doc["expert"], doc["variant"], doc["gpu"]) == ("i2v-A14B", "high", "aggressive",
                                                                         "h100-80gb")
    assert doc["first_fit"] == 0


def test_estimate_bad_gpu_is_bad_input(tmp_path):
    r = run("--profile", "character", "--gpu", "voodoo5")
    assert r.exit_code == 2 and "unknown GPU 'voodoo5'" in r.output


def test_estimate_learns_from_runs(tmp_path):
    data = make_dataset(tmp_path / "d")
    spec = profiles.resolve("character", dataset_dir=data, expert="low",
                            sets=("fp8_base=true", "blocks_to_swap=20"))
    write_run(tmp_path / "runs", "r1", spec, [{"n": 1, "outcome": "succeeded", "changes": {},
                                               "peak_vram_gb": 14.0}], {1: [30.0] * 6})
    r = run("--profile", "character", "--dataset", str(data), "--expert", "low", "--set", "fp8_base=true",
            "--set", "blocks_to_swap=20", "--gpu", "NVIDIA GeForce RTX 4090", "--runs-dir", str(tmp_path / "runs"))
    assert r.exit_code == 0, r.output
    assert "Learnt from your runs: peak VRAM scaled by" in r.output
    assert "s/step scaled by" in r.output


def test_estimate_real_process_without_gpu(kohyawan_argv, tmp_path):
    done = subprocess.run([*kohyawan_argv, "estimate", "--profile", "domain", "--steps", "100"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr
    if "No GPU given or found" not in done.stdout:     # a machine with a GPU marks a rung instead
        assert "Start at:" in done.stdout or "Nothing on the ladder fits" in done.stdout
    assert "Disk per item" in done.stdout


def test_estimate_says_when_host_ram_is_what_does_not_fit(tmp_path):
    r = run("--profile", "character", "--gpu", "rtx4090", "--ram", "16", "--runs-dir", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "fits the GPU but needs" in r.output and "host RAM (limit 16.0)" in r.output


def test_runs_dir_defaults_to_the_project_setting(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "d")
    spec = profiles.resolve("character", dataset_dir=data, expert="low", sets=("fp8_base=true",))
    write_run(tmp_path / "proj" / "my runs", "r1", spec, [{"n": 1, "outcome": "succeeded", "changes": {},
                                                           "peak_vram_gb": 30.0}], {})
    (tmp_path / "proj" / "kohyawan.toml").write_text('[kohyawan]\nruns_dir = "my runs"\n')
    monkeypatch.chdir(tmp_path / "proj")
    r = run("--profile", "character", "--dataset", str(data), "--expert", "low", "--set", "fp8_base=true",
            "--gpu", "rtx4090")
    assert r.exit_code == 0, r.output
    assert "Learnt from your runs: peak VRAM scaled by" in r.output
