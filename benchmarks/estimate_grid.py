"""The estimate per ladder rung over a grid of datasets: image-only, clip-only and mixed; 3 resolutions; 3 clip
lengths. Shows what the estimate makes of the data itself (markdown on stdout).

Each dataset is laid out as `dataset prepare` leaves it (images/, videos/, captions, report.json with every
clip's frame count and size) in a temporary folder, two items per kind; the media files are empty, since the
estimate reads sizes and frame counts from the report. Settings: the character profile, task t2v-A14B, one
expert (--expert high), `resolution` and `max_frames` set to the grid's values, as a user would for that data.
Each cell is the peak VRAM estimate in GiB; `>` marks the rung `kohyawan run --start-rung auto` starts at on
--vram GiB (default 23.99: a 24 GB card) with the profile's 1.5 GiB margin.

Runs against whichever kohyawan is importable first, so the same script prints the old estimate on a checkout
of main: `PYTHONPATH=/path/to/main python benchmarks/estimate_grid.py`.

    PYTHONPATH=. python benchmarks/estimate_grid.py [--vram 23.99] [--expert high]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kohyawan.config import profiles  # noqa: E402
from kohyawan.estimate import plan as est  # noqa: E402
from kohyawan.run import rungs  # noqa: E402

RESOLUTIONS = ((512, 512), (832, 480), (1280, 720))
FRAMES = (17, 33, 81)
KINDS = ("images", "clips", "mixed")


def lay_out(root: Path, kind: str, size: tuple[int, int], frames: int) -> Path:
    """A prepared dataset: two images and/or two clips of `frames` frames at `size`, and its report.json."""
    items = []
    wanted = {"images": ("image",), "clips": ("video",), "mixed": ("image", "video")}[kind]
    for what in wanted:
        for i in range(2):
            out = f"images/i{i}.png" if what == "image" else f"videos/c{i}-f00000.mp4"
            (root / out).parent.mkdir(parents=True, exist_ok=True)
            (root / out).write_bytes(b"")
            (root / out).with_suffix(".txt").write_text("a photo of sks person")
            clips = [] if what == "image" else [{"output": out, "start": 0, "frames": frames}]
            items.append({"source": out, "kind": what, "status": "kept", "outputs": [out],
                          "output_size": list(size), "frames": 1 if what == "image" else frames, "clips": clips})
    (root / "report.json").write_text(json.dumps({"items": items}))
    return root


def row(root: Path, kind: str, size: tuple[int, int], frames: int, args) -> tuple[list[str], list[str]]:
    sets = (f"resolution=[{size[0]},{size[1]}]", f"max_frames={frames}")
    spec = profiles.resolve("character", task="t2v-A14B", expert=args.expert, sets=sets,
                            dataset_dir=lay_out(root, kind, size, frames))
    ladder = est.ladder_estimates(spec, rungs.vram_rungs(spec), rungs.apply, vram_gib=args.vram)
    labels = [e.label for e in ladder.estimates]
    cells = [(">" if i == ladder.first_fit else "") + f"{e.vram_gib:.1f}" for i, e in enumerate(ladder.estimates)]
    work = getattr(ladder.estimates[0], "workload", None)      # None on kohyawan before the data-based estimate
    peak = work.peak() if work is not None else None
    read = f"{peak.width}x{peak.height}x{peak.frames}" if peak is not None else "settings only"
    return labels, [kind, f"{size[0]}x{size[1]}", str(frames) if kind != "images" else "-", read, *cells]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vram", type=float, default=23.99)
    ap.add_argument("--expert", default="high")
    args = ap.parse_args(argv)
    rows, header = [], None
    with tempfile.TemporaryDirectory() as tmp:
        n = 0
        for kind in KINDS:
            for size in RESOLUTIONS:
                for frames in (FRAMES if kind != "images" else FRAMES[:1]):
                    n += 1
                    labels, cells = row(Path(tmp) / f"d{n}", kind, size, frames, args)
                    header = header or labels
                    rows.append(cells)
    short = [h.replace("blocks_to_swap=", "swap ").replace("gradient_checkpointing_cpu_offload", "ckpt offload")
             for h in header]
    print(f"| data | resolution | max_frames | largest batch read | {' | '.join(short)} |")
    print("|" + "---|" * (4 + len(short)))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
