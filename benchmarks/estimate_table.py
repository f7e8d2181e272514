"""The README table: each built-in profile's estimate on 24, 40 and 80 GB GPUs (markdown on stdout).

Profile values as resolved (no dataset, so no dataset-size rules, and clips assumed as long as the profile
allows: its max_frames), task t2v-A14B; --expert both (default) or low/high; time for --steps steps.

    PYTHONPATH=. python benchmarks/estimate_table.py [--expert both] [--steps 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kohyawan.estimate import plan as est  # noqa: E402
from kohyawan.estimate import offers as gpus  # noqa: E402
from kohyawan.config import profiles  # noqa: E402
from kohyawan.run import rungs  # noqa: E402
from kohyawan.config.steps import longest_clip  # noqa: E402

GPUS = ("rtx4090", "a100-40gb", "h100-80gb")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--expert", default="both")
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args(argv)
    table = gpus.load_gpus()
    print(f"| profile | GPU | start rung (cumulative changes) | peak VRAM GiB | host RAM GiB | s/step | "
          f"{args.steps} steps |")
    print("|---|---|---|---|---|---|---|")
    for profile in ("character", "style", "motion", "domain"):
        spec = profiles.resolve(profile, expert=args.expert)
        d = spec.dataset
        for key in GPUS:
            gpu = table[key]
            ladder = est.ladder_estimates(spec, rungs.vram_rungs(spec), rungs.apply, gpu=gpu,
                                          total_steps=args.steps)
            i = ladder.first_fit
            e = ladder.estimates[i] if i >= 0 else ladder.estimates[-1]
            changes = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in e.changes.items()) or "-"
            label = (e.label if i >= 0 else "nothing fits") + f" ({changes})"
            name = f"{profile} (dim {spec.train['network_dim']}, {d['resolution'][0]}x{d['resolution'][1]}, " \
                   f"{longest_clip(d)} frames)"
            print(f"| {name} | {key} ({gpu.vram_gib:g}) | {label} | {e.vram_gib:.1f} | {e.ram_gib:.1f} | "
                  f"{e.s_per_step:.1f} | {e.hours:.1f} h |")


if __name__ == "__main__":
    main()
