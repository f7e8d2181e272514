"""Scheduling overhead of the local batch loop: how long a free GPU stays idle between jobs.

Runs the real scheduler (kohyawan.batch.driver.run: manifest, SQLite queue, pidfd wait, child processes)
over N jobs on K virtual GPUs and reports, per hand-over on a GPU:

- driver gap: the scheduler noticing a job's exit -> the next job's process spawned (queue events);
- process gap: the last instruction of the ending job -> the first instruction of the next job on that GPU
  (timestamps written by the children themselves), i.e. the driver gap plus reaping and the new
  interpreter's start-up;
- with --real: the driver gap over real `kohyawan run --rehearse` jobs, and the kohyawan CLI's own start-up
  (`kohyawan run --help`), the first part of the "trainer's own start-up" the target excludes.

Usage:  PYTHONPATH=. python benchmarks/scheduling_bench.py [--jobs 20] [--gpus 0,1] [--job-seconds 0.2] [--real]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

CHILD = textwrap.dedent('''
    import json, os, sys, time
    t0 = time.time()
    args = sys.argv[1:]
    run_dir = os.path.join(args[args.index("--runs-dir") + 1], args[args.index("--name") + 1])
    os.makedirs(run_dir, exist_ok=True)
    time.sleep(float(os.environ["BENCH_JOB_S"]))
    data = {"version": 1, "id": os.path.basename(run_dir), "status": "succeeded", "attempts": [], "checkpoints": []}
    with open(os.path.join(run_dir, "run.json"), "w") as fh:
        json.dump(data, fh)
    with open(os.environ["BENCH_LOG"], "a") as fh:
        fh.write(json.dumps({"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": t0, "end": time.time()}) + "\\n")
''')


def _stats(values):
    values = sorted(values)
    if not values:
        return "n/a"
    p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
    return (f"n={len(values)} median {statistics.median(values) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
            f"max {values[-1] * 1000:.1f} ms")


def _manifest(folder: Path, jobs: int, export: bool) -> Path:
    from conftest import make_dataset

    make_dataset(folder / "data", images=3)
    lines = ['[defaults]', 'task = "t2v-1.3B"', 'rehearse = true', f'export = {str(export).lower()}',
             'overrides = { max_train_epochs = 1 }', '']
    for i in range(jobs):
        lines += ["[[jobs]]", f'name = "job{i:03d}"', 'dataset = "data"', ""]
    path = folder / "bench.toml"
    path.write_text("\n".join(lines))
    return path


def process_gaps(log: Path) -> list[float]:
    by_gpu: dict[str, list[dict]] = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        by_gpu.setdefault(rec["gpu"], []).append(rec)
    gaps = []
    for recs in by_gpu.values():
        recs.sort(key=lambda r: r["start"])
        gaps += [b["start"] - a["end"] for a, b in zip(recs, recs[1:])]
    return gaps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--gpus", default="0,1")
    ap.add_argument("--job-seconds", type=float, default=0.2)
    ap.add_argument("--real", action="store_true", help="also run real `kohyawan run --rehearse` jobs")
    args = ap.parse_args()

    from kohyawan.batch import driver, report
    from kohyawan.batch.queue import Queue

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        child = tmp / "child.py"
        child.write_text(CHILD)
        log = tmp / "times.jsonl"
        os.environ.update(BENCH_JOB_S=str(args.job_seconds), BENCH_LOG=str(log))
        path = _manifest(tmp / "a", args.jobs, export=False)
        t0 = time.perf_counter()
        doc = driver.run(driver.BatchOptions(manifest=path, gpus=args.gpus, kohyawan=(sys.executable, str(child))))
        wall = time.perf_counter() - t0
        q = Queue(Path(doc["dir"]), readonly=True)
        gaps = report.scheduling_gaps(q)
        q.close()
        slots = len(args.gpus.split(","))
        ideal = args.jobs / slots * args.job_seconds
        print(f"minimal jobs: {args.jobs} x {args.job_seconds}s on {slots} GPU(s): wall {wall:.2f}s (ideal {ideal:.2f}s)")
        print(f"  driver gap  (exit noticed -> next spawned): {_stats(gaps)}")
        print(f"  process gap (last instruction -> next job's first): {_stats(process_gaps(log))}")
        t = time.perf_counter()
        import subprocess

        for _ in range(5):
            subprocess.run([sys.executable, "-c", "pass"], check=True)
        print(f"  (bare `python -c pass` start-up on this machine: {(time.perf_counter() - t) / 5 * 1000:.0f} ms)")

        if args.real:
            os.environ.update(KOHYAWAN_REHEARSE_STEP_S="0.01", KOHYAWAN_REHEARSE_STARTUP_S="0.0",
                              KOHYAWAN_REHEARSE_CACHE_S="0.0")
            n = min(args.jobs, 6)
            path = _manifest(tmp / "b", n, export=False)
            t0 = time.perf_counter()
            doc = driver.run(driver.BatchOptions(manifest=path, gpus=args.gpus))
            wall = time.perf_counter() - t0
            q = Queue(Path(doc["dir"]), readonly=True)
            gaps = report.scheduling_gaps(q)
            q.close()
            startup = []
            for _ in range(3):
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "kohyawan", "run", "--help"], check=True, capture_output=True)
                startup.append(time.perf_counter() - t)
            ok = sum(j["state"] == "succeeded" for j in doc["jobs"])
            print(f"real `kohyawan run --rehearse` jobs: {n} on {slots} GPU(s): {ok} succeeded, wall {wall:.2f}s")
            print(f"  driver gap  (exit noticed -> next spawned): {_stats(gaps)}")
            print(f"  kohyawan CLI start-up (`kohyawan run --help`, interpreter + imports): {_stats(startup)}")


if __name__ == "__main__":
    main()
