"""``kohyawan models inspect``: what each model file is, from its header alone."""

from __future__ import annotations

import click

JSON_VERSION = 1


@click.group()
def models():
    """Inspect WAN model files (DiT, VAE, T5) before training with them.

    \b
    Example:
      kohyawan models inspect wan2.2_t2v_high_noise_14B_fp16.safetensors wan_2.1_vae.safetensors
    """


@models.command("inspect")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of a table.")
@click.pass_context
def inspect_cmd(ctx, files, as_json):
    """Say what each FILE is: kind, WAN family, size, T2V/I2V, dtype, parameters, expert.

    Only the safetensors header is read (a .pth file's pickled index is parsed, never unpickled), so a
    28 GB DiT takes milliseconds. Every file is reported; a file that cannot be read gets one
    'error:' line on stderr and the exit status is 2.

    \b
    Example:
      kohyawan models inspect models/*.safetensors
      kohyawan models inspect --json wan2.2_i2v_low_noise_14B_fp16.safetensors
    """
    from kohyawan.console import err, print_json
    from kohyawan.errors import ModelFileError
    from kohyawan.modelfiles.identify import identify

    infos, rows, failed = [], [], 0
    for f in files:
        try:
            info = identify(f)
        except ModelFileError as exc:
            failed += 1
            err().print(f"error: {exc}", markup=False, highlight=False)
            rows.append({"path": f, "ok": False, "error": str(exc)})
            continue
        infos.append(info)
        rows.append({"ok": True, **info.to_dict()})
    if as_json:
        print_json({"version": JSON_VERSION, "files": rows})
    elif infos:
        _table(infos)
    if failed:
        ctx.exit(2)


def _model_column(i) -> str:
    from kohyawan.wan import FAMILY_NAMES, VARIANT_NAMES

    fam = FAMILY_NAMES.get(i.family or "", "Wan ?")
    if i.kind == "dit":
        var = VARIANT_NAMES.get(i.variant or "", i.variant or "?")
        size = "A14B" if (i.family == "wan2.2" and i.size == "14B") else (i.size or "?")
        return f"{fam} {var} {size}"
    if i.kind == "vae":
        return f"Wan {i.vae_version or '?'}"
    if i.kind == "t5":
        return "umT5-XXL, " + ("Wan format" if i.t5_format == "wan" else "HF format")
    if i.kind == "lora":
        return f"rank {i.arch.get('rank')}, {i.size or '?'}"
    return "-"


def _params(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


TABLE_MIN_WIDTH = 110


def _table(infos) -> None:
    from rich import box
    from rich.text import Text

    from kohyawan.console import Col, out, print_table
    from kohyawan.modelfiles.header import shown

    console = out()
    if console.width < TABLE_MIN_WIDTH:
        # seven columns do not fit a narrow terminal (or a pipe, which rich treats as 80 wide):
        # one block per file keeps every fact readable
        for i in infos:
            console.print(Text(shown(i.path)), soft_wrap=True)
            console.print(Text(f"  {i.description}"), soft_wrap=True)
            for note in i.notes:
                console.print(Text(f"  note: {note}"), soft_wrap=True)
        return
    rows = [[shown(i.path), i.kind, _model_column(i), i.dtype or "-", _params(i.params), i.expert_hint or "-",
             "; ".join(i.notes) or "-"] for i in infos]
    # the path is printed whole (print_table never cuts a kept column; cells are never read as markup)
    print_table([Col("file", keep=True), "kind", "model", "dtype", "params", "expert", "notes"], rows,
                console=console, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")


@models.command("fabricate")
@click.option("--task", default="t2v-A14B", show_default=True, metavar="TASK",
              help="musubi-tuner task whose files to write (t2v-A14B, i2v-A14B, t2v-1.3B, ...).")
@click.option("--dtype", type=click.Choice(["fp16", "bf16"]), default="fp16", show_default=True,
              help="DiT dtype to declare (Comfy-Org's WAN 2.2 downloads are fp16).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder to write the files into.")
def fabricate_cmd(task, dtype, out):
    """Write stand-in model files for rehearsals: real headers, no weights.

    Each file has the exact tensor names, dtypes, shapes and size of the real download but holds
    zeros and takes almost no disk (a sparse file). kohyawan's planning, estimates and
    'run --rehearse' accept them; the real trainer would train nothing useful on them.

    \b
    Example:
      kohyawan models fabricate --task t2v-A14B --out ./models
    """
    from pathlib import Path

    from kohyawan.errors import BadInput
    from kohyawan.modelfiles.standins import write_task_models
    from kohyawan.wan import TASKS

    if task not in TASKS:
        raise BadInput(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    files = write_task_models(Path(out), task, dtype=dtype)
    for role, path in files.items():
        click.echo(f"{role:<15} {path}  ({path.stat().st_size / 1e9:.1f} GB, sparse)")
