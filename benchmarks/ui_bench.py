"""kohyawan ui: how fast a run page with 100,000 metric lines opens, and the server's CPU while 3 pages
follow live runs.

Run:  PYTHONPATH=. python benchmarks/ui_bench.py [seconds]     (default 30; needs the ui extra)

1. A real rehearsal run, whose metrics.jsonl is then grown to 100,000 lines (two attempts, as after an
   OOM) with the ledger's own writer (``Ledger.metric``), the way the tracker writes them. A ``kohyawan ui``
   process serves it. Measured: the run page's HTML and its chart data (first request: file parsed and
   downsampled; again: cached), the chart payload's size, and, with chromium present, the time from
   navigation until both charts are drawn in a real headless browser.
2. Three rehearsal runs training (0.1 s per step), three chromium pages (or, without chromium, three
   followers making the page's own requests on every event) on their run pages for N seconds. Reported:
   the server process's CPU time (user + system) as a share of one core over the wall time.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from runtime_helpers import FAST, base_args, env, make_dataset  # noqa: E402

from kohyawan.run.ledger import Ledger  # noqa: E402

LINES = 100_000
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def grow_metrics(run_dir: Path, lines: int) -> None:
    led = Ledger.load(run_dir)
    (run_dir / "metrics.jsonl").unlink()
    rng = random.Random(1)
    t = time.time() - lines * 2.0
    oom_at = lines // 3
    for i in range(lines):
        attempt = 1 if i < oom_at else 2
        step = i + 1 if attempt == 1 else i + 1 - oom_at + (oom_at - 500)  # resumed 500 steps back
        t += 2.0
        led.metric({"step": step, "loss": 0.12 + 0.04 * rng.random() * (1 - i / lines), "s_per_it": 2.0,
                    "vram_gb": 20.5 + rng.random(), "ram_gb": 31.0 + rng.random(), "time": round(t, 3),
                    "attempt": attempt, "stage": "train"})
    first = led.data["attempts"][0]
    first.update(outcome="oom_vram", steps=[0, oom_at], reason="torch.OutOfMemoryError: CUDA out of memory")
    led.data["attempts"].append(dict(first, n=2, rung="fp8_base", rungs=["fp8_base"], outcome="succeeded",
                                     steps=[oom_at - 500, step], reason=f"trained to step {step}"))
    led.data["total_steps"] = step
    led.save()


def timed_get(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        body = r.read()
    return time.perf_counter() - t0, len(body)


def start_server(runs: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "kohyawan", "ui", "--runs-dir", str(runs), "--port", "0"],
                            env=env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    line = proc.stderr.readline()
    return proc, line.split(" on ")[1].strip().rstrip("/")


def chromium_path() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None
    return shutil.which("chromium")


def page_load(base: str, url_path: str) -> list[float]:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=chromium_path(), headless=True, args=FLAGS)
        page = ctx.new_page()
        for _ in range(3):
            t0 = time.perf_counter()
            page.goto(base + url_path)
            page.wait_for_selector("#charts[data-loaded]", timeout=60000)
            page.wait_for_selector("#mem-chart canvas")
            times.append(time.perf_counter() - t0)
        ctx.close()
    return times


def part1(work: Path) -> None:
    data = make_dataset(work / "data")
    r = subprocess.run(base_args(data, work / "runs", "big"), env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    grow_metrics(work / "runs" / "big", LINES)
    size = (work / "runs" / "big" / "metrics.jsonl").stat().st_size
    from kohyawan.ui.series import MetricsCache

    metrics = work / "runs" / "big" / "metrics.jsonl"
    attempts = Ledger.load(work / "runs" / "big").data["attempts"]
    t0 = time.perf_counter()
    MetricsCache().payload(metrics, attempts)
    cold_s = time.perf_counter() - t0
    print(f"run with {LINES:,} metric lines ({size / 1e6:.1f} MB metrics.jsonl); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  parse + downsample, nothing cached   {cold_s * 1000:7.0f} ms  (in process; the server does this "
          "in the background at start and when the runs list opens)")
    server, base = start_server(work / "runs")
    try:
        first_s, payload = timed_get(base + "/api/runs/0/big/series")
        again_s, _ = timed_get(base + "/api/runs/0/big/series")
        html_s, html_b = timed_get(base + "/runs/0/big")
        doc = json.loads(urllib.request.urlopen(base + "/api/runs/0/big/series").read())
        print(f"  chart data, first request after start {first_s * 1000:6.0f} ms  ({payload / 1000:.0f} kB, "
              f"{doc['points']} points for {doc['records']:,} records)")
        print(f"  chart data, again                     {again_s * 1000:6.0f} ms  (cached until the file grows)")
        print(f"  run page HTML                         {html_s * 1000:6.0f} ms  ({html_b / 1000:.0f} kB)")
        if chromium_path():
            loads = page_load(base, "/runs/0/big")
            print("  chromium, navigation until both charts are drawn: "
                  + ", ".join(f"{t * 1000:.0f} ms" for t in loads))
    finally:
        server.terminate()
        server.wait()


def follow_with_python(base: str, names: list[str], seconds: float) -> None:
    def follower(name: str) -> None:
        stream = urllib.request.urlopen(f"{base}/events?topic=run&root=0&id={name}", timeout=seconds + 30)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            line = stream.readline()
            if line.startswith(b"event: change"):
                urllib.request.urlopen(f"{base}/runs/0/{name}/body").read()
                urllib.request.urlopen(f"{base}/api/runs/0/{name}/series").read()
        stream.close()

    threads = [threading.Thread(target=follower, args=(n,), daemon=True) for n in names]
    for th in threads:
        th.start()
    for th in threads:
        th.join(seconds + 60)


def follow_with_chromium(base: str, names: list[str], seconds: float) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=chromium_path(), headless=True, args=FLAGS)
        pages = [ctx.new_page() for _ in names]
        for page, name in zip(pages, names):
            page.goto(f"{base}/runs/0/{name}")
        time.sleep(seconds)
        ctx.close()


def part2(work: Path, seconds: float) -> None:
    import psutil

    data = work / "data"
    names = [f"live{i}" for i in range(3)]
    runs = [subprocess.Popen(base_args(data, work / "runs", n, "--set", "max_train_epochs=400"),
                             env=env(KOHYAWAN_REHEARSE_STEP_S="0.1"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for n in names]
    server, base = start_server(work / "runs")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all((work / "runs" / n / "metrics.jsonl").exists() for n in names):
            time.sleep(0.2)
        proc = psutil.Process(server.pid)
        c0, t0 = proc.cpu_times(), time.monotonic()
        how = "3 chromium pages" if chromium_path() else "3 followers making the page's requests"
        (follow_with_chromium if chromium_path() else follow_with_python)(base, names, seconds)
        c1, t1 = proc.cpu_times(), time.monotonic()
        used = (c1.user - c0.user) + (c1.system - c0.system)
        steps = [json.loads((work / "runs" / n / "metrics.jsonl").read_text().splitlines()[-1])["step"] for n in names]
        print(f"server CPU while {how} follow 3 live runs for {t1 - t0:.0f} s: {used:.2f} s of CPU = "
              f"{100 * used / (t1 - t0):.1f} % of one core (runs at steps {', '.join(map(str, steps))})")
    finally:
        server.terminate()
        server.wait()
        for p in runs:
            p.terminate()
        for p in runs:
            p.wait()


def main(seconds: float = 30.0) -> None:
    os.environ.update(FAST)
    with tempfile.TemporaryDirectory() as tmp:
        part1(Path(tmp))
        part2(Path(tmp), seconds)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 30.0)
