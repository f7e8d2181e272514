"""``kohyawan estimate``: will this plan fit, how long will it take, what will it cost (before any GPU hour)."""

from __future__ import annotations

from pathlib import Path

import click

from kohyawan import console
from kohyawan.commands.common import plan_options, spec_from_kwargs

ESTIMATE_VERSION = 1


def _fmt_hours(hours):
    if hours is None:
        return "-"
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"


def _steps(spec, steps_override):
    """(items, total_steps, epochs) counted like the trainer, when a dataset is given."""
    if spec.dataset_dir is None:
        return None, steps_override, None
    from kohyawan.dataset import inventory
    from kohyawan.config import steps as steps_mod

    inv = inventory.scan(spec.dataset_dir, spec.dataset.get("caption_extension", ".txt"))
    if not inv.folders:
        return None, steps_override, None
    counted = steps_mod.count(inv, spec.dataset, spec.train)
    return counted.items, steps_override or counted.total_steps, counted.epochs


def _default_runs_dir() -> Path:
    """The project's [kohyawan] runs_dir (kohyawan.toml in the current folder), else ./runs."""
    from kohyawan.config import profiles

    project_file = profiles.find_project_file()
    configured = profiles.project_settings(project_file).get("runs_dir")
    if configured and project_file is not None:
        return project_file.parent / Path(configured).expanduser()
    return Path("runs")


def _local_gpu():
    """The GPU 'kohyawan run' would train on here as (name, total GiB), or None: the first the trainer sees
    (CUDA_VISIBLE_DEVICES, in PCI bus order unless CUDA_DEVICE_ORDER says otherwise)."""
    import os

    from kohyawan.doctor import nvml

    seen = nvml.probe_for_trainer(nvml.real_nvml(), None, os.environ)
    return (seen.devices[0].name, seen.devices[0].total_gib) if seen.devices else None


@click.command()
@plan_options()
@click.option("--gpu", "gpu_name", default=None, metavar="NAME",
              help="GPU to estimate for: a key or name from the GPU table (rtx4090, a100-40gb, 'NVIDIA H100 80GB "
                   "HBM3', ...). Default: this machine's GPU.")
@click.option("--vram", "vram", type=click.FloatRange(min=0, min_open=True), default=None, metavar="GB",
              help="GPU memory to fit into, in GiB (overrides the GPU's own size).")
@click.option("--ram", "ram", type=click.FloatRange(min=0, min_open=True), default=None, metavar="GB",
              help="Host RAM to fit into, in GiB.")
@click.option("--margin", type=click.FloatRange(min=0), default=None, metavar="GB",
              help="VRAM kept free as a safety margin (default: the profile's watchdog.vram_margin_gb, 1.5).")
@click.option("--steps", "steps_override", type=click.IntRange(min=1), default=None, metavar="N",
              help="Total optimizer steps (default: counted from --dataset like the trainer does).")
@click.option("--runs-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Run ledgers to learn from (default: kohyawan.toml's runs_dir, else ./runs). Observed VRAM and s/step on the same GPU correct "
                   "the estimate.")
@click.option("--gpus-file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Extra GPU/offer table (TOML, same format as the built-in gpus.toml).")
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
def estimate(gpu_name, vram, ram, margin, steps_override, runs_dir, gpus_file, as_json, **kwargs):
    """Predict peak VRAM, host RAM, time, disk and cost for a plan and each fallback rung.

    The first rung that fits the GPU with the safety margin is marked: `kohyawan run` starts there.
    Figures are GiB; the memory model, its calibration and its accuracy: docs/estimate.md.

    \b
    Example:
      kohyawan estimate --profile character --dataset ./data/sarah --gpu rtx4090
      kohyawan estimate --profile motion --dataset ./clips --vram 40 --ram 64 --json
    """
    from kohyawan.estimate import plan as est
    from kohyawan.estimate import offers as gpus_mod
    from kohyawan.estimate import observations
    from kohyawan.run import rungs

    spec = spec_from_kwargs(kwargs)
    table = gpus_mod.load_gpus(gpus_file)
    gpu = None
    detected = None
    if gpu_name:
        gpu = gpus_mod.find_gpu(gpu_name, table)
    elif vram is None:
        detected = _local_gpu()
        if detected:
            try:
                gpu = gpus_mod.find_gpu(detected[0], table)
            except Exception:
                vram = detected[1]
    if margin is None:
        margin = float(spec.extra.get("watchdog", {}).get("vram_margin_gb", est.DEFAULT_MARGIN_GIB))
    items, total_steps, epochs = _steps(spec, steps_override)
    obs = observations.load_observations(runs_dir or _default_runs_dir())
    ladder = est.ladder_estimates(
        spec, rungs.vram_rungs(spec), rungs.apply, gpu=gpu, vram_gib=vram, ram_gib=ram, margin_gib=margin,
        items=items, total_steps=total_steps, epochs=epochs, observations=obs,
        gpu_name=(detected[0] if detected else None), offers=list(table.values()),
        expandable_segments=_expandable())
    doc = {"version": ESTIMATE_VERSION, "profile": spec.profile, "variant": spec.variant, "task": spec.task,
           "expert": spec.expert, "gpu": gpu.key if gpu else None,
           "vram_gib": vram if vram is not None else (gpu.vram_gib if gpu else None), "ram_gib": ram,
           "margin_gib": margin, "items": items, **ladder.to_dict(), **_basis_doc(margin)}
    for note in spec.notes:
        console.warn(note)
    if as_json:
        console.print_json(doc)
        return
    _print(ladder, doc, gpu)
    _print_basis(ladder)


def _print(ladder, doc, gpu) -> None:
    c = console.out()
    limit = doc["vram_gib"]
    _print_ladder(c, ladder, _title(doc, gpu, limit))
    c.print(_start_line(ladder, limit))
    shown = ladder.estimates[max(ladder.first_fit, 0)]
    d = shown.disk_gib
    per = "" if doc["items"] else " per item"
    c.print(f"Disk{per}: latent caches {d['latent_cache']:.2f}, text caches {d['text_cache']:.2f} (at most), "
            f"checkpoints {d['checkpoints']:.2f}, states {d['states']:.2f}, total {d['total']:.2f} GiB")
    for line in _cost_lines(shown) + _learnt_lines(ladder):
        c.print(line)


def _title(doc, gpu, limit) -> str:
    return f"{doc['profile']}" + (f" + {doc['variant']}" if doc["variant"] else "") + f" ({doc['task']}, " \
        f"expert {doc['expert']})" + (f" on {gpu.key}" if gpu else "") + \
        (f", {limit:.1f} GiB VRAM" if limit else "")


def _print_ladder(c, ladder, title: str) -> None:
    """One row per rung: memory, speed, time and whether it fits; '>' marks the rung a run starts at."""
    from kohyawan.console import print_table

    rows = []
    for i, e in enumerate(ladder.estimates):
        fits = {True: "yes", False: "no", None: "?"}[e.fits]
        mark = ">" if i == ladder.first_fit else ""
        name = e.label if i == 0 else f"+ {e.label}"
        rows.append([mark, name, f"{e.vram_gib:.1f}", f"{e.ram_gib:.1f}",
                     "-" if e.s_per_step is None else f"{e.s_per_step:.1f}", _fmt_hours(e.hours), fits])
    print_table(["", "rung", "VRAM GiB", "RAM GiB", "s/step", "time", "fits"], rows, console=c, label=1, title=title,
                show_edge=False)


def _start_line(ladder, limit) -> str:
    """Where a run would start, or why nothing fits, or that no GPU size is known."""
    if not limit:
        return "No GPU given or found: pass --gpu NAME or --vram GB to mark the rung that fits."
    if ladder.first_fit >= 0:
        chosen = ladder.estimates[ladder.first_fit]
        return (f"Start at: {chosen.label} (peak {chosen.vram_gib:.1f} GiB + {chosen.margin_gib:.1f} GiB margin "
                f"<= {limit:.1f} GiB)" + (f"; changes: {_changes(chosen.changes)}" if chosen.changes else ""))
    vram_ok = [e for e in ladder.estimates if e.fits_vram]
    if vram_ok:
        e = vram_ok[0]
        return (f"'{e.label}' fits the GPU but needs {e.ram_gib:.1f} GiB host RAM (limit {e.ram_limit_gib:.1f}): "
                "add RAM, or lower blocks_to_swap with a larger GPU.")
    return "Nothing on the ladder fits this GPU: expect out-of-memory; use a larger GPU (see costs below)."


def _cost_lines(shown) -> list[str]:
    """Time and cost of the shown rung on the GPUs it fits, cheapest first."""
    if shown.total_steps is None:
        return ["Time and cost need a step count: give --dataset or --steps."]
    if not shown.costs:
        return []
    lines = [f"Cost of {shown.total_steps} steps at '{shown.label}' on GPUs it fits (cheapest first):"]
    for cost in shown.costs[:8]:
        price = f"${cost.usd:.2f}" + (f"-{cost.usd_max:.2f}" if cost.usd_max else "")
        src = " (guide price)" if cost.source == "guide" else " (example price: check)"
        lines.append(f"  {cost.gpu:<11} {cost.provider:<8} {_fmt_hours(cost.hours):>8}  {price}{src}")
    return lines


def _learnt_lines(ladder) -> list[str]:
    """Corrections learnt from the user's own runs, each with the rungs it applied to."""
    corrected: dict[str, list[str]] = {}
    for e in ladder.estimates:
        for note in e.corrections.notes:
            corrected.setdefault(note, []).append(e.label)
    return [f"Learnt from your runs: {note} (applied to {', '.join(labels)}; other rungs are too far from "
            "what was observed)" if len(labels) < len(ladder.estimates) else f"Learnt from your runs: {note}"
            for note, labels in corrected.items()]


def _changes(changes) -> str:
    return ", ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in changes.items())


def _expandable() -> bool:
    """Whether the trainer will run with expandable segments: kohyawan run's setting unless the user set one."""
    import os

    from kohyawan.estimate import allocator

    return allocator.expandable(allocator.conf(os.environ)[0])


def _basis_doc(margin) -> dict:
    import os

    from kohyawan.estimate import allocator, points

    return {"alloc_conf": allocator.conf(os.environ)[0], "checked_against": points.checked_json(margin)}


def _print_basis(ladder) -> None:
    """What the estimate rests on (data, step-2 peak, time, allocator, checked points), under the table."""
    from kohyawan.estimate import plan as est

    shown = ladder.estimates[max(ladder.first_fit, 0)]
    for line in est.basis_lines(shown):
        console.out().print(line, highlight=False, markup=False)
