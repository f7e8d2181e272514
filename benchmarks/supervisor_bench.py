"""Supervisor CPU cost while babysitting a trainer that prints 20 progress updates a second.

Run:  PYTHONPATH=. python benchmarks/supervisor_bench.py [seconds]   (default 30)

The "trainer" draws musubi's tqdm bar 20 times a second with \\r (each step drawn twice, as musubi
does: update, then set_postfix), plus a save every 100 steps. The supervisor does everything a real run
does: tee to console.log, split, parse, track absolute steps and metrics.jsonl, feed the watchdog, sample
the process tree's memory every 2 s. Reported: this process's CPU time (user + system, children
excluded) as a share of one core over the wall time.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kohyawan.run.ledger import Ledger  # noqa: E402
from kohyawan.run.supervise import Supervisor  # noqa: E402
from kohyawan.run.tracker import Tracker  # noqa: E402
from kohyawan.run.samplers import host_sample  # noqa: E402
from kohyawan.run.watchdog import Watchdog  # noqa: E402

TRAINER = r"""
import sys, time
total = int(sys.argv[1]); t0 = time.monotonic()
for n in range(1, total + 1):
    time.sleep(max(0.0, t0 + n * 0.1 - time.monotonic()))
    for loss in ("0.1%02d" % (n % 100), "0.1%02d" % ((n + 1) % 100)):
        sys.stderr.write(f"\rsteps:  50%|#####     | {n}/{total} [00:10<00:10,  0.10s/it, avr_loss={loss}]")
        sys.stderr.flush()
    if n % 100 == 0:
        print(f"\nsaving checkpoint: /nonexistent/x-step{n:08d}.safetensors", flush=True)
"""


def main(seconds: float = 30.0) -> None:
    total = int(seconds * 10)  # 10 steps/s x 2 draws = 20 updates/s
    with tempfile.TemporaryDirectory() as tmp:
        led = Ledger.create(Path(tmp) / "run", run_id="bench", profile="bench", task="t2v-A14B", total_steps=total)
        tracker = Tracker(led, attempt=1, stage="train", base_name="bench", start_step=0, total_steps=total)
        wd = Watchdog({}, started=time.monotonic())
        last = [0.0]

        def on_event(ev):
            tracker.on_event(ev)
            if ev.kind == "progress" and ev.step:
                wd.step(ev.step, ev.loss, time.monotonic())

        def on_tick(sup, now):
            if now - last[0] >= 2.0:
                last[0] = now
                ram, _swap, _pids = host_sample(sup.pid)
                tracker.sample(None, ram)
            wd.check(now)

        sup = Supervisor([sys.executable, "-c", TRAINER, str(total)], log_path=Path(tmp) / "console.log",
                         on_event=on_event, on_tick=on_tick, tick_s=1.0)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        result = sup.run()
        wall = time.monotonic() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        tracker.close(True)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        lines = sum(1 for _ in open(Path(led.dir) / "metrics.jsonl"))
        print(f"updates: {result.lines} lines in {wall:.1f} s ({result.lines / wall:.1f}/s), metrics rows: {lines}")
        print(f"supervisor CPU: {cpu:.3f} s = {100 * cpu / wall:.2f} % of one core (target < 2 %)")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 30.0)
