"""A sweep's side-by-side ComfyUI comparison: one column per variant (plus the base model), one row per test
prompt, every cell of a row on the same seed, built with the comfy test-grid library.

The variants' final LoRA files are named for ComfyUI as ``kohyawan-sweeps/<sweep>/<variant>.safetensors``
(``<variant>_high`` / ``_low`` for per-expert runs); with a ComfyUI folder they are copied there (a new
name per sweep, so ComfyUI's cache of an older file of the same name never applies), with a server the
grid is run and a contact sheet made.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from kohyawan.errors import BadInput

PREFIX = "kohyawan-sweeps"


def lora_files(run_dir: str | None) -> list[tuple[str, Path]]:
    """(expert, path) of a finished run's final LoRA files, from run.json's ``final``."""
    if not run_dir:
        return []
    try:
        data = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    final = data.get("final") or {}
    outputs = final.get("outputs") or ([final] if final.get("path") else [])
    expert = {"train_high": "high", "train_low": "low"}
    return [(expert.get(o.get("stage"), "both"), Path(o["path"])) for o in outputs if o.get("path")]


def comfy_names(sweep: str, variant: str, files: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    out = []
    for expert, path in files:
        suffix = "" if expert == "both" else f"_{expert}"
        out.append((f"{PREFIX}/{sweep}/{variant}{suffix}.safetensors", path))
    return out


def plan(doc: dict[str, Any], prompts: list[str], *, strength: float = 1.0, include_base: bool = True,
         **workflow_args: Any) -> tuple[dict, list[tuple[str, Path]]]:
    """The grid manifest (comfy's grid.json shape) and the (ComfyUI name, source file) pairs it needs."""
    from kohyawan.comfy.grid import plan_grid, safe_name

    variants = [(r["variant"], comfy_names(doc["name"], r["variant"], lora_files(r["run_dir"])))
                for r in doc["variants"] if r["state"] == "succeeded"]
    variants = [(v, names) for v, names in variants if names]
    if not variants:
        raise BadInput("no finished variant has a final LoRA file to compare")
    merged: dict | None = None
    files: list[tuple[str, Path]] = []
    for i, (variant, names) in enumerate(variants):
        files += names
        part = plan_grid([n for n, _ in names], [strength], prompts, include_base=include_base and i == 0,
                         seed=doc["seed"], name=doc["name"], task=doc["task"], **workflow_args)
        for col in part["columns"]:
            if col["role"] != "base":
                col.update(key=safe_name(variant), label=f"{variant} @ {strength:.2f}")
        for cell in part["cells"]:
            if cell["role"] != "base":
                cell.update(column=safe_name(variant), label=f"{variant} @ {strength:.2f}",
                            id=f"p{cell['prompt_index']:02d}-{safe_name(variant)}")
                cell["workflow"] = f"workflows/{cell['id']}.json"
                for node in cell["workflow_graph"].values():
                    if "filename_prefix" in node.get("inputs", {}):
                        node["inputs"]["filename_prefix"] = f"kohyawan_grid/{safe_name(doc['name'])}/{cell['id']}"
        if merged is None:
            merged = part
            merged["compare"] = []
        else:
            merged["columns"] += part["columns"]
            merged["cells"] += part["cells"]
    assert merged is not None
    merged["lora"] = [n for n, _ in files]
    merged["cells"].sort(key=lambda c: (c["prompt_index"], [col["key"] for col in merged["columns"]].index(c["column"])))
    merged["sweep"] = {"name": doc["name"], "variants": [v for v, _ in variants]}
    return merged, files


def _validate(client, manifest: dict) -> None:
    """Every cell against the server's /object_info before anything is queued (a LoRA ComfyUI does not
    list, a missing model): one line with the distinct problems."""
    from kohyawan.comfy.validate import check_workflow
    from kohyawan.errors import WorkFailed

    info = client.object_info()
    problems = sorted({str(p) for cell in manifest["cells"] for p in check_workflow(cell["workflow_graph"], info)})
    if problems:
        raise WorkFailed(f"the grid does not validate against {client.url}: " + "; ".join(problems[:5])
                         + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))


def deploy(files: list[tuple[str, Path]], comfyui: Path) -> list[str]:
    """Copy the LoRA files into ComfyUI's models/loras under their grid names (atomically)."""
    loras = Path(comfyui) / "models" / "loras"
    if not loras.is_dir():
        raise BadInput(f"{comfyui} has no models/loras folder (is it a ComfyUI folder?)")
    placed = []
    for name, src in files:
        dest = loras / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dest)
        placed.append(str(dest))
    return placed


def build(doc: dict[str, Any], prompts_file: Path, out_dir: Path, *, strength: float = 1.0,
          comfyui: Path | None = None, server: str | None = None, timeout: float = 3600.0,
          report: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Write the grid's workflows (and deploy / run it when asked); returns what sweep.json records."""
    from kohyawan.comfy.grid import read_prompts, run_grid, save_manifest, write_grid
    from kohyawan.comfy.workflow import DEFAULT_NEGATIVE

    manifest, files = plan(doc, read_prompts(prompts_file), strength=strength, negative=DEFAULT_NEGATIVE)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_grid(out_dir, manifest)
    result: dict[str, Any] = {"dir": str(out_dir), "manifest": str(out_dir / "grid.json"),
                              "workflows": len(manifest["cells"]), "loras": [n for n, _ in files],
                              "deployed": None, "ran": False, "contact_sheet": None}
    if comfyui is not None:
        result["deployed"] = deploy(files, comfyui)
    if server:
        from kohyawan.comfy.client import ComfyClient
        from kohyawan.comfy.sheet import contact_sheet, index_html

        client = ComfyClient(server)
        _validate(client, manifest)
        run_grid(client, out_dir, manifest, timeout=timeout, report=report)
        manifest["contact_sheet"] = contact_sheet(out_dir, manifest).name
        manifest["index"] = index_html(out_dir, manifest).name
        save_manifest(out_dir, manifest)
        result.update(ran=True, contact_sheet=str(out_dir / manifest["contact_sheet"]))
    return result
