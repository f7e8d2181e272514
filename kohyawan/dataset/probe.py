"""Probe and measure one media file in a single ffmpeg decode.

imageio-ffmpeg ships no ffprobe, and PyAV would add a second, differently built copy of the ffmpeg
libraries. So one decode with the same ffmpeg that later encodes answers everything: the stream header
(size, rate, duration) is read from ffmpeg's own input description, and the frame count, decodability and
every quality measure come from really decoding the frames, through the same ``fps`` filter the encoder
uses, as self-describing PGM images on pipes. Only the header needs text parsing, and a header that
cannot be parsed makes the file ``unreadable`` rather than guessed at. In square mode the frames measured
are the very centre crops the encoder gets, and the same decode can hand them to it (``intermediate``).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kohyawan.dataset import ffmpeg, quality
from kohyawan.dataset.settings import Settings

_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\d+:\d+.*?: Video: (.*)")
_SIZE = re.compile(r"[ ,](\d{1,5})x(\d{1,5})(?=[ ,\[]|$)")
_FPS = re.compile(r"([\d.]+) fps")
_TBR = re.compile(r"([\d.]+)(k?) tbr")
# Sharpness is measured on every 4th frame: "blurry" is a verdict on most frames of a clip (still 4-6
# samples in a 17-25 frame clip), and decoding plus the Laplacian at training scale is the costliest part
# of the probe pass; everything else is measured on 128 px thumbnails of every frame.
SHARP_STEP = 4
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees|rotate\s*:\s*(-?\d+)")


@dataclass
class Probe:
    ok: bool
    error: str = ""
    width: int = 0                  # display size (after rotation)
    height: int = 0
    fps: float = 0.0                # source rate (0 for images)
    duration: float = 0.0
    frames: int = 0                 # decoded frames at the target rate (1 for images)
    sharpness: list = field(default_factory=list)   # [frame, score or None (flat)] every SHARP_STEP frames
    luma: list = field(default_factory=list)        # mean luminance per frame
    cuts: list = field(default_factory=list)        # histogram distance, step i -> i+1
    similarity: list = field(default_factory=list)  # structure correlation, step i -> i+1
    shifts: list = field(default_factory=list)      # (dy, dx) thumbnail px, step i -> i+1
    dhash: int | None = None
    notes: list = field(default_factory=list)


def read_source(path: Path) -> bytes:
    """Read a file without touching it: read-only, and without updating atime where permitted."""
    with os.fdopen(ffmpeg.open_readonly(path), "rb") as handle:
        return handle.read()


def parse_header(text: str) -> dict:
    """Size, rate, duration and rotation of the first video stream from ffmpeg's input description."""
    text = text.split("Output #0")[0]
    info: dict = {}
    match = _DURATION.search(text)
    if match:
        h, m, s = match.groups()
        info["duration"] = int(h) * 3600 + int(m) * 60 + float(s)
    video = _VIDEO.search(text)
    if not video:
        return info
    desc = video.group(1)
    size = _SIZE.search(desc)
    if size:
        info["width"], info["height"] = int(size.group(1)), int(size.group(2))
    fps = _FPS.search(desc)
    tbr = _TBR.search(desc)
    if fps:
        info["fps"] = float(fps.group(1))
    elif tbr:
        info["fps"] = float(tbr.group(1)) * (1000 if tbr.group(2) else 1)
    rot = _ROTATION.search(text)
    if rot and info.get("width"):
        angle = abs(round(float(rot.group(1) or rot.group(2)))) % 180
        if angle == 90:
            info["width"], info["height"] = info["height"], info["width"]
    return info


def scale_short_side(short: int) -> str:
    # shorter side -> `short` px, aspect kept; measured at training scale (see settings)
    return (f"scale=w='if(lte(iw,ih),{short},-2)':h='if(lte(iw,ih),-2,{short})'"
            f":flags=area")


def _read_pgm(stream) -> np.ndarray | None:
    """One binary PGM (P5, maxval 255) from the pipe; None at end of stream."""
    magic = stream.read(2)
    if len(magic) < 2:
        return None
    if magic != b"P5":
        raise ValueError("unexpected data from ffmpeg")
    fields: list[bytes] = []
    token = b""
    while len(fields) < 3:
        ch = stream.read(1)
        if not ch:
            return None
        if ch.isspace():
            if token:
                fields.append(token)
                token = b""
        else:
            token += ch
    width, height, _maxval = (int(f) for f in fields)
    data = stream.read(width * height)
    if len(data) < width * height:
        return None
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width)


# Largest normalised-frames file the probe pass may leave for the encode pass (raw yuv420p).
INTERMEDIATE_LIMIT = 2 << 30


def intermediate_fits(path: Path, settings: Settings) -> bool:
    """Whether the normalised frames of this source stay under INTERMEDIATE_LIMIT (header facts only)."""
    info = parse_header(ffmpeg.header(path))
    frames = info.get("duration", 0.0) * settings.fps + 2
    side = settings.resolution
    return bool(info.get("duration")) and frames * side * side * 1.5 < INTERMEDIATE_LIMIT


def analyse(path: Path, kind: str, settings: Settings, timeout: float = 3600.0,
            intermediate: Path | None = None) -> Probe:
    """Decode ``path`` once at the target rate and measure it (see the module doc).

    With ``intermediate`` (videos, square output), the same decode also writes the normalised frames
    there as raw yuv420p, so the encode pass does not decode and scale the source a second time.
    """
    if kind == "image":
        # Images go in through a pipe: ffmpeg's image2 demuxer would read '%' in a name as a pattern.
        source = read_source(path)
        if not source:
            return Probe(ok=False, error="zero bytes")
        argv = [*ffmpeg.base_argv(), "-nostats", "-i", "pipe:0", "-map", "0:v:0",
                "-vf", scale_short_side(settings.resolution) + ",format=gray", "-frames:v", "1",
                "-f", "image2pipe", "-c:v", "pgm", "pipe:1"]
        return _run_probe(argv, source, None, kind, settings, timeout, path)
    if path.stat().st_size == 0:
        return Probe(ok=False, error="zero bytes")
    # Two outputs from one decode: every frame as a small fixed thumbnail (brightness, cuts, motion),
    # and every SHARP_STEP-th frame at training scale (sharpness), on its own pipe.
    r = settings.resolution
    if settings.keep_aspect:
        # the model sees (nearly) the whole frame: measure the whole frame, shorter side at training size
        base, sharp_scale = f"fps={settings.fps:g}", "," + scale_short_side(r)
    else:
        # square mode: measure exactly the centre crop the model will see, already at training size
        base, sharp_scale = f"fps={settings.fps:g},{ffmpeg.fit_filter(r, r)}", ""
    branches = 3 if intermediate is not None else 2
    graph = (f"[0:v:0]{base},split={branches}[t][s]" + ("[n]" if intermediate else "") + ";"
             f"[t]scale={quality.THUMB}:{quality.THUMB}:flags=area,format=gray[thumb];"
             f"[s]select='not(mod(n,{SHARP_STEP}))'{sharp_scale},format=gray[sharp]")
    norm_out: list[str] = []
    if intermediate is not None:
        graph += ";[n]format=yuv420p[norm]"
        norm_out = ["-map", "[norm]", "-f", "rawvideo", ffmpeg.url(intermediate)]
    with ffmpeg.SourceInput(path) as src_in:
        argv = [*ffmpeg.base_argv(), "-nostats", *src_in.args, "-filter_complex", graph,
                "-map", "[thumb]", "-f", "image2pipe", "-c:v", "pgm", "pipe:1",
                "-map", "[sharp]", *ffmpeg.passthrough_timing(), "-f", "image2pipe", "-c:v", "pgm", "pipe:3",
                *norm_out]
        return _run_probe(argv, None, src_in.stdin, kind, settings, timeout, path)


def _run_probe(argv, source: bytes | None, stdin, kind: str, settings: Settings, timeout: float,
               path: Path) -> Probe:
    """Run the probe's ffmpeg and read its pipes. A child that died of a signal raises ``ffmpeg.ChildDied``:
    half a decode says nothing about the file."""
    import threading

    result = Probe(ok=True)
    sharp_read = sharp_write = None
    if kind == "video":
        sharp_read, sharp_write = os.pipe()
        # ffmpeg writes "pipe:3": the write end must be fd 3 in the child
        os.set_inheritable(sharp_write, True)
    with tempfile.TemporaryFile() as errfile:
        preexec = None
        if sharp_write is not None:
            def preexec(fd=sharp_write):  # runs in the child before exec
                os.dup2(fd, 3)
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if source is not None else stdin,
                                stdout=subprocess.PIPE, stderr=errfile, preexec_fn=preexec,
                                close_fds=sharp_write is None, pass_fds=())
        threads = []
        if source is not None:
            def feed() -> None:
                try:
                    proc.stdin.write(source)
                    proc.stdin.close()
                except (BrokenPipeError, OSError):
                    pass
            threads.append(threading.Thread(target=feed, daemon=True))
        if sharp_read is not None:
            os.close(sharp_write)

            def sharp_reader() -> None:
                with os.fdopen(sharp_read, "rb") as stream:
                    index = 0
                    while True:
                        raw = _read_pgm(stream)
                        if raw is None:
                            return
                        result.sharpness.append([index * SHARP_STEP, quality.sharpness(raw)])
                        index += 1
            threads.append(threading.Thread(target=sharp_reader, daemon=True))
        for thread in threads:
            thread.start()
        code = _read_and_wait(proc, kind, result, threads, timeout)
        errfile.seek(0)
        stderr = errfile.read().decode("utf-8", "replace")
    if result.ok:
        ffmpeg.check_alive(code, str(path))
    return _conclude(result, stderr, code, kind, settings.fps)


def _read_and_wait(proc: subprocess.Popen, kind: str, result: Probe, threads: list, timeout: float) -> int:
    """Read the main pipe to its end, wait for ffmpeg and the reader threads; ffmpeg's return code."""
    try:
        _read_main(proc.stdout, kind, result)
    except ValueError as exc:
        proc.kill()  # our own kill: the verdict is the bad data, not the signal
        result.ok, result.error = False, str(exc)
    finally:
        proc.stdout.close()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            result.ok, result.error = False, f"decoding took longer than {timeout:.0f} s"
        for thread in threads:
            thread.join(timeout=60)
    return code


def _read_main(stream, kind: str, result: Probe) -> None:
    prev_hist = prev_spectrum = prev_thumb = None
    while True:
        raw = _read_pgm(stream)
        if raw is None:
            return
        if kind == "image":
            result.sharpness.append([0, quality.sharpness(raw)])
            result.luma.append(float(raw.mean()) * (1.0 / 255.0))
            result.dhash = quality.dhash(raw)
            continue
        thumb = raw.astype(np.float32) * (1.0 / 255.0)
        hist = quality.histogram(raw)
        spectrum = quality.spectrum(thumb)
        result.luma.append(float(thumb.mean()))
        if prev_hist is not None:
            result.cuts.append(float(np.abs(hist - prev_hist).sum()))
            result.similarity.append(quality.structure_similarity(prev_thumb, thumb))
            result.shifts.append(quality.shift_from_spectra(prev_spectrum, spectrum))
        prev_hist, prev_spectrum, prev_thumb = hist, spectrum, thumb


def _conclude(result: Probe, stderr: str, code: int, kind: str, target_fps: float) -> Probe:
    header = parse_header(stderr)
    result.frames = len(result.luma)
    result.width, result.height = header.get("width", 0), header.get("height", 0)
    result.fps = header.get("fps", 0.0) if kind == "video" else 0.0
    result.duration = header.get("duration", 0.0) if kind == "video" else 0.0
    problems = [line.strip() for line in stderr.split("Output #0")[0].splitlines()
                if re.search(r"error|invalid|corrupt|truncat|incomplete|moov atom not found", line, re.I)]
    problems += [line.strip() for line in stderr.split("Output #0")[-1].splitlines()
                 if re.search(r"error|invalid|corrupt|truncat|incomplete", line, re.I)]
    if not result.ok:
        return result
    if code != 0 or result.frames == 0:
        result.ok = False
        result.error = problems[-1] if problems else (stderr.strip().splitlines() or ["cannot decode"])[-1]
    elif not result.width or not result.height:
        result.ok = False
        result.error = "no video stream size in the header"
    elif kind == "image" and problems:
        result.ok = False
        result.error = problems[0]
    elif kind == "video" and problems:
        # Decoder errors plus a stream that ends well before its header says it should: truncated.
        expected = result.duration * target_fps
        if expected and result.frames < 0.9 * expected - 1:
            result.ok = False
            result.error = f"truncated: {result.frames} of {expected:.0f} frames decode ({problems[0][:120]})"
        else:
            result.notes.append("decoder warnings: " + problems[0][:200])
    return result


def count_frames(path: Path, kind: str, timeout: float = 600.0) -> tuple[int, int, int, str]:
    """(frames at the file's own rate, width, height, error) by decoding every frame to 8x8 gray."""
    with ffmpeg.SourceInput(path) as src_in:
        inp = ["-i", "pipe:0"] if kind == "image" else src_in.args
        data = read_source(path) if kind == "image" else None
        argv = [*ffmpeg.base_argv(), "-nostats", *inp, "-map", "0:v:0", "-an", "-vf", "scale=8:8,format=gray",
                "-f", "rawvideo", "pipe:1"]
        if data is not None:
            proc = subprocess.run(argv, input=data, capture_output=True, timeout=timeout)
        else:
            proc = subprocess.run(argv, stdin=src_in.stdin, capture_output=True, timeout=timeout)
    ffmpeg.check_alive(proc.returncode, str(path))
    stderr = proc.stderr.decode("utf-8", "replace")
    header = parse_header(stderr)
    frames = len(proc.stdout) // 64
    if proc.returncode != 0 or frames == 0:
        lines = [line for line in stderr.splitlines() if line.strip()]
        return 0, 0, 0, (lines[-1].strip() if lines else "cannot decode")
    return frames, header.get("width", 0), header.get("height", 0), ""
