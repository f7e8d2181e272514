"""One ffmpeg finder: doctor approves exactly the binary that dataset prepare and comfy grid run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import media
from kohyawan.files import ffmpeg


def _logging_ffmpeg(path: Path, log: Path, real: str) -> Path:
    """An ffmpeg that writes each command line it gets to ``log``, then runs the real one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexec "{real}" "$@"\n')
    path.chmod(0o755)
    return path


def _doctor_ffmpeg(kohyawan_argv, env, tmp_path) -> dict:
    done = subprocess.run([*kohyawan_argv, "doctor", "--json", "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, env=env, timeout=120)
    return next(c for c in json.loads(done.stdout)["checks"] if c["id"] == "ffmpeg")


@pytest.mark.slow
def test_doctor_reports_the_binary_prepare_and_comfy_run(tmp_path, kohyawan_argv):
    real = ffmpeg.ffmpeg_exe()
    chosen_log, path_log = tmp_path / "chosen.log", tmp_path / "path.log"
    chosen = _logging_ffmpeg(tmp_path / "chosen" / "my-ffmpeg", chosen_log, real)
    # another ffmpeg first on PATH: KOHYAWAN_FFMPEG must still win, for every command
    on_path = _logging_ffmpeg(tmp_path / "bin" / "ffmpeg", path_log, real)
    env = {**os.environ, "PATH": f"{on_path.parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("KOHYAWAN_FFMPEG", None)
    check = _doctor_ffmpeg(kohyawan_argv, env, tmp_path)
    assert check["status"] == "ok" and check["details"] == {"path": str(on_path), "source": "PATH"}

    env["KOHYAWAN_FFMPEG"] = str(chosen)
    path_log.unlink()
    check = _doctor_ffmpeg(kohyawan_argv, env, tmp_path)
    assert check["status"] == "ok" and "(KOHYAWAN_FFMPEG)" in check["summary"]
    assert check["details"] == {"path": str(chosen), "source": "KOHYAWAN_FFMPEG"}
    assert chosen_log.read_text().splitlines() == ["-version"]  # doctor ran the very binary it reports

    src = tmp_path / "src"
    media.image(src / "a.png")
    (src / "a.txt").write_text("a photo")
    clip = media.video(src / "b.mp4", seconds=1.0)
    (src / "b.txt").write_text("a clip")
    chosen_log.unlink()
    done = subprocess.run([*kohyawan_argv, "dataset", "prepare", str(src), "--out", str(tmp_path / "data")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert "Traceback" not in done.stderr and done.returncode in (0, 1), done.stderr
    ran = chosen_log.read_text()
    assert "-i" in ran and "-filter_complex" in ran  # probing and encoding both went through it

    script = "import sys; from pathlib import Path; from kohyawan.comfy.sheet import first_frame; " \
             "first_frame(Path(sys.argv[1]), Path(sys.argv[2]))"
    subprocess.run([sys.executable, "-c", script, str(clip), str(tmp_path / "frame.png")], env=env, check=True,
                   timeout=120)
    assert (tmp_path / "frame.png").stat().st_size > 0 and "-frames:v 1" in chosen_log.read_text()
    assert not path_log.exists()


def test_a_kohyawan_ffmpeg_that_is_not_executable_fails_doctor_and_prepare_alike(tmp_path, kohyawan_argv):
    env = {**os.environ, "KOHYAWAN_FFMPEG": str(tmp_path / "no-ffmpeg")}
    check = _doctor_ffmpeg(kohyawan_argv, env, tmp_path)
    assert check["status"] == "fail" and check["summary"].startswith("KOHYAWAN_FFMPEG=")
    assert "not an executable file" in check["summary"] and "KOHYAWAN_FFMPEG" in check["fix"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"x")
    done = subprocess.run([*kohyawan_argv, "dataset", "prepare", str(src), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "\nerror: KOHYAWAN_FFMPEG=" in done.stderr and "not an executable file" in done.stderr
