"""``kohyawan run`` and ``kohyawan runs list|show|resume|stop``: launch and babysit training (the run itself is
``kohyawan.run``; see docs/architecture.md, "A run")."""

from __future__ import annotations

import os
from pathlib import Path

import click

from kohyawan import console
from kohyawan.commands.common import CACHE_DIR_OPTION, cache_store, launch_spec, plan_options, resolve_spec
from kohyawan.errors import Interrupted, WorkFailed

_DIR = click.Path(path_type=Path, file_okay=False)


def _runs_dir(value: Path | None) -> Path:
    if value is not None:
        return value
    from kohyawan.config import profiles

    settings = profiles.project_settings(profiles.find_project_file())
    return Path(settings.get("runs_dir", "runs"))


def trainer_options(func):
    """Where runs go and which trainer runs on which GPUs (``run`` and ``calibrate``)."""
    options = [
        click.option("--runs-dir", type=_DIR, default=None, help="Where run folders go (default ./runs)."),
        click.option("--trainer-dir", type=_DIR, default=None, help="musubi-tuner checkout to train with."),
        click.option("--python", "python", default=None, help="The trainer environment's python (default python)."),
        click.option("--launcher", type=click.Choice(["accelerate", "python"]), default=None,
                     help="Launch through accelerate launch (default) or plain python."),
        click.option("--accelerate-arg", "accelerate_args", multiple=True, metavar="ARG",
                     help="Extra argument for accelerate launch (repeatable)."),
        click.option("--gpus", default=None, metavar="IDS",
                     help="CUDA_VISIBLE_DEVICES for the trainer: indices as nvidia-smi numbers them, or GPU-/MIG- "
                          "UUIDs (default: the CUDA_VISIBLE_DEVICES kohyawan was started with, else every GPU)."),
    ]
    return _decorate(func, options)


def _decorate(func, options):
    for option in reversed(options):
        func = option(func)
    return func


def rehearsal_options(func):
    options = [
        click.option("--rehearse", is_flag=True, default=None,
                     help="Use kohyawan's simulated trainer: the whole pipeline, no GPU, NO TRAINING."),
        click.option("--gpu-memory", type=click.FloatRange(1, 4096), default=None, metavar="GB",
                     help="Plan for at most this much GPU memory: a real run picks its start rung for it "
                          "(a GPU shared with ComfyUI, say); a rehearsal's virtual GPU (default 24)."),
    ]
    return _decorate(func, options)


def _launch_options(func):
    options = [
        click.option("--max-attempts", type=click.IntRange(1, 100), default=None,
                     help="Attempts per training run, ladder steps included (default: the profile's)."),
        click.option("--notify", multiple=True, metavar="URL",
                     help="Webhook for success, failure, ladder steps and alerts (Slack/Discord; repeatable)."),
        click.option("--recache", is_flag=True, help="Rebuild latent and text-encoder caches even if up to date."),
        CACHE_DIR_OPTION,
        click.option("--plain", is_flag=True, help="Plain progress lines instead of the live panel."),
        click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
                     help="Seconds between plain progress lines."),
        click.option("--json", "as_json", is_flag=True, help="Print run.json when the run ends."),
    ]
    return trainer_options(_decorate(func, options))


def _options(given: dict, *, runs_dir: Path | None, stored: dict | None = None, recache: bool = False,
             plain: bool = False, interval: float = 30.0):
    """RunOptions from the options given (None: not given), over what run.json stored (``runs resume``)."""
    from kohyawan.run.options import RunOptions

    given = dict(given)
    if given.get("trainer_dir") is not None:
        given["trainer_dir"] = given["trainer_dir"].resolve()
    for key in ("accelerate_args", "notify"):  # a repeatable option given no times was not given
        given[key] = tuple(given.get(key) or ()) or None
    return RunOptions.resolve(Path(os.path.abspath(_runs_dir(runs_dir))), given, stored, recache=recache,
                              live=False if plain else None, plain_interval_s=interval)


def _finish(data: dict, as_json: bool) -> None:
    if as_json:
        console.print_json(data)
    else:
        _summary(data)
    if data["status"] == "succeeded":
        return
    if data["status"] == "stopped":
        raise Interrupted(f"run {data['id']} stopped: {data.get('reason', '')}; continue with "
                          f"'kohyawan runs resume {data['id']}'")
    from kohyawan.run.runview import brief

    raise WorkFailed(f"run {data['id']} failed: {brief(data.get('reason')) or 'see run.json'}")


def _summary(data: dict) -> None:
    from kohyawan.run.report import show_lines

    console.out().print("\n".join(show_lines(None, data, with_checkpoints=False)), markup=False)


@click.command()
@plan_options(dataset_required=True)
@_launch_options
@click.option("--name", default=None, help="Run id (default PROFILE-YYYYmmdd-HHMMSS).")
@rehearsal_options
@click.option("--start-rung", type=click.Choice(["auto", "base"]), default="auto", show_default=True,
              help="auto: start at the first ladder rung that 'kohyawan estimate' says fits the GPU; "
                   "base: start at the profile's settings and climb only on an OOM.")
@click.option("--data-parallel", is_flag=True, default=None,
              help="Train this one run on every GPU in --gpus (accelerate --multi_gpu, DDP); steps per epoch "
                   "are divided as the trainer divides them.")
def run(runs_dir, trainer_dir, python, launcher, accelerate_args, gpus, max_attempts, notify, recache, cache_dir,
        plain, interval, as_json, name, rehearse, gpu_memory, start_rung, data_parallel, **plan_kwargs):
    """Train a LoRA and babysit it: caches, training, OOM fallback ladder, exact resume.

    Stages: preflight, latent caching, text-encoder caching (in the cache store that runs share: each item
    is cached once, and a stage whose caches are complete is skipped), training (each expert in turn for
    --expert sequential), verification. On a
    CUDA out-of-memory error the next rung of the profile's [ladder] is applied and training resumes from
    the last saved state, with steps, checkpoint numbers and the learning rate continuing exactly.

    \b
    Example:
      kohyawan run --profile character --dataset ./data/sarah --task t2v-1.3B \\
        --runs-dir ./runs --name sarah-try --rehearse --gpu-memory 12
    """
    from kohyawan.run import runsetup

    spec, request = launch_spec(plan_kwargs)
    given = {"name": name, "trainer_dir": trainer_dir, "python": python, "launcher": launcher,
             "accelerate_args": accelerate_args, "gpus": gpus, "max_attempts": max_attempts, "notify": notify,
             "rehearse": rehearse, "gpu_memory_gb": gpu_memory, "start_rung": start_rung,
             "data_parallel": data_parallel, "cache_dir": cache_store(cache_dir, runs_dir)}
    opts = _options(given, runs_dir=runs_dir, recache=recache, plain=plain, interval=interval)
    job = runsetup.new_run(spec, request, opts)
    if not as_json:
        console.err().print(f"run {job.ledger.data['id']} in {job.dir}", markup=False)
    _finish(job.drive(), as_json)


@click.group()
def runs():
    """List, inspect, resume and stop runs.

    \b
    Example:
      kohyawan runs list --runs-dir ./runs
    """


def _run_dir(runs_dir: Path | None, run_id: str) -> Path:
    from kohyawan.run.report import find_run

    return find_run(_runs_dir(runs_dir), run_id)


@runs.command("list")
@click.option("--runs-dir", type=_DIR, default=None, help="Where run folders are (default ./runs).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def list_runs(runs_dir, as_json):
    """List runs with their state (running, succeeded, failed, stopped, dead, orphaned).

    "dead": the supervisor is gone (resume it); "orphaned": its trainer still runs without a supervisor
    (runs stop or runs resume deal with it).

    \b
    Example:
      kohyawan runs list --json
    """
    from kohyawan.run import report

    root = _runs_dir(runs_dir)
    rows = report.list_runs(root)
    if as_json:
        console.print_json(rows)
        return
    c = console.out()
    if not rows:
        c.print(f"no runs in {root}")
    for r in rows:
        c.print(report.list_line(r), markup=False)


@runs.command()
@click.argument("run_id")
@click.option("--runs-dir", type=_DIR, default=None, help="Where run folders are (default ./runs).")
@click.option("--json", "as_json", is_flag=True, help="Print run.json.")
def show(run_id, runs_dir, as_json):
    """Show a run: attempts, rungs, outcomes, checkpoints.

    \b
    Example:
      kohyawan runs show sarah-try
    """
    from kohyawan.run import report

    run_dir = _run_dir(runs_dir, run_id)
    data = report.read_run(run_dir)
    data["state"] = report.live_state(run_dir, data)
    if as_json:
        console.print_json(data)
        return
    console.out().print("\n".join(report.show_lines(run_dir, data)), markup=False)


@runs.command()
@click.argument("run_id")
@click.option("--runs-dir", type=_DIR, default=None, help="Where run folders are (default ./runs).")
@click.option("--trainer-dir", type=_DIR, default=None, help="Override the stored trainer checkout.")
@click.option("--python", "python", default=None, help="Override the stored trainer python.")
@click.option("--plain", is_flag=True, help="Plain progress lines instead of the live panel.")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds between plain lines.")
@click.option("--json", "as_json", is_flag=True, help="Print run.json when the run ends.")
def resume(run_id, runs_dir, trainer_dir, python, plain, interval, as_json):
    """Continue a run whose supervisor died or that was stopped, from its last saved state.

    An orphaned trainer (still running without kohyawan) is stopped first; a run that another kohyawan
    is supervising is refused.

    \b
    Example:
      kohyawan runs resume sarah-try
    """
    from kohyawan.run import report, runlock, runsetup
    from kohyawan.run.supervise import kill_group

    run_dir = _run_dir(runs_dir, run_id)
    data = report.ensure_resumable(run_dir)
    pgid = runlock.orphan(run_dir)
    if pgid:
        console.warn(f"stopping the orphaned trainer of {run_id} (process group {pgid})")
        kill_group(pgid)
        runlock.clear_pid(run_dir)
    req = data["request"]
    spec = resolve_spec(req["profile"], Path(req["dataset"]) if req.get("dataset") else None, req.get("task"),
                        req.get("expert"), req.get("variant"),
                        *(Path(req[k]) if req.get(k) else None for k in ("dit", "dit_high_noise", "vae", "t5")),
                        tuple(req.get("sets") or ()))
    opts = _options({"trainer_dir": trainer_dir, "python": python}, runs_dir=run_dir.parent,
                    stored=data.get("options", {}), plain=plain, interval=interval)
    if not opts.rehearse:
        from kohyawan.run import preflight

        preflight.trainer(opts.trainer_dir, opts.python, opts.launcher)
    job = runsetup.load_run(run_dir, spec, opts)
    _finish(job.drive(), as_json)


@runs.command()
@click.argument("run_id")
@click.option("--runs-dir", type=_DIR, default=None, help="Where run folders are (default ./runs).")
def stop(run_id, runs_dir):
    """Stop a run cleanly: its supervisor sends SIGINT to the trainer, waits, then escalates.

    The run ends as "stopped" with its last saved state usable (runs resume continues it).

    \b
    Example:
      kohyawan runs stop sarah-try
    """
    from kohyawan.run import report

    console.err().print(report.stop(_run_dir(runs_dir, run_id)), markup=False)
