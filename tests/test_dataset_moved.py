"""A prepared dataset is a folder that describes itself: copied or moved, `check` and `run` look at the copy
(issue 15, item 3)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kohyawan.dataset.check import check_dataset
from kohyawan.dataset.prepare import prepare
from kohyawan.dataset.settings import settings_from
from kohyawan.files import toml
from kohyawan.trainer import cachefiles
import media
from runtime_helpers import base_args, run_cli

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name, source in (("a", "testsrc2"), ("b", "mandelbrot")):
        media.image(src / f"{name}.png", size="96x96", source=source)
        (src / f"{name}.txt").write_text(f"still {name}\n")
    media.video(src / "walk.mp4", seconds=2, size="96x96")
    (src / "walk.txt").write_text("a walk\n")
    dest = tmp_path_factory.mktemp("made here") / "data"
    prepare(src, dest, settings_from({"resolution": 64}), jobs=1)
    assert check_dataset(dest).ok
    return dest


def _spoil(copy: Path) -> tuple[str, str]:
    """Truncate one PNG and replace one clip by a text file; their names."""
    png = sorted((copy / "images").glob("*.png"))[0]
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 3])
    clip = sorted((copy / "videos").glob("*.mp4"))[0]
    clip.write_text("this is a text file named .mp4\n")
    return png.name, clip.name


def test_prepare_writes_folders_relative_to_the_dataset(prepared):
    doc = toml.loads((prepared / "dataset.toml").read_text())
    dirs = [d.get("image_directory") or d["video_directory"] for d in doc["datasets"]]
    caches = [d["cache_directory"] for d in doc["datasets"]]
    assert dirs == ["images", "videos"] and caches == [".kohyawan/cache/images", ".kohyawan/cache/videos"]
    assert str(prepared) not in (prepared / "dataset.toml").read_text()


def test_musubi_reads_the_relative_config_from_inside_the_dataset(prepared, tmp_path):
    # musubi-tuner opens the folders as given, relative to its working directory (config_utils passes the
    # strings to glob/os.path as they are); trainer/cachefiles reads them the same way
    moved = tmp_path / "moved"
    shutil.copytree(prepared, moved)
    here = os.getcwd()
    try:
        os.chdir(moved)
        found = {ds.is_image: [Path(i.media).resolve() for i in cachefiles.items(ds)]
                 for ds in cachefiles.load("dataset.toml")}
    finally:
        os.chdir(here)
    assert len(found[True]) == 2 and len(found[False]) >= 1
    assert all(moved in p.parents for paths in found.values() for p in paths)


def test_check_looks_at_the_copy_it_is_given(prepared, tmp_path):
    copy = tmp_path / "on the gpu box"
    shutil.copytree(prepared, copy)
    png, clip = _spoil(copy)
    proc = subprocess.run([sys.executable, "-m", "kohyawan", "dataset", "check", str(copy)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1, proc.stdout
    assert f"problem: {png}: unreadable" in proc.stdout and f"problem: {clip}: unreadable" in proc.stdout
    assert check_dataset(prepared).ok  # the original is untouched, and still fine


def test_an_old_absolute_config_in_a_copy_is_a_problem_and_the_copy_is_checked(prepared, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    # what kohyawan's prepare wrote before: absolute folders, here pointing at the original
    text = (copy / "dataset.toml").read_text()
    text = text.replace('"images"', f'"{prepared / "images"}"').replace('"videos"', f'"{prepared / "videos"}"')
    (copy / "dataset.toml").write_text(text)
    png, clip = _spoil(copy)
    result = check_dataset(copy)
    joined = "\n".join(result.problems)
    assert f"image_directory {prepared / 'images'} is outside {copy}" in joined
    assert f"{png}: unreadable" in joined and f"{clip}: unreadable" in joined


def test_run_preflight_checks_the_folder_it_is_given(prepared, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    png, clip = _spoil(copy)
    proc = run_cli(base_args(copy, tmp_path / "runs", "moved") + ["--max-attempts", "1"], timeout=300)
    assert f"dataset check: {png}: unreadable" in proc.stderr, proc.stderr
    assert f"dataset check: {clip}: unreadable" in proc.stderr, proc.stderr
