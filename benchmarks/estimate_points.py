"""The table of docs/estimate.md: every point of kohyawan/estimate/points.toml, what was measured, what the estimate
said before (kohyawan 6c077c0, recorded in the file) and what the model says now, and the step-time fit.

    PYTHONPATH=. python benchmarks/estimate_points.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kohyawan.estimate import memory, offers, points  # noqa: E402


def settings(p: points.Point) -> str:
    t, d = p.train, p.data
    weights = "fp8 scaled" if t.get("fp8_scaled") else "fp8" if t.get("fp8_base") else "fp16/bf16"
    swap = f", swap {t['blocks_to_swap']}" if t.get("blocks_to_swap") else ""
    what = f"{d['width']}x{d['height']}" + (f"x{d['frames']}" if d["kind"] == "video" else " images")
    batch = f", batch {d['batch']}" if d.get("batch", 1) != 1 else ""
    return f"{what}{batch}, {weights}{swap}, r{t.get('network_dim')}, {t.get('optimizer_type')}"


def main() -> None:
    print("| point | settings | measured (GiB) | estimate before | model now: allocated / in all (step 1) | check |")
    print("|---|---|---|---|---|---|")
    for c in points.checks():
        p = c.point
        v = memory.vram(p.inputs())
        before = f"{p.before_gib:.1f}" if p.before_gib is not None else "-"
        now = f"{v.allocated_gib:.1f} / {v.total_gib:.1f} ({v.first_step_gib:.1f})"
        verdict = ("ok" if c.ok else "FAILS: " + "; ".join(c.failures))
        if c.error is not None:
            verdict += f", {c.error:+.1%}"
        print(f"| {p.id} | {settings(p)} | {c.measured} | {before} | {now} | {verdict} |")
    print()
    h200 = offers.load_gpus()["h200"]
    band = points.time_band(h200)
    print(f"Step time on {h200.key} (mfu {h200.mfu:g}, fitted; band +-{band.relative:.0%}):")
    print()
    print("| point | measured s/step | estimate before | model now | residual |")
    print("|---|---|---|---|---|")
    for p in points.load():
        if p.s_per_step:
            now = points.predicted_seconds(p, h200)
            print(f"| {p.id} | {p.s_per_step:g} | {p.before_s_per_step:g} | {now:.2f} | {now / p.s_per_step - 1:+.0%} |")


if __name__ == "__main__":
    main()
