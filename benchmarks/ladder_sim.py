"""Simulation: how many OOM attempts does a run make when it starts at the estimated rung, versus starting
at the base settings and climbing the fallback ladder one OOM at a time?

The "true" peak VRAM of each setting is the model's estimate times an error factor drawn per grid cell
(log-normal, --sigma, default 0.05 = the calibration error stated in kohyawan/estimate/memory.py), times a
systematic --bias (default 1.0; try 1.10 for a model that underestimates by 10 %). A setting OOMs when its
true peak exceeds what torch can allocate (the card's GiB minus --reserve, 0.45 GiB on a 24 GB card).

Strategy "base": start at the profile's settings, climb one rung per OOM.
Strategy "estimate": start at `estimate.first_fitting_rung` (margin --margin GiB), climb one rung per OOM.
Reported per strategy: runs with zero OOMs, mean and max OOM attempts, runs that never fit, and for
"estimate" how many rungs it starts beyond the first truly fitting one (a quality/speed cost of the margin).

    PYTHONPATH=. python benchmarks/ladder_sim.py [--profile character] [--sigma 0.05] [--bias 1.0] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kohyawan.estimate import plan as est  # noqa: E402
from kohyawan.config import profiles  # noqa: E402
from kohyawan.run import rungs  # noqa: E402

GPUS = (24, 32, 40, 48, 80)             # nominal GiB (NVML total: 23.99, 31.84, 39.5, 47.99, 79.2)
NVML_TOTAL = {24: 23.99, 32: 31.84, 40: 39.5, 48: 47.99, 80: 79.2}
RESOLUTIONS = ((384, 384), (512, 512), (640, 640), (832, 480), (768, 768))
FRAMES = (1, 17, 33, 49, 81)
RANKS = (32, 64, 128)


def simulate(profile: str, expert: str, sigma: float, bias: float, margin: float, reserve: float, seed: int):
    rng = random.Random(seed)
    rows = []
    for gb, (w, h), frames, rank in itertools.product(GPUS, RESOLUTIONS, FRAMES, RANKS):
        sets = (f"resolution=[{w},{h}]", f"target_frames=[{frames}]", f"network_dim={rank}",
                f"network_alpha={float(rank)}")
        spec = profiles.resolve(profile, expert=expert, sets=sets)
        ladder = est.ladder_estimates(spec, rungs.vram_rungs(spec), rungs.apply, vram_gib=NVML_TOTAL[gb],
                                      margin_gib=margin)
        error = rng.lognormvariate(0.0, sigma) * bias
        capacity = NVML_TOTAL[gb] - reserve
        true_fits = [e.vram_gib * error <= capacity for e in ladder.estimates]
        first_true = next((i for i, f in enumerate(true_fits) if f), None)

        def ooms(start: int) -> tuple[int, bool]:
            n = 0
            for i in range(start, len(true_fits)):
                if true_fits[i]:
                    return n, True
                n += 1
            return n, False

        base_ooms, base_ok = ooms(0)
        start = ladder.first_fit if ladder.first_fit >= 0 else len(ladder.estimates) - 1
        est_ooms, est_ok = ooms(start)
        rows.append({"gpu": gb, "resolution": [w, h], "frames": frames, "rank": rank, "error": round(error, 3),
                     "first_true": first_true, "start": start, "base_ooms": base_ooms, "base_ok": base_ok,
                     "est_ooms": est_ooms, "est_ok": est_ok,
                     "overshoot": (start - first_true) if first_true is not None and start > first_true else 0})
    return rows


def summary(rows):
    fit = [r for r in rows if r["first_true"] is not None]
    out = {"cells": len(rows), "cells_where_some_rung_fits": len(fit)}
    for key in ("base", "est"):
        o = [r[f"{key}_ooms"] for r in fit]
        out[key] = {"zero_oom_runs": sum(1 for x in o if x == 0), "mean_ooms": round(statistics.mean(o), 2),
                    "max_ooms": max(o), "total_ooms": sum(o)}
    over = [r["overshoot"] for r in fit]
    out["est"]["starts_beyond_first_fitting_rung"] = sum(1 for x in over if x > 0)
    out["est"]["mean_overshoot_rungs"] = round(statistics.mean(over), 3)
    out["never_fit"] = len(rows) - len(fit)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="character")
    ap.add_argument("--expert", default="both")
    ap.add_argument("--sigma", type=float, default=0.05)
    ap.add_argument("--bias", type=float, default=1.0)
    ap.add_argument("--margin", type=float, default=est.DEFAULT_MARGIN_GIB)
    ap.add_argument("--reserve", type=float, default=0.45)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = simulate(args.profile, args.expert, args.sigma, args.bias, args.margin, args.reserve, args.seed)
    result = {"args": vars(args), "summary": summary(rows), "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        result["rows"] = rows
        print(json.dumps(result, indent=1))
        return
    s = result["summary"]
    print(f"{s['cells']} cells ({len(GPUS)} GPUs x {len(RESOLUTIONS)} resolutions x {len(FRAMES)} frame counts x "
          f"{len(RANKS)} ranks), profile {args.profile}, expert {args.expert}, error sigma {args.sigma}, "
          f"bias {args.bias}, margin {args.margin} GiB; {s['never_fit']} cells fit on no rung")
    for key, label in (("base", "start at base, climb on OOM"), ("est", "start at estimated rung")):
        b = s[key]
        print(f"  {label:<30} zero-OOM runs {b['zero_oom_runs']}/{s['cells_where_some_rung_fits']}, "
              f"OOM attempts mean {b['mean_ooms']}, max {b['max_ooms']}, total {b['total_ooms']}")
    print(f"  estimated start beyond the first truly fitting rung: {s['est']['starts_beyond_first_fitting_rung']} "
          f"runs (mean {s['est']['mean_overshoot_rungs']} rungs)")
    print(f"  ({result['seconds']} s)")


if __name__ == "__main__":
    main()
