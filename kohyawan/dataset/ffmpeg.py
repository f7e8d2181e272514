"""Running the ffmpeg binary for dataset preparation.

Which binary is ``kohyawan.files.ffmpeg``'s choice (KOHYAWAN_FFMPEG, then PATH, then imageio-ffmpeg's).
imageio-ffmpeg has no ffprobe, so probing is done with ffmpeg itself (see ``probe``). Paths always go to
ffmpeg as ``file:`` URLs: a name containing ``:`` would otherwise be read as a protocol and a name
starting with ``-`` as an option.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
from pathlib import Path
from typing import Sequence

from kohyawan.errors import WorkFailed
from kohyawan.files.ffmpeg import ffmpeg_exe

# ffmpeg exits 255 when it caught SIGINT/SIGTERM/SIGQUIT/SIGPIPE and stopped early (its own rule: "received_nb_signals
# ? 255 : ret" in fftools/ffmpeg.c); its note "Exiting normally, received signal N." is hidden under -v error.
STOPPED_BY_SIGNAL = 255


def url(path: Path | str) -> str:
    return "file:" + os.fspath(Path(path).absolute())


def base_argv() -> list[str]:
    # -nostdin: ffmpeg must never read the terminal (it would eat the user's keystrokes in a pool).
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y"]


def run(args: Sequence[str], *, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*base_argv(), *args], stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)


class ChildDied(WorkFailed):
    """An ffmpeg child that was killed, or stopped on a signal: a failed job to run again, never a verdict about
    its input (the kernel's OOM killer, a kill -9, a Ctrl-C that reached only the children)."""


def death(returncode: int) -> str | None:
    """Why an ffmpeg child did not run to its own end, or None when it did (successfully or not)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    if returncode == STOPPED_BY_SIGNAL:
        return f"stopped on a signal (exit {STOPPED_BY_SIGNAL})"
    return None


def check_alive(returncode: int, what: str) -> None:
    """Raise ChildDied when the ffmpeg child working on ``what`` died of a signal."""
    why = death(returncode)
    if why:
        raise ChildDied(f"ffmpeg was {why} while working on {what}")


def error_tail(stderr: bytes, lines: int = 2) -> str:
    text = stderr.decode("utf-8", "replace").strip().splitlines()
    return " | ".join(line.strip() for line in text[-lines:]) or "no message"


def open_readonly(path: Path | str) -> int:
    """A read-only descriptor that, where the kernel allows (we own the file), does not update atime."""
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
    except PermissionError:  # O_NOATIME is refused on files owned by someone else
        return os.open(path, os.O_RDONLY)


@functools.lru_cache(maxsize=1)
def has_fd_protocol() -> bool:
    # ffmpeg >= 6 reads (and seeks in) an inherited descriptor through the fd: protocol
    proc = run(["-protocols"])
    return any(line.strip() == "fd" for line in proc.stdout.decode("utf-8", "replace").splitlines())


class SourceInput:
    """``-i`` arguments for a source file, plus the stdin to give ffmpeg.

    With the fd: protocol ffmpeg reads through our own O_NOATIME descriptor, so preparing a dataset
    leaves even the source files' access times alone; older ffmpeg builds get a file: URL.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.fd: int | None = None

    def __enter__(self) -> "SourceInput":
        if has_fd_protocol():
            self.fd = open_readonly(self.path)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @property
    def args(self) -> list[str]:
        return ["-i", "fd:" if self.fd is not None else url(self.path)]

    @property
    def stdin(self):
        return self.fd if self.fd is not None else subprocess.DEVNULL


def passthrough_timing() -> list[str]:
    """Output option: pass frames as they come (no duplicates to fill the gaps a select filter leaves)."""
    # -fps_mode arrived in ffmpeg 5.1 (fd: in 6.0); older builds only know -vsync
    return ["-fps_mode", "passthrough"] if has_fd_protocol() else ["-vsync", "passthrough"]


def fit_filter(width: int, height: int) -> str:
    # cover the target box, then centre-crop; lanczos keeps detail when downscaling
    return (f"scale={width}:{height}:force_original_aspect_ratio=increase:flags=lanczos,"
            f"crop={width}:{height},setsar=1")


def header(path: Path | str) -> str:
    """ffmpeg's description of an input (no decoding): stderr of `ffmpeg -i` with no output."""
    with SourceInput(path) as src_in:
        proc = subprocess.run([*base_argv(), *src_in.args], stdin=src_in.stdin, capture_output=True)
    return proc.stderr.decode("utf-8", "replace")
