"""A rehearsal reads the media the real latent cacher reads: a corrupt clip or image fails the cache stage, with
the trainer's own error line (issue 15, item 17)."""

import subprocess
import sys
from pathlib import Path

import pytest

from kohyawan.rehearse.standin import trainer_dir
import media
from runtime_helpers import base_args, env, ledger, make_dataset, run_cli

pytestmark = pytest.mark.slow

LATENTS = str(trainer_dir() / "wan_cache_latents.py")


def _hand_made(root: Path) -> Path:
    """Images and clips with captions beside them, no dataset.toml: the run's preflight does not decode it."""
    data = make_dataset(root, n=2)
    for i in range(2):
        media.video(data / "videos" / f"clip{i}.mp4", size="64x64", rate=16, seconds=1.2)
        (data / "videos" / f"clip{i}.txt").write_text("a clip")
    return data


def _cache(tmp_path, data: Path, folder: str):
    toml = tmp_path / "dataset.toml"
    extra = "target_frames = [17]\n" if folder == "videos" else ""
    toml.write_text(f'[general]\nresolution = [64, 64]\ncaption_extension = ".txt"\nbatch_size = 1\n\n'
                    f'[[datasets]]\n{folder[:-1]}_directory = "{data / folder}"\n'
                    f'cache_directory = "{tmp_path / "cache" / folder}"\n{extra}')
    (tmp_path / "vae").write_bytes(b"stand-in")
    return subprocess.run([sys.executable, LATENTS, "--dataset_config", str(toml), "--vae", str(tmp_path / "vae")],
                          env=env(), capture_output=True, text=True, timeout=120)


def test_a_text_file_named_mp4_fails_like_pyav(tmp_path):
    data = _hand_made(tmp_path / "data")
    bad = data / "videos" / "clip1.mp4"
    bad.write_text("this is not a video\n")
    r = _cache(tmp_path, data, "videos")
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    # PyAV's exception for av.open on such a file: its class, FFmpeg's code as errno, the file's name
    assert last == (f"av.error.InvalidDataError: [Errno 1094995529] Invalid data found when processing input: "
                    f"'{bad}'"), r.stderr
    assert "Traceback (most recent call last):" in r.stderr


@pytest.mark.parametrize("spoil", ["truncated", "text"])
def test_a_corrupt_image_fails_with_pils_own_error(tmp_path, spoil):
    from PIL import Image

    data = _hand_made(tmp_path / "data")
    bad = data / "images" / "img 1.png"
    if spoil == "truncated":
        bad.write_bytes(bad.read_bytes()[:120])
    else:
        bad.write_text("not a png")
    try:  # what the trainer's loader (PIL, then an RGB conversion) raises on this file
        with Image.open(bad) as img:
            img.convert("RGB")
        pytest.fail("PIL loaded the spoilt image")
    except Exception as exc:
        name = type(exc).__qualname__ if type(exc).__module__ == "builtins" else \
            f"{type(exc).__module__}.{type(exc).__qualname__}"
        expected = f"{name}: {exc}"
    r = _cache(tmp_path, data, "images")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == expected, r.stderr


def test_good_media_cache_as_before(tmp_path):
    data = _hand_made(tmp_path / "data")
    for folder in ("images", "videos"):
        r = _cache(tmp_path, data, folder)
        assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "cache").glob("*/*_wan.safetensors"))
    assert names == ["clip0_00000-017_0064x0064_wan.safetensors", "clip1_00000-017_0064x0064_wan.safetensors",
                     "img 0_0064x0064_wan.safetensors", "img 1_0064x0064_wan.safetensors"]


def test_run_rehearse_fails_in_the_cache_stage_naming_the_clip(tmp_path):
    data = _hand_made(tmp_path / "data")
    bad = data / "videos" / "clip0.mp4"
    bad.write_bytes(b"\0" * 2048)
    runs = tmp_path / "runs"
    r = run_cli(base_args(data, runs, "corrupt", "--set", "target_frames=[17]"), timeout=300)
    assert r.returncode == 1, r.stderr
    run = ledger(runs, "corrupt")
    assert run["status"] == "failed"
    stage = next(s for s in run["stages"] if s["name"] == "cache_latents")
    assert stage["status"] == "failed" and f"'{bad}'" in stage["reason"], stage
    lines = [line for line in (r.stdout + r.stderr).splitlines() if "cache_latents failed:" in line]
    assert lines and "av.error.InvalidDataError" in lines[0] and str(bad) in lines[0], r.stdout + r.stderr
    assert not run.get("attempts"), "training must not start on a dataset the cacher cannot read"
