"""Tiny synthetic media made with the real ffmpeg, for the dataset tests and benchmark."""

from __future__ import annotations

import subprocess
from pathlib import Path

from kohyawan.dataset.ffmpeg import ffmpeg_exe, url


def _run(args: list[str]) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", *args], check=True)


def video(path: Path, *, size: str = "160x120", rate: int = 30, seconds: float = 2.0, vf: str | None = None,
          source: str = "testsrc2") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    args = ["-f", "lavfi", "-i", f"{source}=size={size}:rate={rate}:duration={seconds}"]
    if vf:
        args += ["-vf", vf]
    codec = ["-c:v", "libvpx-vp9"] if path.suffix == ".webm" else ["-c:v", "libx264", "-preset", "ultrafast",
                                                                    "-pix_fmt", "yuv420p"]
    _run([*args, *codec, "-an", "-f", {".mov": "mov", ".webm": "webm", ".mkv": "matroska"}.get(path.suffix, "mp4"),
          url(path)])
    return path


def two_scenes(path: Path, *, seconds: float = 2.0, size: str = "160x120", rate: int = 30) -> Path:
    """testsrc2, then a hard cut to a different picture (a mandelbrot zoom)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}",
          "-f", "lavfi", "-i", f"mandelbrot=size={size}:rate={rate}",
          "-filter_complex", f"[1:v]trim=duration={seconds},setpts=PTS-STARTPTS,format=yuv420p[b];"
                             "[0:v]format=yuv420p[a];[a][b]concat=n=2:v=1:a=0[v]",
          "-map", "[v]", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-f", "mp4", url(path)])
    return path


def image(path: Path, *, size: str = "160x120", vf: str | None = None, source: str = "testsrc2",
          at: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    args = ["-f", "lavfi", "-i", f"{source}=size={size}:rate=25", "-ss", str(at)]
    if vf:
        args += ["-vf", vf]
    fmt = {".jpg": "mjpeg", ".jpeg": "mjpeg", ".webp": "webp", ".bmp": "bmp"}.get(path.suffix.lower(), "png")
    codec = {"mjpeg": ["-c:v", "mjpeg", "-q:v", "2", "-pix_fmt", "yuvj420p"],
             "webp": ["-c:v", "libwebp", "-quality", "95"]}.get(fmt, ["-c:v", fmt])
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", *args, "-frames:v", "1",
                           *codec, "-f", "image2pipe", "pipe:1"], check=True, capture_output=True)
    path.write_bytes(proc.stdout)
    return path


def truncate(src: Path, dest: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * fraction)])
    return dest
