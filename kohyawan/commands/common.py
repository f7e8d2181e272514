"""Options shared by every command that builds a plan (config render/show, run, estimate, sweep).

What a user rehearses, estimates and runs is then the same plan: the same flags resolve the same RunSpec.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from kohyawan.config.spec import EXPERT_MODES, TASKS, Models

_PATH = click.Path(path_type=Path, dir_okay=False)

CACHE_DIR_OPTION = click.option(
    "--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
    help="The cache store runs share (default: the project file's cache_dir, else RUNS_DIR/.cache).")


def cache_store(cache_dir: Path | None, runs_dir: Path | None = None) -> Path:
    """The cache store, absolute: --cache-dir, else the project file's cache_dir, else RUNS_DIR/.cache with
    RUNS_DIR from --runs-dir or the project file (default ./runs)."""
    import os

    if cache_dir is None:
        from kohyawan.cachestore.keys import STORE_IN_RUNS_DIR
        from kohyawan.config import profiles

        settings = profiles.project_settings(profiles.find_project_file())
        if settings.get("cache_dir"):
            cache_dir = Path(settings["cache_dir"])
        else:
            cache_dir = Path(runs_dir or settings.get("runs_dir", "runs")) / STORE_IN_RUNS_DIR
    return Path(os.path.abspath(Path(cache_dir).expanduser()))


def plan_options(*, dataset_required: bool = False):
    """Decorator adding --profile, --dataset, --task, --expert, --variant, model files and --set."""

    def decorate(func):
        options = [
            click.option("--profile", "-p", default=None, metavar="NAME",
                         help="Use-case profile: character, style, motion, domain or your own "
                              "(default: the project file's, else character)."),
            click.option("--dataset", "-d", "dataset", type=click.Path(path_type=Path, file_okay=False),
                         required=dataset_required, help="Training dataset folder (trainer layout)."),
            click.option("--task", type=click.Choice(TASKS), default=None,
                         help="musubi-tuner task (default t2v-A14B)."),
            click.option("--expert", type=click.Choice(EXPERT_MODES), default=None,
                         help="WAN 2.2 experts: both in one run, high or low only, or sequential "
                              "(high then low as two chained runs). Default both."),
            click.option("--variant", default=None, metavar="NAME",
                         help="A/B variant: conservative, standard, aggressive."),
            click.option("--dit", type=_PATH, default=None, help="DiT file (the low-noise expert for WAN 2.2)."),
            click.option("--dit-high-noise", "dit_high_noise", type=_PATH, default=None,
                         help="High-noise expert DiT file (WAN 2.2)."),
            click.option("--vae", type=_PATH, default=None, help="Wan 2.1 VAE file."),
            click.option("--t5", type=_PATH, default=None, help="umT5-XXL text encoder file."),
            click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                         help="Override any trainer option or dataset key, TOML syntax for the value "
                              "(repeatable): --set blocks_to_swap=20 --set 'resolution=[512,512]'."),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def resolve_spec(profile, dataset, task, expert, variant, dit, dit_high_noise, vae, t5, sets):
    """Resolve the RunSpec from plan options, with the project file's [kohyawan] defaults, and validate it
    with the rules ``config render`` applies (model files aside: the commands that need them check them
    when they build the plan). Every command that takes plan options refuses the same plans; the rules'
    warnings join the spec's notes."""
    from dataclasses import replace

    from kohyawan.config import validate

    spec = _resolve(profile, dataset, task, expert, variant, dit, dit_high_noise, vae, t5, sets)
    warnings = [w for w in validate.check(spec, need_models=False) if w not in spec.notes]
    return replace(spec, notes=(*spec.notes, *warnings))


def _resolve(profile, dataset, task, expert, variant, dit, dit_high_noise, vae, t5, sets):
    from kohyawan.config import profiles

    project_file = profiles.find_project_file()
    defaults = profiles.project_settings(project_file)
    return profiles.resolve(
        profile or defaults.get("profile", "character"),
        variant=variant or defaults.get("variant"),
        task=task or defaults.get("task", "t2v-A14B"),
        expert=expert or defaults.get("expert", "both"),
        dataset_dir=dataset,
        models=Models(dit=dit, dit_high_noise=dit_high_noise, vae=vae, t5=t5),
        sets=sets,
        project_file=project_file,
    )


PLAN_NAMES = ("profile", "dataset", "task", "expert", "variant", "dit", "dit_high_noise", "vae", "t5", "sets")


def spec_from_kwargs(kwargs: dict):
    """Pop the plan options out of a command's kwargs and resolve them."""
    return resolve_spec(*(kwargs.pop(n) for n in PLAN_NAMES))


def launch_spec(plan_kwargs: dict):
    """(spec, request) for a command that launches the trainer: every path made absolute first (the trainer
    runs inside its own checkout), and the options as given, for run.json's ``request``."""
    plan_kwargs = {k: (Path(os.path.abspath(v)) if isinstance(v, Path) else v) for k, v in plan_kwargs.items()}
    request = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
               for k, v in plan_kwargs.items()}
    return resolve_spec(*(plan_kwargs[k] for k in PLAN_NAMES)), request
