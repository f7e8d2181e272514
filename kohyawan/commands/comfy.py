"""``kohyawan comfy workflow|grid``: ComfyUI workflows for a LoRA and test grids on a live ComfyUI."""

from __future__ import annotations

from pathlib import Path

import click

from kohyawan.console import err, out, print_json, warn
from kohyawan.errors import BadInput, WorkFailed

def _sampling_options(f):
    """Options shared by ``workflow`` and ``grid`` (defaults from ComfyUI's WAN 2.2 14B templates)."""
    from kohyawan.comfy.workflow import DEFAULTS, OUTPUTS, TASKS, WEIGHT_DTYPES  # light: no heavy imports

    options = [
        click.option("--task", type=click.Choice(TASKS), default="t2v-A14B", show_default=True,
                     help="Model family of the workflow: text-to-video or image-to-video (needs --image)."),
        click.option("--negative", default=None, help="Negative prompt (default: a short generic one)."),
        click.option("--image", default=None, help="i2v start image: a local file (uploaded with --server) or a "
                                                   "name in ComfyUI's input folder."),
        click.option("--width", type=int, default=DEFAULTS["width"], show_default=True,
                     help="Video width in px, a multiple of 16."),
        click.option("--height", type=int, default=DEFAULTS["height"], show_default=True,
                     help="Video height in px, a multiple of 16."),
        click.option("--frames", type=int, default=DEFAULTS["frames"], show_default=True, help="4n+1"),
        click.option("--steps", type=int, default=DEFAULTS["steps"], show_default=True,
                     help="Sampling steps of both experts together."),
        click.option("--split-step", type=int, default=None, help="Step where the low-noise expert takes over "
                                                                  "[default: steps/2]."),
        click.option("--cfg", type=float, default=DEFAULTS["cfg"], show_default=True,
                     help="Classifier-free guidance scale."),
        click.option("--shift", type=float, default=DEFAULTS["shift"], show_default=True,
                     help="ModelSamplingSD3 shift of both experts."),
        click.option("--fps", type=float, default=DEFAULTS["fps"], show_default=True,
                     help="Frame rate of the saved video."),
        click.option("--unet-high", default=None, help="High-noise model file name as ComfyUI lists it."),
        click.option("--unet-low", default=None, help="Low-noise model file name as ComfyUI lists it."),
        click.option("--clip", default=None, help="umT5 text encoder file name."),
        click.option("--vae", default=None, help="VAE file name (the Wan 2.1 VAE for 14B models)."),
        click.option("--weight-dtype", type=click.Choice(WEIGHT_DTYPES), default="default", show_default=True,
                     help="UNETLoader weight_dtype: how ComfyUI holds the model weights."),
        click.option("--output", "output_kind", type=click.Choice(OUTPUTS), default=DEFAULTS["output"],
                     show_default=True, help="SaveVideo (mp4) or SaveAnimatedWEBP."),
        click.option("--server", default=None, help="ComfyUI URL, e.g. http://127.0.0.1:8188."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _workflow_args(kw: dict, client=None) -> dict:
    from kohyawan.comfy.workflow import DEFAULT_NEGATIVE

    image = kw["image"]
    if image:
        local = Path(image)
        if local.is_file():
            if client is not None:
                image = client.upload_image(local)
                err().print(f"uploaded {local.name} to ComfyUI as {image}", markup=False)
            else:
                image = local.name
                err().print(f"note: the workflow names the image '{image}'; put the file into ComfyUI's input "
                            "folder (or pass --server to upload it)", markup=False)
    return dict(
        negative=kw["negative"] if kw["negative"] is not None else DEFAULT_NEGATIVE, image=image,
        width=kw["width"], height=kw["height"], frames=kw["frames"], steps=kw["steps"], split_step=kw["split_step"],
        cfg=kw["cfg"], shift=kw["shift"], fps=kw["fps"], unet_high=kw["unet_high"], unet_low=kw["unet_low"],
        clip=kw["clip"], vae=kw["vae"], weight_dtype=kw["weight_dtype"], output=kw["output_kind"],
    )


def _existing_parent(path: Path) -> None:
    """A file --out may be new, but its folder must exist (a typo must not create a tree), as for every command
    that writes one file; an output folder (grid --out) is created, as dataset prepare's is."""
    parent = path.absolute().parent
    if not parent.is_dir():
        raise BadInput(f"--out {path}: the folder {parent} does not exist")


def _warn_local_paths(names) -> None:
    from kohyawan.comfy.strengths import local_path_warning

    for name in dict.fromkeys(names):
        message = local_path_warning(name)
        if message:
            warn(message)


def _validate_or_fail(client, workflows: dict[str, dict]) -> None:
    """Check every workflow against the server's /object_info; list all problems, then exit 1."""
    from kohyawan.comfy.validate import check_workflow

    info = client.object_info()
    problems = []
    for label, graph in workflows.items():
        problems += [(label, p) for p in check_workflow(graph, info)]
    if problems:
        seen = set()
        for label, problem in problems:
            line = str(problem)
            if line not in seen:  # a grid repeats the same missing model in every cell
                seen.add(line)
                err().print(f"  {line}" + (f"   [{label}]" if len(workflows) > 1 else ""), markup=False)
        raise WorkFailed(f"the workflow does not validate against {client.url}: "
                         f"{len(seen)} problem{'s' if len(seen) != 1 else ''} (listed above)")


@click.group()
def comfy():
    """ComfyUI workflows for WAN 2.2 LoRAs, and test grids on a running ComfyUI.

    \b
    Example:
      kohyawan comfy workflow --lora sarah_v1.safetensors --prompt "sarah walks" --out wf.json
      kohyawan comfy grid --lora sarah_v2.safetensors --prompts prompts.txt --include-base \\
          --compare sarah_v1.safetensors --out grid/ --server http://127.0.0.1:8188
    """


@comfy.command()
@click.option("--lora", "loras", multiple=True, metavar="NAME[:STRENGTH]",
              help="LoRA for both experts (a '_high_'/'_low_' file name goes to that expert only). Repeatable.")
@click.option("--lora-high", "loras_high", multiple=True, metavar="NAME[:STRENGTH]", help="LoRA for the high-noise expert.")
@click.option("--lora-low", "loras_low", multiple=True, metavar="NAME[:STRENGTH]", help="LoRA for the low-noise expert.")
@click.option("--prompt", default="", help="Positive prompt.")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed of the sampler.")
@click.option("--prefix", default="kohyawan/wan", show_default=True, help="Output filename prefix in ComfyUI.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the API-format workflow JSON.")
@_sampling_options
def workflow(loras, loras_high, loras_low, prompt, seed, prefix, out_path, server, as_json, **kw):
    """Write a ComfyUI API-format workflow for WAN 2.2 A14B with your LoRAs.

    Both experts get the LoRA stack; strengths not given follow the guide: one LoRA 1.0, two 0.8 each,
    three or more 0.7 each (counted per expert). With --server, the workflow is checked against the
    server's /object_info (node types, model and LoRA names, value ranges) and exit 1 lists what is wrong.

    \b
    Example:
      kohyawan comfy workflow --lora sarah_v1.safetensors --lora style.safetensors:0.6 \\
          --prompt "sarah walks on a beach" --frames 49 --out wf.json --server http://127.0.0.1:8188
    """
    from kohyawan.files.atomic import write_text
    from kohyawan.comfy.strengths import parse_lora, stacks
    from kohyawan.comfy.workflow import build_workflow, dumps, loras_in

    _existing_parent(out_path)
    refs = ([parse_lora(t) for t in loras] + [parse_lora(t, "high") for t in loras_high]
            + [parse_lora(t, "low") for t in loras_low])
    _warn_local_paths(r.name for r in refs)
    high, low = stacks(refs)
    client = None
    if server:
        from kohyawan.comfy.client import ComfyClient

        client = ComfyClient(server)
    graph = build_workflow(kw["task"], loras_high=high, loras_low=low, prompt=prompt, seed=seed,
                           output_prefix=prefix, **_workflow_args(kw, client))
    if client is not None:
        _validate_or_fail(client, {"workflow": graph})
    write_text(out_path, dumps(graph))
    chains = loras_in(graph)
    if as_json:
        print_json({"path": str(out_path), "task": kw["task"], "nodes": len(graph),
                    "loras_high": [list(x) for x in chains["high"]], "loras_low": [list(x) for x in chains["low"]],
                    "validated_against": server})
        return
    show = lambda chain: ", ".join(f"{n} @ {s:.2f}" for n, s in chain) or "none"
    console = out()
    console.print(f"wrote {out_path} ({kw['task']}, {len(graph)} nodes)", markup=False)
    console.print(f"  high-noise LoRAs: {show(chains['high'])}", markup=False)
    console.print(f"  low-noise LoRAs:  {show(chains['low'])}", markup=False)
    if server:
        console.print(f"  validated against {server}", markup=False)


@comfy.command()
@click.option("--lora", "loras", multiple=True, required=True, metavar="NAME",
              help="LoRA file to test (repeat for an expert pair: ..._high_... and ..._low_...).")
@click.option("--strengths", default="0.6,0.8,1.0", show_default=True, help="Comma-separated strengths.")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Test prompts: one per line (# comments), or a JSON list.")
@click.option("--include-base", is_flag=True, help="Add the base model without any LoRA.")
@click.option("--compare", "compare", multiple=True, metavar="NAME",
              help="Another version to compare at the same strengths (repeat for an expert pair).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the grid: workflows/, grid.json, and with --server outputs/ and the contact sheet.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of prompt 1 (prompt n uses seed+n-1).")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds allowed per workflow.")
@_sampling_options
def grid(loras, strengths, prompts_file, include_base, compare, out_dir, seed, timeout, server, as_json, **kw):
    """Build the LoRA test grid (prompts x strengths, + base model, + another version) as workflows.

    Writes DIR/workflows/*.json and DIR/grid.json. With --server: validates them all against the
    server's /object_info, runs them one by one (progress on stderr), downloads the outputs into
    DIR/outputs/, and writes DIR/contact_sheet.png and DIR/index.html. A failed cell is recorded and the
    grid goes on; exit 1 if any cell failed. Ctrl-C asks ComfyUI to stop the running prompt.

    \b
    Example:
      kohyawan comfy grid --lora sarah_v2.safetensors --strengths 0.6,0.8,1.0 --prompts prompts.txt \\
          --include-base --compare sarah_v1.safetensors --frames 33 --out grid/ --server http://127.0.0.1:8188
    """
    from kohyawan.comfy.grid import parse_strengths, plan_grid, read_prompts, write_grid

    from kohyawan.comfy.strengths import parse_lora

    _warn_local_paths(parse_lora(name).name for name in (*loras, *compare))
    prompts = read_prompts(prompts_file)
    values = parse_strengths(strengths)
    client = None
    if server:
        from kohyawan.comfy.client import ComfyClient

        client = ComfyClient(server)
    args = _workflow_args(kw, client)
    manifest = plan_grid(loras, values, prompts, compare=compare, include_base=include_base, seed=seed,
                         name=out_dir.resolve().name, task=kw["task"], **args)
    if client is not None:
        _validate_or_fail(client, {c["id"]: c["workflow_graph"] for c in manifest["cells"]})
    out_dir.mkdir(parents=True, exist_ok=True)
    write_grid(out_dir, manifest)
    failed = _run_grid(client, out_dir, manifest, timeout) if client is not None else []
    cells = manifest["cells"]
    if as_json:
        print_json({"out": str(out_dir), "manifest": str(out_dir / "grid.json"), "cells": len(cells),
                    "prompts": len(prompts), "columns": [c["label"] for c in manifest["columns"]],
                    "server": server, "done": sum(c["status"] == "done" for c in cells), "failed": len(failed),
                    "contact_sheet": manifest["contact_sheet"], "index": manifest["index"]})
    else:
        _print_grid(out_dir, manifest, len(prompts), server, failed)
    if failed:
        first = failed[0]
        raise WorkFailed(f"{len(failed)} of {len(cells)} grid cells failed (see {out_dir / 'grid.json'}); "
                         f"first: {first['id']}: {first['error'] or first['status']}")


def _run_grid(client, out_dir: Path, manifest: dict, timeout: float) -> list[dict]:
    """Run every cell on the server, then write the contact sheet and index.html; the cells that failed."""
    from kohyawan.comfy.grid import run_grid, save_manifest
    from kohyawan.comfy.sheet import contact_sheet, index_html

    stderr = err()
    run_grid(client, out_dir, manifest, timeout=timeout, report=lambda line: stderr.print(line, markup=False))
    manifest["contact_sheet"] = contact_sheet(out_dir, manifest).name
    manifest["index"] = index_html(out_dir, manifest).name
    save_manifest(out_dir, manifest)
    return [c for c in manifest["cells"] if c["status"] != "done"]


def _print_grid(out_dir: Path, manifest: dict, prompts: int, server: str | None, failed: list[dict]) -> None:
    cells = manifest["cells"]
    console = out()
    console.print(f"wrote {len(cells)} workflows to {out_dir / 'workflows'} "
                  f"({prompts} prompts x {len(manifest['columns'])} columns)", markup=False)
    console.print("  columns: " + "; ".join(c["label"] for c in manifest["columns"]), markup=False)
    if server:
        done = len(cells) - len(failed)
        console.print(f"  ran {done}/{len(cells)} on {server}", markup=False)
        console.print(f"  contact sheet: {out_dir / manifest['contact_sheet']}", markup=False)
        console.print(f"  index:         {out_dir / manifest['index']}", markup=False)
    else:
        console.print("  (pass --server URL to run them and build the contact sheet)", markup=False)
