"""The GPU check's ladder case (shared/gpu-check: two 512x512x81 clips, character profile, one 14B expert, fp16
weights, torch AdamW, a 23.5 GiB allocator cap) rehearsed end to end: started at the base settings, the run
climbs the ladder exactly as the real one did; started where the estimate says, it runs out of memory nowhere."""

import json
import sys

import media
from conftest import make_models
from runtime_helpers import ledger, run_cli


def _argv(tmp_path, name, start_rung):
    models = make_models(tmp_path / "models")
    data = tmp_path / "data" / "videos"
    if not data.is_dir():
        for i in range(2):
            media.video(data / f"c{i}.mp4", size="512x512", rate=16, seconds=81 / 16)
            (data / f"c{i}.txt").write_text("a test pattern with moving colour bars")
    return [sys.executable, "-m", "kohyawan", "run", "--profile", "character", "--task", "t2v-A14B", "--expert",
            "high", "--dataset", str(tmp_path / "data"), "--dit", str(models["dit"]), "--dit-high-noise",
            str(models["dit_high_noise"]), "--vae", str(models["vae"]), "--t5", str(models["t5"]), "--runs-dir",
            str(tmp_path / "runs"), "--name", name, "--rehearse", "--plain", "--interval", "1000", "--start-rung",
            start_rung, "--gpu-memory", "23.5", "--set", "optimizer_type=adamw", "--set", "max_train_epochs=1",
            "--set", "resolution=[512,512]", "--set", "save_every_n_steps=1", "--max-attempts", "6"]


def test_from_the_base_settings_the_rehearsal_climbs_like_the_real_run(tmp_path):
    r = run_cli(_argv(tmp_path, "base", "base"), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    attempts = ledger(tmp_path / "runs", "base")["attempts"]
    assert [a["outcome"] for a in attempts] == ["oom_vram", "oom_vram", "oom_vram", "succeeded"]
    # like the H200: fp16 dies loading, fp8 in step 1, blocks_to_swap=10 in step 2 after saving step 1,
    # and blocks_to_swap=20 resumes that save
    assert "next rung blocks_to_swap=20; resuming the saved state at step 1" in r.stdout + r.stderr


def test_started_where_the_estimate_says_it_runs_out_of_memory_nowhere(tmp_path):
    r = run_cli(_argv(tmp_path, "auto", "auto"), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "estimate: starting at rung blocks_to_swap=20" in r.stdout + r.stderr
    attempts = ledger(tmp_path / "runs", "auto")["attempts"]
    assert [a["outcome"] for a in attempts] == ["succeeded"]
    assert json.dumps(attempts[0]["changes"]).count("blocks_to_swap") == 1
    assert attempts[0]["changes"]["train.blocks_to_swap"] == 20
