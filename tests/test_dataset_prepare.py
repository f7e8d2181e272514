"""End to end: real ffmpeg media in, prepared dataset out; every reason code; source untouched."""

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kohyawan.files import toml as tomllib  # stdlib tomllib, or tomli on Python 3.10
from kohyawan.dataset.check import check_dataset
from kohyawan.dataset.report import load_report
from kohyawan.dataset.settings import settings_from
from kohyawan.dataset.prepare import prepare
from kohyawan.dataset.probe import count_frames
from kohyawan.errors import DatasetError
import media

pytestmark = pytest.mark.slow

RES = 64
HOSTILE = "we ird $(echo hi) \"q\" 's'\nnew café 日本"


def _read_noatime(path: Path) -> bytes:
    # the test itself must not bump access times, or it could not see whether prepare did
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _tree_state(root: Path) -> dict:
    """Contents, sizes, modes, mtimes and file atimes of everything under root."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        is_file = path.is_file()
        state[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                              st.st_atime_ns if is_file else None,
                                              _read_noatime(path) if is_file else None)
    return state


def _caption(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    # guide layout: videos/ + captions/
    media.video(src / "videos" / "long.mp4", seconds=4)                  # 64 frames at 16 fps -> 25+25 (+14 left)
    _caption(src / "captions" / "long.txt", "a long test pattern")
    media.video(src / "videos" / "sub" / "pal.mov", rate=25, seconds=2)  # fps conversion 25 -> 16, guide layout in sub/
    _caption(src / "captions" / "sub" / "pal.txt", "pal rate clip")
    media.two_scenes(src / "videos" / "cut.mp4")
    _caption(src / "captions" / "cut.txt", "two shots")
    media.video(src / "videos" / "blurry.mp4", vf="gblur=sigma=12")
    _caption(src / "captions" / "blurry.txt", "soft")
    media.video(src / "videos" / "fade.mp4", vf="fade=t=in:st=0:d=1.4")
    _caption(src / "captions" / "fade.txt", "fade in")
    media.video(src / "videos" / "shaky.mp4", vf="crop=w=120:h=90:x='20+18*sin(n*2.5)':y='15+14*cos(n*3.1)'")
    _caption(src / "captions" / "shaky.txt", "shaky")
    media.video(src / "videos" / "short.mp4", seconds=0.8)
    _caption(src / "captions" / "short.txt", "too short")
    media.truncate(media.video(src.parent / "whole.mp4"), src / "videos" / "truncated.mp4")
    _caption(src / "captions" / "truncated.txt", "broken")
    # sidecar layout
    media.image(src / "stills" / "sharp.png")
    _caption(src / "stills" / "sharp.txt", "  a sharp\nstill  ")
    media.image(src / "stills" / "copy.jpg")                          # same picture, jpeg: duplicate
    _caption(src / "stills" / "copy.txt", "the same still")
    media.image(src / "stills" / "other.webp", source="mandelbrot")
    _caption(src / "stills" / "other.txt", "ohwx, a fractal")
    media.image(src / "stills" / "soft.bmp", vf="gblur=sigma=12", source="mandelbrot")
    _caption(src / "stills" / "soft.txt", "blurry still")
    media.image(src / "stills" / "tiny.png", size="48x48")
    _caption(src / "stills" / "tiny.txt", "tiny")
    media.image(src / "stills" / "nocap.png", source="rgbtestsrc")
    media.image(src / "stills" / "emptycap.png", source="smptebars")
    _caption(src / "stills" / "emptycap.txt", " \n ")
    media.image(src / "stills" / "latin1.png", source="smptehdbars")
    _caption(src / "stills" / "latin1.txt", b"caf\xe9")
    (src / "stills" / "zero.png").write_bytes(b"")
    _caption(src / "stills" / "zero.txt", "zero")
    (src / "stills" / "notmedia.jpg").write_text("this is text, not a jpeg")
    _caption(src / "stills" / "notmedia.txt", "text")
    media.truncate(media.image(src.parent / "big.png", size="320x240"), src / "stills" / "cut.png", 0.4)
    _caption(src / "stills" / "cut.txt", "truncated png")
    media.video(src / HOSTILE / f"{HOSTILE}.mkv", seconds=1.2)
    _caption(src / HOSTILE / f"{HOSTILE}.txt", "hostile name")
    (src / "notes.pdf").write_bytes(b"%PDF")
    os.utime(src / "notes.pdf", ns=(1_000_000_000, 2_000_000_000))  # old atime: relatime would bump it
    return src


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory):
    before = _tree_state(source)
    dest = tmp_path_factory.mktemp("out") / "data set $x"
    settings = settings_from({"resolution": RES, "trigger": "ohwx"})
    report = prepare(source, dest, settings, jobs=2, profile="character")
    return {"dest": dest, "report": report, "before": before, "settings": settings}


def _item(report, rel):
    return next(i for i in report["items"] if i["source"] == rel)


EXPECTED = {
    "videos/long.mp4": ("kept", []),
    "videos/sub/pal.mov": ("kept", []),
    "videos/cut.mp4": ("kept", ["scene_cut"]),
    "videos/blurry.mp4": ("dropped", ["blurry"]),
    "videos/fade.mp4": ("dropped", ["lighting_change"]),
    "videos/shaky.mp4": ("dropped", ["shaky"]),
    "videos/short.mp4": ("dropped", ["too_short"]),
    "videos/truncated.mp4": ("dropped", ["unreadable"]),
    "stills/sharp.png": ("kept", []),
    "stills/copy.jpg": ("dropped", ["duplicate"]),
    "stills/other.webp": ("kept", []),
    "stills/soft.bmp": ("dropped", ["blurry"]),
    "stills/tiny.png": ("dropped", ["too_small"]),
    "stills/nocap.png": ("dropped", ["missing_caption"]),
    "stills/emptycap.png": ("dropped", ["empty_caption"]),
    "stills/latin1.png": ("dropped", ["caption_encoding"]),
    "stills/zero.png": ("dropped", ["unreadable"]),
    "stills/notmedia.jpg": ("dropped", ["unreadable"]),
    "stills/cut.png": ("dropped", ["unreadable"]),
    f"{HOSTILE}/{HOSTILE}.mkv": ("kept", []),
}


def test_every_reason_code(prepared):
    report = prepared["report"]
    got = {i["source"]: (i["status"], i["reasons"]) for i in report["items"]}
    assert got == EXPECTED
    assert report["ignored"] == ["notes.pdf"]
    assert report["version"] == 1
    summary = report["summary"]
    assert summary["kept"] == 6 and summary["dropped"] == 14
    assert summary["by_reason"]["unreadable"] == 4
    assert summary["size_check"]["status"] == "below_minimum"
    assert "minimum 150" in summary["size_check"]["message"]
    cut = _item(report, "videos/cut.mp4")
    assert any(n.startswith("scene_cut: split at frame(s) 32") for n in cut["notes"])
    assert _item(report, "stills/copy.jpg")["notes"] == ["duplicate: near-identical to stills/sharp.png"]


def test_outputs_have_target_fps_frames_and_size(prepared):
    dest, report = prepared["dest"], prepared["report"]
    long = _item(report, "videos/long.mp4")
    assert len(long["outputs"]) == 2 and long["frames"] == 64 and long["fps"] == 30
    for item in report["items"]:
        for out in item["outputs"]:
            path = dest / out
            assert path.is_file() and not path.name.startswith(".")
            frames, width, height, error = count_frames(path, "video" if out.endswith(".mp4") else "image")
            assert error == "" and (width, height) == (RES, RES)
            if out.endswith(".mp4"):
                assert frames in (17, 21, 25), out
    pal = _item(report, "videos/sub/pal.mov")  # 2 s at 25 fps -> 32 frames at 16 fps -> one 25-frame clip
    assert pal["frames"] == 32 and len(pal["outputs"]) == 1
    from kohyawan.dataset.probe import parse_header
    from kohyawan.dataset import ffmpeg
    proc = ffmpeg.run(["-i", ffmpeg.url(dest / pal["outputs"][0])])
    assert parse_header(proc.stderr.decode())["fps"] == 16.0
    assert all(o.startswith("videos/") and o.endswith(".mp4") for o in _item(report, "videos/cut.mp4")["outputs"])


def test_captions_in_both_layouts(prepared):
    dest, report = prepared["dest"], prepared["report"]
    read = lambda rel: (dest / _item(report, rel)["outputs"][0]).with_suffix(".txt").read_text()
    assert read("videos/long.mp4") == "ohwx, a long test pattern\n"       # captions/ layout
    assert read("videos/sub/pal.mov") == "ohwx, pal rate clip\n"           # captions/sub/ mirrored
    assert read("stills/sharp.png") == "ohwx, a sharp still\n"             # sidecar, trimmed
    assert read("stills/other.webp") == "ohwx, a fractal\n"               # trigger not doubled
    assert read(f"{HOSTILE}/{HOSTILE}.mkv") == "ohwx, hostile name\n"


def test_source_tree_is_untouched(prepared, source):
    assert _tree_state(source) == prepared["before"]


def test_report_and_toml_on_disk(prepared):
    dest = prepared["dest"]
    assert load_report(dest) == json.loads(json.dumps(prepared["report"]))
    doc = tomllib.loads((dest / "dataset.toml").read_text())
    assert doc["general"]["resolution"] == [RES, RES]
    assert {Path(d.get("image_directory") or d["video_directory"]).name for d in doc["datasets"]} == {"images", "videos"}
    result = check_dataset(dest)
    assert result.ok, result.problems
    assert (result.images, result.clips) == (prepared["report"]["summary"]["images"],
                                            prepared["report"]["summary"]["clips"])


def _musubi_sanitizer():
    repo = Path("/work/.mirror/kohya-ss+musubi-tuner/repo")
    voluptuous = pytest.importorskip("voluptuous")
    try:
        text = subprocess.run(["git", "-C", str(repo), "show", "HEAD:src/musubi_tuner/dataset/config_utils.py"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no musubi-tuner checkout")
    # run the trainer's own ConfigSanitizer class, without importing its torch-heavy module
    tree = ast.parse(text)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ConfigSanitizer")
    namespace = {"voluptuous": voluptuous, "functools": __import__("functools"), "logger": __import__("logging").getLogger("t")}
    for name in ("Any", "ExactSequence", "MultipleInvalid", "Object", "Schema"):
        namespace[name] = getattr(voluptuous, name)
    from typing import Sequence, Tuple, Union
    namespace.update(Sequence=Sequence, Tuple=Tuple, Union=Union, argparse=__import__("argparse"))
    exec(compile(ast.Module(body=[cls], type_ignores=[]), "config_utils.py", "exec"), namespace)
    return namespace["ConfigSanitizer"]()


@pytest.mark.integration
def test_dataset_toml_passes_musubi_schema(prepared):
    sanitizer = _musubi_sanitizer()
    doc = tomllib.loads((prepared["dest"] / "dataset.toml").read_text())
    sanitizer.sanitize_user_config(doc)
    bad = json.loads(json.dumps(doc))
    bad["general"]["batch_size"] = "1"
    with pytest.raises(Exception):
        sanitizer.sanitize_user_config(bad)


def test_rerun_is_incremental_and_settings_changes_redo(prepared, source, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(prepared["dest"], dest)
    # the manifest records absolute outputs relative to dest, so a copied folder reuses them
    stamp = {p: p.stat().st_mtime_ns for p in dest.rglob("*.mp4")}
    report = prepare(source, dest, prepared["settings"], jobs=1, profile="character")
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*.mp4")} == stamp
    assert report["summary"] == prepared["report"]["summary"]
    # a different frame rate changes every clip: old outputs go, new ones come
    report = prepare(source, dest, settings_from({"resolution": RES, "fps": 24, "frames": [17]}), jobs=2)
    long = _item(report, "videos/long.mp4")
    assert len(long["outputs"]) == 5 and long["frames"] == 96  # 4 s at 24 fps, five 17-frame clips
    for out in long["outputs"]:
        assert count_frames(dest / out, "video")[0] == 17
    assert sorted(p.name for p in (dest / "videos").glob("*.mp4")) == sorted(
        Path(o).name for i in report["items"] for o in i["outputs"] if o.endswith(".mp4"))
    assert _tree_state(source) == prepared["before"]


def test_interrupted_partials_are_ignored_and_cleaned(prepared, source, tmp_path):
    dest = tmp_path / "again"
    shutil.copytree(prepared["dest"], dest)
    partial = dest / "videos" / ".partial-long-abc.mp4"
    partial.write_bytes(b"half a clip")
    assert check_dataset(dest).ok  # the trainer (and check) never look at dot-files
    prepare(source, dest, prepared["settings"], jobs=1)
    assert not partial.exists()


def test_check_flags_hand_edited_dataset(prepared, tmp_path):
    dest = tmp_path / "edited"
    shutil.copytree(prepared["dest"], dest)
    # an older prepare wrote absolute paths; this one writes relative ones (a no-op now)
    text = (dest / "dataset.toml").read_text().replace(str(prepared["dest"]), str(dest))
    (dest / "dataset.toml").write_text(text)
    assert check_dataset(dest).ok
    clips = sorted((dest / "videos").glob("*.mp4"))
    images = sorted((dest / "images").glob("*.png"))
    clips[0].with_suffix(".txt").unlink()                               # missing caption
    media.video(clips[1], size=f"{RES}x{RES}", rate=16, seconds=1.25)    # 20 frames: not 4n+1
    images[0].write_bytes(b"not a png any more")                        # unreadable
    result = check_dataset(dest)
    assert not result.ok
    joined = "\n".join(result.problems)
    assert f"{clips[0].name}: missing caption" in joined
    assert f"{clips[1].name}: 20 frames is not 4n+1" in joined
    assert f"{images[0].name}: unreadable" in joined
    assert len(result.problems) == 3, result.problems


def test_refuses_to_write_inside_the_source(source):
    with pytest.raises(DatasetError, match="inside the source"):
        prepare(source, source / "out", settings_from({"resolution": RES}))
    assert not (source / "out").exists()


def test_cli_json_and_exit_codes(source, tmp_path, kohyawan_argv):
    small = tmp_path / "small src"
    shutil.copytree(source / "stills", small)
    dest = tmp_path / "cli out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([*kohyawan_argv, "dataset", "prepare", str(small), "--out", str(dest), "--resolution",
                           str(RES), "--jobs", "1", "--profile", "character", "--json"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["summary"]["images"] == 2 and report["settings"]["resolution"] == RES
    assert "probing" in proc.stderr  # plain progress lines when stderr is not a terminal
    proc = subprocess.run([*kohyawan_argv, "dataset", "check", str(dest), "--json"], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"] is True
    (dest / "dataset.toml").unlink()
    proc = subprocess.run([*kohyawan_argv, "dataset", "check", str(dest)], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and "dataset.toml is missing" in proc.stdout
    assert proc.stderr.startswith("error: ")
    proc = subprocess.run([*kohyawan_argv, "dataset", "prepare", str(tmp_path / "nope"), "--out", str(dest)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([*kohyawan_argv, "dataset", "prepare", str(small), "--out", str(dest),
                           "--threshold", "blur_treshold=1"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "did you mean 'blur_threshold'" in proc.stderr


def test_missing_ffmpeg_says_how_to_get_it(tmp_path, kohyawan_argv):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": str(tmp_path),
           "KOHYAWAN_FFMPEG": str(tmp_path / "no-ffmpeg")}
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"x")
    proc = subprocess.run([*kohyawan_argv, "dataset", "prepare", str(src), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "pip install imageio-ffmpeg" in proc.stderr and "apt install ffmpeg" in proc.stderr


def test_keep_aspect_writes_bucketable_sizes(source, tmp_path):
    src = tmp_path / "wide"
    src.mkdir()
    shutil.copy(source / "videos" / "long.mp4", src / "wide.mp4")
    (src / "wide.txt").write_text("wide")
    media.image(src / "tall.png", size="90x160")
    (src / "tall.txt").write_text("tall")
    dest = tmp_path / "out"
    report = prepare(src, dest, settings_from({"resolution": RES, "keep_aspect": True}), jobs=1)
    sizes = {i["source"]: tuple(i["output_size"]) for i in report["items"]}
    assert sizes == {"wide.mp4": (64, 48), "tall.png": (48, 80)}
    for item in report["items"]:
        for out in item["outputs"]:
            _, width, height, error = count_frames(dest / out, "video" if out.endswith(".mp4") else "image")
            assert not error and (width, height) == sizes[item["source"]]
    assert tomllib.loads((dest / "dataset.toml").read_text())["general"]["enable_bucket"] is True
    assert check_dataset(dest).ok


def test_lost_output_is_rebuilt_from_the_source(prepared, source, tmp_path):
    # the probe result is reused from the manifest, so this encode decodes the source itself
    # (the other runs hand the probe pass's normalised frames to the encoder)
    dest = tmp_path / "lost"
    shutil.copytree(prepared["dest"], dest)
    item = _item(prepared["report"], "videos/long.mp4")
    lost = dest / item["outputs"][1]
    lost.unlink()
    report = prepare(source, dest, prepared["settings"], jobs=1, profile="character")
    assert _item(report, "videos/long.mp4")["outputs"] == item["outputs"]
    assert count_frames(lost, "video")[:3] == (25, RES, RES)
    assert not (dest / ".kohyawan" / "scratch").exists()  # scratch frames never outlive a run
