"""Throughput of `dataset prepare` against the same ffmpeg encodes run directly.

    PYTHONPATH=. python benchmarks/dataset_bench.py [--videos 4] [--seconds 8] [--size 960x540] [--repeat 2]

Makes synthetic sources (testsrc2, 30 fps, H.264), then times:
  plain ffmpeg   the encode command prepare runs when it decodes a source itself (one per source: fps,
                 scale, crop, split into clips), one after another, with prepare's own clip plan;
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

from kohyawan.dataset import ffmpeg, normalise  # noqa: E402
from kohyawan.dataset.plan import Piece  # noqa: E402
from kohyawan.dataset.prepare import prepare  # noqa: E402
from kohyawan.dataset.settings import settings_from  # noqa: E402
from tests import media  # noqa: E402


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


def run_variant(variant: str, root: Path, resolution: int) -> None:
    """One measured variant, in its own process (so its CPU time can be read with wait4)."""
    settings = settings_from({"resolution": resolution})
    src = root / "src"
    if variant == "plain":
        report = json.loads((root / "plan.json").read_text())
        plain_ffmpeg(src, root / "plain", report, settings)
    elif variant in ("j1", "j2"):
        dest = root / variant
        shutil.rmtree(dest, ignore_errors=True)
        prepare(src, dest, settings, jobs=int(variant[1]))
    elif variant == "rerun":
        prepare(src, root / "plan", settings, jobs=1)


def measure(variant: str, root: Path, resolution: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process tree) for one variant."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--variant", variant, "--root", str(root),
                             "--resolution", str(resolution)])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"variant {variant} failed")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--size", default="960x540")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2, help="runs per variant, interleaved; the best is kept")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        run_variant(args.variant, Path(args.root), args.resolution)
        return
    root = Path(tempfile.mkdtemp(prefix="kohyawan-bench-"))
    try:
        src = root / "src"
        for i in range(args.videos):
            media.video(src / f"v{i}.mp4", size=args.size, seconds=args.seconds, rate=30)
            (src / f"v{i}.txt").write_text(f"test pattern {i}")
        settings = settings_from({"resolution": args.resolution})
        report = prepare(src, root / "plan", settings, jobs=1)  # the clip plan plain ffmpeg re-runs
        (root / "plan.json").write_text(json.dumps(report))
        names = {"plain": "plain ffmpeg", "j1": "prepare --jobs 1", "j2": "prepare --jobs 2",
                 "rerun": "rerun (unchanged)"}
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeat):
            for variant in names:
                wall, cpu = measure(variant, root, args.resolution)
                old = best.get(variant)
                best[variant] = (min(wall, old[0]) if old else wall, min(cpu, old[1]) if old else cpu)
        clips = report["summary"]["clips"]
        seconds = args.videos * args.seconds
        print(f"ffmpeg: {ffmpeg.ffmpeg_exe()}  cpus: {os.cpu_count()}  load average: {os.getloadavg()[0]:.1f}")
        print(f"sources: {args.videos} x {args.seconds:g} s {args.size} 30 fps H.264 -> {clips} clips "
              f"at {args.resolution}px {settings.fps:g} fps, crf {settings.crf} {settings.preset}; best of {args.repeat}")
        for variant, name in names.items():
            wall, cpu = best[variant]
            print(f"{name:20s} wall {wall:7.2f} s  cpu {cpu:7.2f} s  {clips / wall:7.2f} clips/s  "
                  f"{seconds / wall:7.2f} source-s/s")
        (pw, pc), (w1, c1), (w2, _c2) = best["plain"], best["j1"], best["j2"]
        print(f"overhead of prepare --jobs 1 over plain ffmpeg: wall {100 * (w1 / pw - 1):+.1f} %, "
              f"cpu {100 * (c1 / pc - 1):+.1f} %")
        print(f"speed-up --jobs 2 over --jobs 1 (wall): {w1 / w2:.2f}x")
        print(json.dumps({v: {"wall": round(w, 3), "cpu": round(c, 3)} for v, (w, c) in best.items()}))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
