"""kohyawan calibrate end to end (issue 11 item 3): real kohyawan processes, real ffmpeg, the simulated trainer
standing in for musubi-tuner on a virtual GPU whose trainer needs more VRAM than the estimate's model says
(KOHYAWAN_REHEARSE_VRAM_SCALE), and bad input answered with one line and exit 2."""

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

import media
from runtime_helpers import make_dataset, run_cli

from kohyawan.run import gpuenv

pytestmark = pytest.mark.slow

HAS_GPU = Path("/dev/nvidia0").exists()
SCALE = "1.4"   # this virtual GPU's trainer needs 1.4 times what the model says
SCALE_F = float(SCALE)


def cli(*args):
    return [sys.executable, "-m", "kohyawan", *args]


def plan(data, runs, *extra):
    return ["--profile", "character", "--dataset", str(data), "--task", "t2v-1.3B", "--runs-dir", str(runs),
            "--set", "resolution=[64,64]", "--set", "max_train_epochs=2", *extra]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Images and three clips of 5, 9 and 21 frames at 16 fps: the longest clip is the largest bucket."""
    root = make_dataset(tmp_path_factory.mktemp("clips"))
    videos = root / "videos"
    videos.mkdir()
    for name, seconds in (("short", 0.3), ("long", 1.35), ("mid", 0.6)):
        media.video(videos / f"{name}.mp4", size="96x64", rate=16, seconds=seconds)
        (videos / f"{name}.txt").write_text(f"a {name} clip of sks person")
    return root


def calibrations(runs):
    return sorted((runs / "calibrations").iterdir())


def started_at(result) -> str:
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("estimate: starting at rung")
                or ln.startswith("estimate: the profile's settings fit"))
    return line


LADDER_1_3B = ["base", "fp8_base", "blocks_to_swap=10", "blocks_to_swap=20", "blocks_to_swap=30",  # 29: 1.3B
               "gradient_checkpointing_cpu_offload", "fewer_frames", "lower_resolution", "lower_rank"]


def start_rung(result) -> str:
    found = re.search(r"starting at rung (\S+) \(predicted peak", started_at(result))
    assert found, started_at(result)
    return found.group(1)


def test_a_calibration_changes_where_the_next_run_starts(images, tmp_path):
    gpu = ("--rehearse", "--gpu-memory", "5")
    fresh = run_cli(cli("run", *plan(images, tmp_path / "fresh", "--name", "r", "--plain", *gpu)),
                    KOHYAWAN_REHEARSE_VRAM_SCALE=SCALE)
    assert fresh.returncode == 0, fresh.stderr
    predicted = json.loads((tmp_path / "fresh" / "r" / "run.json").read_text())["estimate"]["predicted_peak_gib"]
    first = start_rung(fresh)                    # the estimate's choice for 5 GiB: some rung above the profile's
    assert first in LADDER_1_3B[1:] and f"(predicted peak {predicted:.1f} GiB of 5)" in started_at(fresh)
    runs = tmp_path / "runs"
    calib = run_cli(cli("calibrate", *plan(images, runs, *gpu)), KOHYAWAN_REHEARSE_VRAM_SCALE=SCALE)
    assert calib.returncode == 0, calib.stderr
    out = calib.stdout
    assert "kohyawan rehearsal (virtual GPU) (5.0 GiB): 3 steps on 1 image(s) of the largest bucket 64x64x1" in out
    row = next(ln for ln in out.splitlines() if ln.startswith(f" {first} "))   # calibrate probes the same rung
    cells = [c.strip() for c in row.split("│")]
    assert cells[:2] == [first, f"{predicted:.1f}"] and cells[-1] == "succeeded"
    # the simulated trainer needs SCALE x the model: reserved above the estimate, the next estimate SCALE x it
    assert float(cells[4]) > predicted and float(cells[5]) == pytest.approx(predicted * SCALE_F, abs=0.15)
    factor = re.search(r"next estimate: peak VRAM scaled by ([0-9.]+) from 1 observed attempt\(s\) on kohyawan "
                       r"rehearsal", out)
    assert factor and float(factor.group(1)) == pytest.approx(SCALE_F, abs=0.02)
    folder, = calibrations(runs)
    data = json.loads((folder / "run.json").read_text())
    probe_rungs = data["calibration"]["probes"][0]["rungs"]
    assert probe_rungs[-1] == first and data["gpu"]["name"] == gpuenv.REHEARSAL_GPU
    attempt = data["attempts"][0]
    assert attempt["steps"] == [0, 3] and attempt["allocator_peak_gb"]["steps"] == 3
    assert not (folder / "output").exists() and all(c["removed"] for c in data["checkpoints"])
    after = run_cli(cli("run", *plan(images, runs, "--name", "r", "--plain", *gpu)), KOHYAWAN_REHEARSE_VRAM_SCALE=SCALE)
    assert after.returncode == 0, after.stderr
    assert f"estimate: learnt from earlier runs on this GPU: peak VRAM scaled by {factor.group(1)}" in after.stderr
    # SCALE x the first choice no longer fits 5 GiB: the next run starts further up the ladder
    assert LADDER_1_3B.index(start_rung(after)) > LADDER_1_3B.index(first)


def test_every_ladder_position_from_the_largest_bucket_as_json(clips, tmp_path):
    runs = tmp_path / "runs"
    r = run_cli(cli("calibrate", *plan(clips, runs, "--rehearse", "--ladder", "--json")),
                KOHYAWAN_REHEARSE_VRAM_SCALE=SCALE, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["version"] == 1 and doc["status"] == "succeeded" and doc["rehearsal"] is True and doc["steps"] == 3
    assert doc["sample"]["kind"] == "video" and doc["sample"]["items"] == ["long.mp4"]
    assert doc["sample"]["bucket"][2] == 21
    labels = [p["label"] for p in doc["probes"]]
    assert labels == LADDER_1_3B
    for p in doc["probes"]:
        assert p["outcome"] == "succeeded" and p["measured"]["vram_gib"] is None        # no NVML in a rehearsal
        assert p["measured"]["reserved_gib"] > p["measured"]["allocated_gib"] > 0 and p["measured"]["s_per_step"]
        assert set(p["estimate"]) == {"vram_gib", "ram_gib", "s_per_step", "corrections"}
    base = doc["probes"][0]
    assert base["measured"]["reserved_gib"] + 0.75 == pytest.approx(base["estimate"]["vram_gib"] * 1.4, rel=0.03)
    assert base["next_estimate"]["vram_gib"] > base["estimate"]["vram_gib"]
    sample = calibrations(runs)[0] / "sample" / "videos"
    assert sorted(p.name for p in sample.iterdir()) == ["long.mp4", "long.txt"]
    one = run_cli(cli("calibrate", *plan(clips, runs, "--rehearse", "--rung", "blocks_to_swap=10", "--json")))
    assert one.returncode == 0, one.stderr
    probe, = json.loads(one.stdout)["probes"]
    assert probe["rungs"] == ["fp8_base", "blocks_to_swap=10"] and probe["attempt"] == 1


def test_a_position_that_runs_out_of_memory_is_recorded_as_not_fitting(images, tmp_path):
    runs = tmp_path / "runs"
    r = run_cli(cli("calibrate", *plan(images, runs, "--rehearse", "--gpu-memory", "5.5", "--rung", "base", "--json")),
                KOHYAWAN_REHEARSE_VRAM_SCALE=SCALE)
    assert r.returncode == 0, r.stderr
    probe, = json.loads(r.stdout)["probes"]
    assert probe["outcome"] == "oom_vram" and "CUDA out of memory" in probe["reason"]
    assert probe["estimate"]["vram_gib"] < 5.5 <= probe["next_estimate"]["vram_gib"]   # no longer said to fit
    assert any("ran out of GPU memory" in n for n in probe["next_estimate"]["corrections"])


def _stub_trainer(folder):
    """A checkout that passes the trainer preflight (scripts present, modules importable) on a machine without
    a GPU: the calibration must stop at the missing GPU, not at the trainer."""
    from kohyawan.rehearse.standin import trainer_dir

    shutil.copytree(trainer_dir(), folder)
    for module in ("musubi_tuner/__init__.py", "accelerate.py", "torch.py"):
        (folder / module).parent.mkdir(parents=True, exist_ok=True)
        (folder / module).write_text("")
    return folder


def _one_error_line(result, text):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU")
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(images, tmp_path):
    runs = tmp_path / "runs"
    no_gpu = run_cli(cli("calibrate", *plan(images, runs, "--trainer-dir", str(_stub_trainer(tmp_path / "musubi")))))
    _one_error_line(no_gpu, "calibrate measures the trainer on a GPU, and it would see none (no NVIDIA GPU/NVML here")
    missing = run_cli(cli("calibrate", *plan(images, runs, "--trainer-dir", str(tmp_path / "nowhere"))))
    _one_error_line(missing, "trainer checkout not found")
    no_dir = run_cli(cli("calibrate", *plan(images, runs)))
    _one_error_line(no_dir, "--trainer-dir is required")
    unknown = run_cli(cli("calibrate", *plan(images, runs, "--rehearse", "--rung", "more_vram")))
    _one_error_line(unknown, "--rung more_vram: not a rung of this plan's ladder; one of: base, fp8_base")
    both = run_cli(cli("calibrate", *plan(images, runs, "--rehearse", "--rung", "base", "--ladder")))
    _one_error_line(both, "give one")
    size = run_cli(cli("calibrate", *plan(images, runs, "--gpu-memory", "8")))
    _one_error_line(size, "--gpu-memory is for --rehearse")
    assert not (runs / "calibrations").exists() or not any((runs / "calibrations").iterdir())
