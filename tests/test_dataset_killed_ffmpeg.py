"""An ffmpeg child that dies of a signal is a failed job, never a verdict about its source (issue 15, item 2).

The ffmpeg here is the real one behind a wrapper (KOHYAWAN_FFMPEG): while it works on a file whose name holds
"victim", in the phase the test picks, the wrapper either kills itself with SIGKILL (what the kernel's OOM
killer does) or lets the real ffmpeg run and sends it SIGINT half-way (ffmpeg catches it, stops and exits 255:
a Ctrl-C that reached the children while kohyawan ignored it). `-re` makes that ffmpeg decode in real time, so
it is surely still running when the signal comes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kohyawan.dataset import ffmpeg
from kohyawan.files.ffmpeg import ffmpeg_exe
import media

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

WRAPPER = r"""#!/bin/bash
# Real ffmpeg, except on "victim" files in the chosen phase: die of a signal, at most $KILL_TIMES times.
hit=""
for arg in "$@" "$(readlink /proc/$$/fd/0 2>/dev/null)"; do
  case "$arg" in *victim*) hit=1;; esac
done
case " $* " in *" $KILL_PHASE "*) ;; *) hit="";; esac
if [ -n "$hit" ]; then
  n=$(cat "$KILL_COUNT" 2>/dev/null || echo 0)
  if [ "$n" -lt "$KILL_TIMES" ]; then
    echo $((n + 1)) > "$KILL_COUNT"
    if [ "$KILL_SIGNAL" = KILL ]; then kill -KILL $$; fi
    "$REAL_FFMPEG" -re "$@" <&0 &
    pid=$!
    sleep 1
    kill -INT $pid
    wait $pid
    exit $?
  fi
fi
exec "$REAL_FFMPEG" "$@"
"""

PROBE, ENCODE = "pgm", "libx264"  # an argument only the probe pass, resp. only the clip encoder, passes


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("victim", "other"):
        media.video(src / f"{name}.mp4", seconds=3, size="320x180")
        (src / f"{name}.txt").write_text(f"a {name} clip\n")
    return src


def _prepare(tmp_path, src, dest, *, signal="KILL", times=1, phase=PROBE, jobs=2, what="prepare"):
    wrapper = tmp_path / "ffmpeg-wrapper"
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KOHYAWAN_FFMPEG": str(wrapper), "REAL_FFMPEG": ffmpeg_exe(),
           "KILL_COUNT": str(tmp_path / f"kills-{phase}-{signal}"), "KILL_TIMES": str(times),
           "KILL_SIGNAL": signal, "KILL_PHASE": phase}
    argv = (["dataset", "prepare", str(src), "--out", str(dest), "--resolution", "64", "--jobs", str(jobs)]
            if what == "prepare" else ["dataset", "check", str(dest)])
    proc = subprocess.run([sys.executable, "-m", "kohyawan", *argv],
                          capture_output=True, text=True, env=env, timeout=300)
    kills = tmp_path / f"kills-{phase}-{signal}"
    return proc, int(kills.read_text()) if kills.exists() else 0


def _report(dest):
    return {i["source"]: i for i in json.loads((dest / "report.json").read_text())["items"]}


@pytest.mark.parametrize("signal,phase,jobs", [("KILL", PROBE, 2), ("INT", PROBE, 1), ("KILL", ENCODE, 2)])
def test_a_killed_child_is_run_again_and_the_source_kept(tmp_path, source, signal, phase, jobs):
    dest = tmp_path / "data"
    proc, kills = _prepare(tmp_path, source, dest, signal=signal, phase=phase, jobs=jobs)
    assert kills == 1, proc.stderr
    assert proc.returncode == 0, proc.stderr
    items = _report(dest)
    assert items["victim.mp4"]["status"] == "kept" and items["victim.mp4"]["notes"] == [], items["victim.mp4"]
    why = "killed by SIGKILL" if signal == "KILL" else "stopped on a signal (exit 255)"
    assert f"{why} while working on" in proc.stderr and "running it again" in proc.stderr
    assert len(list((dest / "videos").glob("victim-*.mp4"))) == len(items["victim.mp4"]["outputs"]) > 0


@pytest.mark.parametrize("signal,phase", [("KILL", PROBE), ("INT", ENCODE)])
def test_a_child_killed_twice_fails_the_command_and_decides_nothing(tmp_path, source, signal, phase):
    dest = tmp_path / "data"
    proc, kills = _prepare(tmp_path, source, dest, signal=signal, phase=phase, times=99)
    assert kills == 2, proc.stderr  # one retry, then stop
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "2 times" in errors[0] and "victim.mp4" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (dest / "report.json").exists() and not (dest / "dataset.toml").exists()
    manifest = dest / ".kohyawan" / "manifest.json"
    assert not manifest.exists() or "victim.mp4" not in json.loads(manifest.read_text())["sources"]
    assert not [p for p in dest.rglob("*") if p.name.startswith(".partial-")]

    # nothing about the source was cached: with ffmpeg left alone, the rerun keeps it
    proc, _ = _prepare(tmp_path, source, dest, signal=signal, phase="no-such-phase")
    assert proc.returncode == 0, proc.stderr
    assert _report(dest)["victim.mp4"]["status"] == "kept"


def test_check_does_not_call_a_file_unreadable_when_ffmpeg_was_killed(tmp_path, source):
    dest = tmp_path / "data"
    proc, _ = _prepare(tmp_path, source, dest, phase="no-such-phase")
    assert proc.returncode == 0, proc.stderr
    proc, kills = _prepare(tmp_path, source, dest, phase="rawvideo", times=99, what="check")
    assert kills >= 1
    assert proc.returncode == 1 and "unreadable" not in proc.stdout, proc.stdout
    assert proc.stderr.startswith("error: ffmpeg was killed by SIGKILL while working on"), proc.stderr
    assert "victim" in proc.stderr and "Traceback" not in proc.stderr


def test_death_tells_signals_from_decode_errors():
    assert ffmpeg.death(-9) == "killed by SIGKILL"
    assert ffmpeg.death(-2) == "killed by SIGINT"
    assert ffmpeg.death(255) == "stopped on a signal (exit 255)"
    # a file that does not decode: ffmpeg's own error codes (AVERROR_INVALIDDATA & 0xff, ENOENT) are verdicts
    for code in (0, 1, 183, 254):
        assert ffmpeg.death(code) is None
    real = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", "-", "-f", "null", "-"], input=b"not a video",
                          capture_output=True)
    assert real.returncode not in (0, 255) and ffmpeg.death(real.returncode) is None
