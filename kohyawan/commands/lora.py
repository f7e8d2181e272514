"""``kohyawan lora inspect|verify|convert|resize|merge`` and ``kohyawan checkpoints``.

Nothing here imports torch at module level: inspect and verify read headers only, and the tensor tools
import torch inside the library functions they call.
"""

from __future__ import annotations

from pathlib import Path

import click

from kohyawan.console import print_json
from kohyawan.errors import BadInput

from kohyawan.lora.keys import TASKS as TASK_CHOICES  # pure data, no torch
_DTYPES = click.Choice(["bf16", "fp16", "fp32"])


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


def _fresh_output(path: Path, force: bool) -> Path:
    if path.exists() and not force:
        raise BadInput(f"{path} exists; choose another --out or pass --force")
    if not path.parent.is_dir():
        raise BadInput(f"{path.parent}: no such folder")
    return path


def _default_out(src: Path, tag: str) -> Path:
    stem = src.name[: -len(".safetensors")] if src.name.endswith(".safetensors") else src.stem
    return src.with_name(f"{stem}-{tag}.safetensors")


@click.group()
def lora():
    """Inspect, verify, convert, resize and merge WAN LoRA files.

    \b
    Example:
      kohyawan lora inspect out/sarah-step00000600.safetensors
      kohyawan lora verify sarah.safetensors --task t2v-A14B
    """


@lora.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def inspect(file: Path, as_json: bool):
    """What a LoRA file is: model, rank, alpha, dtype, tasks it loads on, metadata (header only).

    The task and expert come from kohyawan's metadata or the training comment kohyawan gives the trainer;
    for a file in a kohyawan run folder, the run's absolute step and epoch (those 'kohyawan checkpoints'
    lists) are shown too.

    \b
    Example:
      kohyawan lora inspect sarah.safetensors --json
    """
    from kohyawan.lora.inspect import read_info
    from kohyawan.run.checkpoints import run_record

    info = read_info(file)
    run = run_record(file)  # in a run folder: its ledger's absolute step and epoch, as `checkpoints` lists them
    if as_json:
        print_json({**info.to_dict(), "run": run})
        return
    rank = str(info.rank) if info.rank is not None else "mixed " + ",".join(map(str, info.ranks))
    alpha = f"{info.alpha:g}" if info.alpha is not None else (",".join(f"{a:g}" for a in info.alphas) or "none (scale 1)")
    size = ("unknown" if info.size_ok is None else
            "as expected" if info.size_ok else f"unexpected: a full LoRA of this rank is {_mb(info.expected_bytes)}")
    lines = [
        f"file      {info.path} ({_mb(info.bytes)})",
        f"model     {info.model or 'unknown'}{' with Wan 2.1 image cross-attention' if info.image_attn else ''}",
        f"naming    {info.naming}, {info.modules} modules in {info.blocks} blocks, {info.keys} keys",
        f"rank      {rank}   alpha {alpha}   dtype {info.dtype}",
        f"size      {size}",
        f"loads on  {', '.join(info.compatible_tasks) or 'no known task (run lora verify --task T for details)'}",
        f"trained   task {info.task or 'not recorded'}, expert {info.expert or 'not recorded'}",
        *_run_line(run, info.metadata),
        f"metadata  {len(info.metadata)} keys",
    ]
    for key in sorted(info.metadata):
        if key.startswith(("kohyawan.", "modelspec.title")) or key in ("ss_network_dim", "ss_network_alpha", "ss_steps", "ss_epoch"):
            value = info.metadata[key]
            lines.append(f"  {key} = {value if len(value) <= 100 else value[:97] + '...'}")
    click.echo("\n".join(lines))


def _run_line(run: dict | None, metadata: dict) -> list[str]:
    """Where the file sits in a run: its absolute step and epoch (and why the file's own may differ)."""
    if not run:
        return []
    own = (metadata.get("ss_steps"), metadata.get("ss_epoch")) == (str(run["step"]), str(run["epoch"]))
    return [f"run       {run['id']} ({run['dir']}): step {run['step']}, epoch {run['epoch']}, attempt {run['attempt']}"
            + ("" if own else " (absolute, as 'kohyawan checkpoints' lists it; the file's own ss_steps/ss_epoch "
                              "count from its attempt's start)")]


@lora.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--task", required=True, type=click.Choice(TASK_CHOICES), help="The model the LoRA will be used on.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def verify(ctx, file: Path, task: str, as_json: bool):
    """Would ComfyUI load every key of FILE onto the model of --task? Exit 1 and list the keys it would drop.

    \b
    Example:
      kohyawan lora verify sarah_i2v.safetensors --task i2v-A14B
    """
    from kohyawan.lora.verify import verify_file

    report = verify_file(file, task)
    if as_json:
        print_json(report.to_dict())
    else:
        status = "ok" if report.ok else "NOT OK"
        click.echo(f"{status}: {report.loaded} keys ({report.modules} modules) load onto {task}; "
                   f"{len(report.ignored)} would be ignored")
        for line in report.problems:
            click.echo(f"  problem: {line}")
        for key in report.ignored:
            click.echo(f"  ignored: {key} ({report.reasons[key]})")
    if not report.ok:
        ctx.exit(1)


@lora.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--to", "to", required=True, type=click.Choice(["musubi", "comfy"]),
              help="musubi: lora_unet_* with alpha; comfy: diffusion_model.*.lora_A/B with alpha folded in.")
@click.option("--dtype", type=_DTYPES, default=None, help="Output dtype (default: the input's).")
@click.option("--keep-alpha", is_flag=True, help="With --to comfy: keep alpha keys instead of folding them in.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output file (default: FILE-<to>.safetensors).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def convert(file: Path, to: str, dtype, keep_alpha: bool, out, force: bool, as_json: bool):
    """Rename a LoRA's keys for musubi-tuner or ComfyUI and change its dtype; the update stays the same.

    \b
    Example:
      kohyawan lora convert sarah.safetensors --to comfy --dtype bf16 --out sarah-comfy.safetensors
    """
    from kohyawan.lora.convert import convert_file

    out = _fresh_output(out or _default_out(file, to + (f"-{dtype}" if dtype else "")), force)
    result = convert_file(file, out, to=to, dtype=dtype, keep_alpha=keep_alpha)
    if as_json:
        print_json(result.to_dict())
    else:
        click.echo(f"wrote {result.path}: {result.modules} modules, {result.keys} keys, {result.dtype}, "
                   f"{'alpha folded into the matrices' if result.alpha_folded else 'alpha kept'}")


@lora.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--rank", required=True, type=int, help="New rank (lower than the file's).")
@click.option("--dtype", type=_DTYPES, default=None, help="Output dtype (default: the input's).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output file (default: FILE-r<R>.safetensors).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--device", default="auto", show_default=True,
              help="Where the SVDs run: auto (the GPU when torch sees one), cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print the result, with every module's energy, as JSON.")
def resize(file: Path, rank: int, dtype, out, force: bool, device: str, as_json: bool):
    """Lower a LoRA's rank by SVD and report how much of each module's update is kept.

    \b
    Example:
      kohyawan lora resize sarah.safetensors --rank 16 --out sarah-r16.safetensors
      kohyawan lora resize sarah.safetensors --rank 16 --device cuda
    """
    from kohyawan.lora.resize import resize_file

    out = _fresh_output(out or _default_out(file, f"r{rank}"), force)
    result = resize_file(file, out, rank=rank, dtype=dtype, device=device)
    if as_json:
        print_json(result.to_dict())
        return
    click.echo(f"wrote {result.path}: rank {result.rank} -> {result.new_rank}, {result.dtype} (SVD on {result.device})")
    click.echo(f"retained energy {result.retained:.2%} overall, lowest module {result.min_retained:.2%}")
    for m in sorted(result.modules, key=lambda m: m.retained)[:5]:
        click.echo(f"  {m.module}: {m.retained:.2%}")


@lora.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Merged LoRA file.")
@click.option("--dtype", type=_DTYPES, default=None, help="Output dtype (default: the first input's).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def merge(inputs, out: Path, dtype, force: bool, as_json: bool):
    """Merge LoRAs given as FILE:WEIGHT into one whose update is exactly the weighted sum.

    The merged rank is the sum of the ranks; use 'lora resize' afterwards to shrink it.

    \b
    Example:
      kohyawan lora merge sarah.safetensors:0.9 style.safetensors:0.8 --out sarah+style.safetensors
    """
    from kohyawan.lora.merge import merge_files, parse_weighted

    out = _fresh_output(out, force)
    result = merge_files([parse_weighted(t) for t in inputs], out, dtype=dtype)
    if as_json:
        print_json(result.to_dict())
    else:
        parts = " + ".join(f"{Path(i['file']).name} x {i['weight']:g}" for i in result.inputs)
        click.echo(f"wrote {result.path}: {parts}; rank {result.rank}, {result.modules} modules, {result.dtype}")


@click.command()
@click.argument("run_or_dir", type=click.Path(path_type=Path))
@click.option("--no-effect", is_flag=True, help="Skip measuring each checkpoint's update (faster, header only).")
@click.option("--json", "as_json", is_flag=True, help="Print the checkpoints as JSON.")
def checkpoints(run_or_dir: Path, no_effect: bool, as_json: bool):
    """List a run's LoRA checkpoints: step, size, rank, effect, flags, and the 60-80 % candidates.

    RUN_OR_DIR is a kohyawan run folder or any musubi-tuner output folder.

    \b
    Example:
      kohyawan checkpoints runs/sarah-20260301-1200
      kohyawan checkpoints ./output --json
    """
    from kohyawan.run.checkpoints import list_checkpoints

    items = list_checkpoints(run_or_dir, effect=not no_effect)
    if as_json:
        print_json([c.to_dict() for c in items])
        return
    w = max([len("file")] + [len(Path(c.path).name) for c in items])
    header = f"{'':2}{'file':<{w}} {'step':>6} {'ep':>3} {'att':>3} {'expert':<6} {'size':>9} {'dtype':<5} {'rank':>4} {'effect':>8} {'loss':>8} trend"
    click.echo(header)
    for c in items:
        mark = "* " if c.candidate else "  "
        eff = f"{c.effect['max_rms']:.1e}" if c.effect else "-"
        loss = f"{c.loss:.4f}" if c.loss is not None else "-"
        click.echo(f"{mark}{Path(c.path).name:<{w}} {_dash(c.step):>6} {_dash(c.epoch):>3} {_dash(c.attempt):>3} "
                   f"{c.expert or '-':<6} {_mb(c.bytes):>9} {c.dtype or '-':<5} {_dash(c.rank):>4} {eff:>8} {loss:>8} "
                   f"{c.loss_trend or '-'}")
        for flag in c.flags:
            click.echo(f"    ! {flag}")
    if any(c.candidate for c in items):
        click.echo("* = between 60 % and 80 % of training: test these first")


def _dash(value) -> str:
    return "-" if value is None else str(value)
