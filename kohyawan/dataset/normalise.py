"""Writing outputs with real ffmpeg: PNG images, and all clips of one video in a single decode.

Every output is written under a ``.partial-`` name and renamed only after ffmpeg exits 0, so an
interrupted run never leaves a finished-looking file. The video filter chain starts with the same
``fps`` filter as the probe pass, so frame indices planned from the probe are the frames encoded.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Sequence

from kohyawan.dataset import ffmpeg
from kohyawan.dataset.layout import PARTIAL
from kohyawan.dataset.plan import Piece
from kohyawan.dataset.probe import read_source
from kohyawan.dataset.settings import Settings
from kohyawan.errors import WorkFailed


fit_filter = ffmpeg.fit_filter


def intermediate_input(path: Path, size: tuple[int, int], settings: Settings) -> list[str]:
    """-i arguments for the probe pass's normalised raw frames (already at the target rate and size)."""
    return ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-video_size", f"{size[0]}x{size[1]}",
            "-framerate", f"{settings.fps:g}", "-i", ffmpeg.url(path)]


def partial_name(final: Path) -> Path:
    return final.with_name(PARTIAL + final.name)


def image_argv(final: Path, size: tuple[int, int]) -> list[str]:
    return [*ffmpeg.base_argv(), "-v", "error", "-i", "pipe:0", "-map", "0:v:0", "-vf", fit_filter(*size),
            "-frames:v", "1", "-pix_fmt", "rgb24", "-c:v", "png", "-f", "image2", "-update", "1",
            ffmpeg.url(partial_name(final))]


def video_argv(source: list[str], outputs: Sequence[tuple[Path, Piece]], size: tuple[int, int],
               settings: Settings, threads: int = 0, prepared: bool = False) -> list[str]:
    """One decode, every clip. `prepared`: the input is already normalised raw frames."""
    k = len(outputs)
    graph = "[0:v:0]null" if prepared else f"[0:v:0]fps={settings.fps:g},{fit_filter(*size)}"
    graph += f",split={k}" + "".join(f"[s{i}]" for i in range(k)) + ";" if k > 1 else "[s0];"
    graph += ";".join(f"[s{i}]trim=start_frame={p.start}:end_frame={p.start + p.frames},setpts=PTS-STARTPTS[o{i}]"
                      for i, (_, p) in enumerate(outputs))
    argv = [*ffmpeg.base_argv(), "-v", "error", *source, "-filter_complex", graph]
    for i, (final, piece) in enumerate(outputs):
        argv += ["-map", f"[o{i}]", "-an", "-sn", "-dn", "-frames:v", str(piece.frames),
                 "-c:v", "libx264", "-preset", settings.preset, "-crf", str(settings.crf),
                 "-pix_fmt", "yuv420p", "-threads", str(threads), "-movflags", "+faststart",
                 "-f", "mp4", ffmpeg.url(partial_name(final))]
    return argv


def _finish(finals: Sequence[Path], proc: subprocess.CompletedProcess, what: str) -> None:
    partials = [partial_name(f) for f in finals]
    if proc.returncode != 0 or not all(p.exists() and p.stat().st_size > 0 for p in partials):
        for p in partials:
            p.unlink(missing_ok=True)
        ffmpeg.check_alive(proc.returncode, what)  # a killed encoder is a job to redo, not a bad source
        raise WorkFailed(f"ffmpeg failed on {what}: {ffmpeg.error_tail(proc.stderr)}")
    for p, f in zip(partials, finals):
        with open(p, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(p, f)


def write_image(source: Path, final: Path, size: tuple[int, int]) -> None:
    data = read_source(source)
    proc = subprocess.run(image_argv(final, size), input=data, capture_output=True)
    _finish([final], proc, str(source))


def write_clips(source: Path, outputs: Sequence[tuple[Path, Piece]], size: tuple[int, int],
                settings: Settings, threads: int = 0, intermediate: Path | None = None) -> None:
    if not outputs:
        return
    if intermediate is not None and intermediate.is_file():
        proc = subprocess.run(video_argv(intermediate_input(intermediate, size, settings), outputs, size, settings,
                                         threads, prepared=True), stdin=subprocess.DEVNULL, capture_output=True)
        _finish([f for f, _ in outputs], proc, str(source))
        return
    with ffmpeg.SourceInput(source) as src_in:
        proc = subprocess.run(video_argv(src_in.args, outputs, size, settings, threads),
                              stdin=src_in.stdin, capture_output=True)
    _finish([f for f, _ in outputs], proc, str(source))
