"""``kohyawan config render|show``: the trainer's files for a profile, and where every value comes from."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from kohyawan import console
from kohyawan.commands.common import CACHE_DIR_OPTION, cache_store, plan_options, spec_from_kwargs


@click.group()
def config():
    """Render musubi-tuner configs from a profile, or show the resolved values.

    \b
    Example:
      kohyawan config show --profile character --origin
    """


@config.command()
@plan_options(dataset_required=True)
@click.option("--out", "-o", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Folder to write dataset.toml, train*.toml, commands.sh and plan.json into.")
@click.option("--trainer-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="musubi-tuner checkout; commands.sh then runs there (else $MUSUBI_TUNER_DIR).")
@click.option("--python", "python", default="python", show_default=True,
              help="Python of the trainer's environment, as written in the commands.")
@CACHE_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print plan.json instead of a summary.")
def render(out, trainer_dir, python, cache_dir, as_json, **kwargs):
    """Write the exact files and commands musubi-tuner needs for this plan.

    Nothing is written unless every value, model file and combination is valid. Each dataset's
    cache_directory is its folder in the cache store that kohyawan runs use, so a run of commands.sh
    fills (or reuses) the same caches a 'kohyawan run' would.

    \b
    Example:
      kohyawan config render --profile character --dataset ./data/sarah \\
        --dit wan2.2_t2v_low_noise_14B_fp16.safetensors \\
        --dit-high-noise wan2.2_t2v_high_noise_14B_fp16.safetensors \\
        --vae wan_2.1_vae.safetensors --t5 models_t5_umt5-xxl-enc-bf16.pth \\
        --out ./cfg/sarah
    """
    from kohyawan.config import render as render_mod

    spec = spec_from_kwargs(kwargs)
    plan = render_mod.build_plan(spec, out, trainer_dir=trainer_dir.resolve() if trainer_dir else None,
                                 python=python, cache_store=cache_store(cache_dir))
    render_mod.write_plan(plan)
    from kohyawan.cachestore import store
    from kohyawan.cachestore.keys import CacheFolder

    for cache in plan.document["caches"]:
        store.describe(CacheFolder.from_document(cache))
    for warning in plan.warnings:
        console.warn(warning)
    if as_json:
        console.print_json(plan.document)
        return
    c = console.out()
    steps = plan.steps
    c.print(f"Wrote {len(plan.files)} files to {plan.out_dir}:", markup=False)
    for name in plan.files:
        c.print(f"  {name}", markup=False)
    approx = "" if steps.exact else " (approximate: clip lengths unknown)"
    c.print(f"{steps.items} items at {_size(spec.dataset.get('resolution'))}, {steps.steps_per_epoch} steps per "
            f"epoch, {steps.epochs} epochs: "
            f"{steps.total_steps} steps per training run{approx}, warm-up {steps.warmup_steps}.")
    for cache in plan.document["caches"]:
        c.print(f"Cache: {cache['cache_directory']}", markup=False)
    c.print(f"Next: bash {shlex.quote(str(plan.out_dir / 'commands.sh'))}", markup=False)


@config.command()
@plan_options()
@click.option("--origin", is_flag=True, help="Show where each value comes from.")
@click.option("--json", "as_json", is_flag=True, help="Print the values as JSON.")
def show(origin, as_json, **kwargs):
    """Show every resolved value of a profile (with --origin: where it comes from).

    Layers, lowest first: base < profile < variant < dataset-size rules < model files < what `dataset
    prepare` recorded (the resolution; source "dataset-report") < kohyawan.toml < --set.

    \b
    Example:
      kohyawan config show --profile style --variant aggressive --origin
    """
    spec = spec_from_kwargs(kwargs)
    rows = []
    for section, mapping in (("train", spec.train), ("dataset", spec.dataset)):
        rows += [(f"{section}.{k}", mapping[k]) for k in sorted(mapping)]
    for section in sorted(spec.extra):
        rows += [(f"{section}.{k}", spec.extra[section][k]) for k in sorted(spec.extra[section])]
    if as_json:
        console.print_json({"version": 1, "profile": spec.profile, "variant": spec.variant, "task": spec.task,
                            "expert": spec.expert, "values": [
                                {"key": k, "value": v, "source": spec.origin.get(k, "unknown")} for k, v in rows],
                            "notes": list(spec.notes)})
        return
    # Plain aligned columns (not a rich table): nothing is truncated or wrapped, and lines can be
    # copied straight into a kohyawan.toml or a --set.
    title = f"{spec.profile}" + (f" + {spec.variant}" if spec.variant else "") + f" ({spec.task})"
    cells = [(key, _show(value), spec.origin.get(key, "unknown")) for key, value in rows]
    width = [max(len(c[0]) for c in cells), min(24, max(len(c[1]) for c in cells))]
    lines = [title]
    for key, value, source in cells:
        lines.append(f"{key:<{width[0]}}  {value:<{width[1]}}  {source}".rstrip() if origin
                     else f"{key:<{width[0]}}  {value}")
    click.echo("\n".join(lines))
    for note in spec.notes:
        console.warn(note)


def _size(resolution) -> str:
    """A dataset resolution (an int or [W, H]) as WxH."""
    w, h = resolution if isinstance(resolution, (list, tuple)) else (resolution, resolution)
    return f"{w}x{h}"


def _show(value) -> str:
    from kohyawan.config.tomlfmt import toml_value

    return toml_value(value)
