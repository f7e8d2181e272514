"""Throughput of `dataset prepare` against the same ffmpeg encodes run directly.

    PYTHONPATH=. python benchmarks/dataset_bench.py [--videos 4] [--seconds 12] [--size 960x540]

Makes synthetic sources (testsrc2, 30 fps, H.264), then times:
  plain ffmpeg   the exact encode commands prepare runs (one per source: fps, scale, crop, split into clips),
                 one after another, with the clip plan taken from prepare's own report;
  prepare -j1    kohyawan's prepare with one job (probe + quality pass + the same encodes + bookkeeping);
  prepare -j2    the same with two processes;
  rerun          prepare again over an unchanged source (incremental: nothing re-encoded).
Figures: clips/s and source-seconds/s, overhead of prepare -j1 over plain ffmpeg, speed-up -j2 / -j1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kohyawan.dataset import ffmpeg, normalise, settings_from  # noqa: E402
from kohyawan.dataset.plan import Piece  # noqa: E402
from kohyawan.dataset.prepare import prepare  # noqa: E402
from tests import media  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def plain_ffmpeg(src: Path, dest: Path, report: dict, settings, threads: int = 0) -> None:
    """The encodes prepare ran, as bare ffmpeg commands run one after another."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in report["items"]:
        if not item["clips"]:
            continue
        outs = [(dest / Path(c["output"]).name, Piece(c["start"], c["frames"])) for c in item["clips"]]
        argv = normalise.video_argv(["-i", ffmpeg.url(src / item["source"])], outs, tuple(item["output_size"]),
                                    settings, threads)
        argv = [a.replace(normalise.PARTIAL, "") for a in argv]
        subprocess.run(argv, check=True, capture_output=True, stdin=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--size", default="960x540")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kohyawan-bench-"))
    try:
        src = root / "src"
        for i in range(args.videos):
            media.video(src / f"v{i}.mp4", size=args.size, seconds=args.seconds, rate=30)
            (src / f"v{i}.txt").write_text(f"test pattern {i}")
        settings = settings_from({"resolution": args.resolution})
        t1, report = timed(lambda: prepare(src, root / "j1", settings, jobs=1))
        t2, _ = timed(lambda: prepare(src, root / "j2", settings, jobs=2))
        trerun, _ = timed(lambda: prepare(src, root / "j1", settings, jobs=1))
        tplain, _ = timed(lambda: plain_ffmpeg(src, root / "plain", report, settings))
        clips = report["summary"]["clips"]
        seconds = args.videos * args.seconds
        rows = {"plain ffmpeg": tplain, "prepare --jobs 1": t1, "prepare --jobs 2": t2, "rerun (unchanged)": trerun}
        print(f"ffmpeg: {ffmpeg.ffmpeg_exe()}  cpus: {os.cpu_count()}")
        print(f"sources: {args.videos} x {args.seconds:g} s {args.size} 30 fps H.264 -> {clips} clips "
              f"at {args.resolution}px {settings.fps:g} fps, crf {settings.crf} {settings.preset}")
        for name, t in rows.items():
            print(f"{name:20s} {t:7.2f} s  {clips / t:7.2f} clips/s  {seconds / t:7.2f} source-s/s")
        print(f"overhead of prepare --jobs 1 over plain ffmpeg: {100 * (t1 / tplain - 1):+.1f} %")
        print(f"speed-up --jobs 2 over --jobs 1: {t1 / t2:.2f}x")
        print(json.dumps({k: round(v, 3) for k, v in rows.items()}))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
