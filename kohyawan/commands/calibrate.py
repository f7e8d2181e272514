"""``kohyawan calibrate``: measure the real trainer on this GPU for a few steps and teach the estimate (the
calibration itself is ``kohyawan.run.calibrate``; see docs/architecture.md, "A run")."""

from __future__ import annotations

import click

from kohyawan import console
from kohyawan.commands.common import launch_spec, plan_options
from kohyawan.commands.run import _options, rehearsal_options, trainer_options
from kohyawan.errors import BadInput, Interrupted, WorkFailed


@click.command()
@plan_options(dataset_required=True)
@trainer_options
@rehearsal_options
@click.option("--rung", default=None, metavar="NAME",
              help="Measure this ladder position ('base' or a rung of the profile's [ladder] vram, with the rungs "
                   "before it) instead of the one 'kohyawan run' would start at.")
@click.option("--ladder", "whole_ladder", is_flag=True,
              help="Measure every ladder position, from the profile's settings to the last rung (one short "
                   "trainer process each).")
@click.option("--recache", is_flag=True, help="Rebuild the sample's caches.")
@click.option("--json", "as_json", is_flag=True, help="Print measured against estimated as JSON.")
def calibrate(runs_dir, trainer_dir, python, launcher, accelerate_args, gpus, rehearse, gpu_memory, rung,
              whole_ladder, recache, as_json, **plan_kwargs):
    """Measure the trainer on your GPU for 3 steps and teach the estimate what it uses.

    Trains a sample of the dataset's largest items for 3 optimizer steps (no saves) at the settings 'kohyawan run'
    would start with, at --rung, or at every ladder position with --ladder; records peak VRAM (NVML, and torch's
    own allocated/reserved peaks from inside the trainer), host RAM and s/step; prints them against the estimate.
    The calibration is stored under RUNS/calibrations/, where 'kohyawan estimate' and 'kohyawan run --start-rung
    auto' read it for this GPU.

    \b
    Example:
      kohyawan calibrate --profile character --dataset ./data/sarah \\
        --trainer-dir ~/musubi-tuner --python ~/musubi-tuner/.venv/bin/python --gpus 0
      kohyawan calibrate --profile character --dataset ./data/sarah --rehearse --gpu-memory 24 --ladder
    """
    from kohyawan.run import calibrate as calib

    if gpu_memory and not rehearse:
        raise BadInput("--gpu-memory is for --rehearse (the virtual GPU's size)")
    if rung and whole_ladder:
        raise BadInput("--rung measures one position and --ladder all of them: give one")
    spec, request = launch_spec(plan_kwargs)
    given = {"trainer_dir": trainer_dir, "python": python, "launcher": launcher, "accelerate_args": accelerate_args,
             "gpus": gpus, "rehearse": rehearse, "gpu_memory_gb": gpu_memory, "start_rung": "auto",
             "max_attempts": 1}
    opts = _options(given, runs_dir=runs_dir, recache=recache, plain=True, interval=30.0)
    mode = "ladder" if whole_ladder else "rung" if rung else "start"
    job = calib.new_calibration(spec, request, opts, mode=mode, rung=rung)
    if not as_json:
        console.err().print(f"calibration {job.ledger.data['id']} in {job.dir}", markup=False)
    job.drive()
    doc = job.results()
    if as_json:
        console.print_json(doc)
    else:
        _print(doc)
    if doc["status"] == "stopped":
        raise Interrupted(f"calibration {doc['id']} stopped: {doc.get('reason') or ''}")
    if doc["status"] != "succeeded":
        raise WorkFailed(f"calibration {doc['id']} failed: {doc.get('reason') or 'see run.json'}")


def _num(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _print(doc: dict) -> None:
    from rich.table import Table

    gpu = doc.get("gpu") or {}
    sample = doc["sample"]
    bucket = "x".join(str(v) for v in sample["bucket"])
    title = (f"{gpu.get('name', 'GPU')} ({_num(gpu.get('total_gib'))} GiB): {doc['steps']} steps on "
             f"{len(sample['items'])} {sample['kind']}(s) of the largest bucket {bucket}"
             + (" - REHEARSAL, simulated figures" if doc["rehearsal"] else ""))
    table = Table(title=title, show_edge=False)
    for col in ("rung", "VRAM est", "NVML", "alloc", "reserved", "next est", "RAM est", "RAM", "s/step est",
                "s/step", "outcome"):
        table.add_column(col)
    for p in doc["probes"]:
        est, got, nxt = p["estimate"], p["measured"], p["next_estimate"]
        table.add_row(p["label"], _num(est["vram_gib"]), _num(got["vram_gib"]), _num(got["allocated_gib"]),
                      _num(got["reserved_gib"]), _num(nxt["vram_gib"]), _num(est["ram_gib"]), _num(got["ram_gib"]),
                      _num(est["s_per_step"], 2), _num(got["s_per_step"], 2), p["outcome"])
    c = console.out()
    c.print(table)
    c.print("GiB. VRAM: the estimate before this calibration, NVML's peak for the trainer's processes, torch's "
            "allocated and reserved peaks inside the trainer, the estimate now.", markup=False, highlight=False)
    c.print(f"Stored in {doc['path']}: 'kohyawan estimate' and 'kohyawan run --start-rung auto' on "
            f"{gpu.get('name', 'this GPU')} learn from it.", markup=False, highlight=False)
    notes = sorted({n for p in doc["probes"] for n in p["next_estimate"]["corrections"]})
    for note in notes:
        c.print(f"  next estimate: {note}", markup=False, highlight=False)
