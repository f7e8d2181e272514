"""``kohyawan sweep`` and ``kohyawan batch [run] MANIFEST`` / ``kohyawan batch status DIR``."""

from __future__ import annotations

from pathlib import Path

import click

from kohyawan import console
from kohyawan.commands.common import plan_options
from kohyawan.errors import BadInput, Interrupted, WorkFailed

_DIR = click.Path(path_type=Path, file_okay=False)


def _say(message: str) -> None:
    console.err().print(message, markup=False, highlight=False)


# ------------------------------------------------------------------------------------------------ sweep
@click.command()
@plan_options(dataset_required=True)
@click.option("--variants", required=True, metavar="A,B,...",
              help="Variants to compare, comma-separated (e.g. conservative,standard,aggressive).")
@click.option("--gpus", default=None, metavar="IDS",
              help="GPUs to spread the variants over, one per run (e.g. 0,1,2); in rehearsal, virtual GPUs.")
@click.option("--runs-dir", type=_DIR, default=None, help="Where run folders and the sweep folder go (default ./runs).")
@click.option("--name", default=None, help="Sweep name (default sweep-PROFILE-YYYYmmdd-HHMMSS); rerun with it to continue.")
@click.option("--seed", type=int, default=None, help="Seed for every variant (default: the profile's, else 42).")
@click.option("--rehearse", is_flag=True, help="Simulated trainer: the whole pipeline, no GPU, NO TRAINING.")
@click.option("--gpu-memory", type=click.FloatRange(1, 4096), default=None, metavar="GB",
              help="Rehearsal: each virtual GPU's memory (default 24).")
@click.option("--trainer-dir", type=_DIR, default=None, help="musubi-tuner checkout to train with.")
@click.option("--python", "python", default=None, help="The trainer environment's python.")
@click.option("--grid-prompts", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Test prompts (one per line): write a ComfyUI grid comparing the variants side by side.")
@click.option("--grid-strength", type=float, default=1.0, show_default=True, help="LoRA strength in the grid.")
@click.option("--comfyui", type=_DIR, default=None, help="ComfyUI folder: copy the variants' LoRAs into models/loras.")
@click.option("--server", default=None, help="ComfyUI URL: run the grid there and make a contact sheet.")
@click.option("--cache-dir", type=_DIR, default=None,
              help="The cache store the variants share (default: the project file's cache_dir, else RUNS_DIR/.cache).")
@click.option("--json", "as_json", is_flag=True, help="Print sweep.json.")
def sweep(variants, gpus, runs_dir, name, seed, rehearse, gpu_memory, trainer_dir, python, grid_prompts,
          grid_strength, comfyui, server, cache_dir, as_json, **plan):
    """Train one run per variant with the same data and seed, then compare them.

    With several GPUs the variants train in parallel, one per GPU (CUDA_VISIBLE_DEVICES per run); otherwise
    one after another. Every variant uses the same cache folders (variants change training settings only),
    so the dataset is cached once. The table compares final and best loss, time, peak VRAM, attempts (ladder steps)
    and candidate checkpoints (60-80 % of training); RUNS_DIR/NAME/sweep.json has it all. Running the same
    command with the same --name again continues an interrupted sweep. With --grid-prompts, a ComfyUI test
    grid (one column per variant, base model first, same seed per row) is written to RUNS_DIR/NAME/grid;
    --comfyui copies the LoRAs where ComfyUI finds them and --server runs the grid.

    \b
    Example:
      kohyawan sweep --profile character --dataset ./data/sarah --task t2v-1.3B \\
        --variants conservative,standard,aggressive --gpus 0,1,2 --rehearse
    """
    from kohyawan.config import profiles
    from kohyawan.batch import sweep as sweep_mod

    if plan.get("variant"):
        raise BadInput("sweep compares --variants A,B,...; --variant is for single runs")
    if gpu_memory and not rehearse:
        raise BadInput("--gpu-memory is for --rehearse (the virtual GPU's size)")
    settings = profiles.project_settings(profiles.find_project_file())
    models = tuple((role, str(Path(plan[role]).absolute())) for role in ("dit", "dit_high_noise", "vae", "t5")
                   if plan.get(role))
    req = sweep_mod.SweepRequest(
        profile=plan["profile"] or settings.get("profile", "character"), dataset=plan["dataset"],
        variants=sweep_mod.parse_variants(variants), runs_dir=runs_dir or Path(settings.get("runs_dir", "runs")),
        name=name, task=plan["task"] or settings.get("task", "t2v-A14B"),
        expert=plan["expert"] or settings.get("expert", "both"), models=models, sets=tuple(plan["sets"]),
        seed=seed, gpus=gpus, rehearse=rehearse, gpu_memory=gpu_memory,
        trainer=trainer_dir.resolve() if trainer_dir else None, python=python, grid_prompts=grid_prompts,
        grid_strength=grid_strength, comfyui=comfyui, server=server, cache_dir=cache_dir)
    try:
        doc = sweep_mod.run(req, say=_say)
    except KeyboardInterrupt:
        raise Interrupted("sweep interrupted; run the same command with --name to continue") from None
    if as_json:
        console.print_json(doc)
    else:
        sweep_mod.print_table(doc)
    failed = [r["variant"] for r in doc["variants"] if r["state"] != "succeeded"]
    if failed:
        raise WorkFailed(f"{len(failed)} variant(s) did not finish: {', '.join(failed)}")


# ------------------------------------------------------------------------------------------------ batch
class _BatchGroup(click.Group):
    """``kohyawan batch MANIFEST.toml ...`` means ``kohyawan batch run MANIFEST.toml ...``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_BatchGroup)
def batch():
    """Train many LoRAs from a manifest: a persistent queue over GPUs or a SLURM cluster.

    `kohyawan batch MANIFEST.toml` is short for `kohyawan batch run MANIFEST.toml`.

    \b
    Example:
      kohyawan batch clients.toml --gpus 0,1 --dry-run
      kohyawan batch clients.toml --gpus 0,1
      kohyawan batch status clients.batch
    """


@batch.command("run")
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--dir", "folder", type=_DIR, default=None,
              help="Batch folder: queue, logs, batch.json (default: MANIFEST's name + .batch beside it).")
@click.option("--gpus", default=None, metavar="IDS",
              help="GPUs to spread jobs over, one job per GPU (e.g. 0,1,2,3); in rehearsal, virtual GPUs.")
@click.option("--slurm", is_flag=True, help="Submit the jobs as a SLURM job array ([slurm] table) and follow it.")
@click.option("--dry-run", is_flag=True, help="Validate and show what would run; start nothing.")
@click.option("--retry-failed", is_flag=True, help="Run failed jobs again (only those; finished ones stay done).")
@click.option("--json", "as_json", is_flag=True, help="Print batch.json (or the plan, with --dry-run).")
def run_cmd(manifest, folder, gpus, slurm, dry_run, retry_failed, as_json):
    """Run (or continue) the batch in MANIFEST.

    The manifest has [defaults] (profile, task, trainer, registry, notify, rehearse = true for a rehearsal
    batch, ...), an optional [slurm] table, and one [[jobs]] entry per LoRA (client, name, kind, dataset,
    overrides, export). It is validated completely before anything starts. The queue lives in the batch
    folder: interrupting and running again continues where it stopped, finished jobs are not redone, a failed
    job never stops the others. Each finished job is exported into the registry as a new version with notes
    saying what changed.

    \b
    Example:
      kohyawan batch run clients.toml --gpus 0,1 --json
      kohyawan batch clients.toml --slurm
      kohyawan batch clients.toml --retry-failed
    """
    from kohyawan.batch import driver, report

    opts = driver.BatchOptions(manifest=manifest, folder=folder, gpus=gpus, slurm=slurm, dry_run=dry_run,
                               retry_failed=retry_failed)
    if dry_run:
        doc = driver.plan(opts)
        if as_json:
            console.print_json(doc)
        else:
            _print_plan(doc)
        return
    try:
        doc = driver.run(opts, say=_say)
    except KeyboardInterrupt:
        raise Interrupted("batch interrupted; run the same command again to continue"
                          + (" (the SLURM tasks keep running; it follows them again)" if slurm else "")) from None
    if as_json:
        console.print_json(doc)
    else:
        report.print_table(doc)
    if driver.interrupted(doc):
        left = doc["counts"]["pending"] + doc["counts"]["running"]
        raise Interrupted(f"batch stopped with {left} job(s) left; run the same command again to continue")
    if doc["counts"]["failed"]:
        raise WorkFailed(f"{doc['counts']['failed']} job(s) failed (see batch.json); "
                         f"'kohyawan batch {manifest} --retry-failed' retries only those")


def _print_plan(doc: dict) -> None:
    import shlex

    c = console.out()
    c.print(f"batch {doc['dir']}" + (" (REHEARSAL)" if doc["rehearsal"] else "") + (" via SLURM" if doc["slurm"] else
            f" on GPU slot(s) {', '.join(doc['slots'] or ['(inherited)'])}"), markup=False)
    for j in doc["jobs"]:
        c.print(f"  {j['key']:<30} {j['action']:<12} {j['profile']}" + (f"/{j['variant']}" if j['variant'] else "")
                + f" {j['task']} {j['dataset']}" + ("" if j["export"] else "  (no export)"), markup=False)
        if j["argv"] and not doc["slurm_script"]:
            c.print("      " + " ".join(shlex.quote(a) for a in j["argv"]), markup=False)
    if doc["slurm_script"]:
        c.print("SLURM job array that would be submitted:", markup=False)
        c.print(doc["slurm_script"], markup=False, end="")


@batch.command("status")
@click.argument("folder", type=_DIR)
@click.option("--json", "as_json", is_flag=True, help="Print the batch.json document.")
def status_cmd(folder, as_json):
    """Show a batch folder's jobs: state, run, losses, export, at any time (also while it runs).

    \b
    Example:
      kohyawan batch status clients.batch --json
    """
    from kohyawan.batch import driver, report

    doc = driver.status(folder)
    if as_json:
        console.print_json(doc)
    else:
        report.print_table(doc, title=f"batch {folder}" + (f" (driver pid {doc['driver_pid']})" if doc["driver_pid"] else ""))
