"""LoRA test grids: the guide's test protocol as a set of workflows, and running them on a ComfyUI.

The protocol, one workflow per cell of a table whose rows are test prompts:
  1. strength sweep - the LoRA (or expert pair) at each strength, e.g. 0.6 / 0.8 / 1.0;
  2. base model     - the same prompt and seed without any LoRA (``--include-base``), to see what the LoRA adds;
  3. comparison     - another version (``--compare``) at the same strengths, to judge a new version against
                      the one in production.
Every cell of a row shares one seed, so a difference between columns comes from the LoRA, not the noise.

``plan_grid`` is pure; ``write_grid`` writes ``workflows/*.json`` and ``grid.json``; ``run_grid`` queues the
cells one by one, downloads outputs to ``outputs/<cell>/`` and rewrites ``grid.json`` after every cell.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from kohyawan.comfy import workflow as wfmod
from kohyawan.files.atomic import write_bytes, write_text
from kohyawan.comfy.strengths import LoraRef, parse_lora, stacks
from kohyawan.errors import BadInput, Interrupted

MANIFEST = "grid.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Column:
    key: str              # "base", "lora-s0.80", "compare-s0.80"
    role: str             # "base" | "lora" | "compare"
    label: str            # shown on the contact sheet and in index.html
    strength: float | None
    loras: tuple[LoraRef, ...]


def read_prompts(path: Path) -> list[str]:
    """Test prompts: a ``.json`` list of strings, or a text file with one prompt per line (``#`` comments and
    blank lines ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot read prompts file {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BadInput(f"prompts file {path} is not valid JSON: {exc}") from None
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise BadInput(f"prompts file {path} must hold a JSON list of strings")
        prompts = [p.strip() for p in data if p.strip()]
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise BadInput(f"prompts file {path} has no prompts")
    return prompts


def parse_strengths(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BadInput(f"--strengths '{text}' must be numbers separated by commas, e.g. 0.6,0.8,1.0") from None
    if not values:
        raise BadInput("--strengths needs at least one value")
    if len(set(values)) != len(values):
        raise BadInput(f"--strengths '{text}' repeats a value")
    return values


def _stem(name: str) -> str:
    return re.sub(r"\.safetensors$", "", re.split(r"[\\/]", name)[-1])


def version_label(names: Sequence[str]) -> str:
    """A short name for a set of LoRA files (an expert pair shows as one name)."""
    stems = [_stem(n) for n in names]
    if len(stems) == 2:
        a, b = (re.sub(r"(^|_)(high|low)(_|$)", r"\1*\3", s) for s in stems)
        if a == b:
            return a.replace("*", "high|low")
    return " + ".join(stems)


def columns(loras: Sequence[str], strengths: Sequence[float], compare: Sequence[str] = (),
            include_base: bool = False) -> list[Column]:
    if not loras:
        raise BadInput("a grid needs at least one --lora")
    cols = []
    if include_base:
        cols.append(Column("base", "base", "base model (no LoRA)", None, ()))
    for role, names in (("lora", loras), ("compare", compare)):
        if not names:
            continue
        refs = [parse_lora(n) for n in names]
        if any(r.strength is not None for r in refs):
            raise BadInput("grid LoRAs take no :STRENGTH; the strengths come from --strengths")
        label = version_label([r.name for r in refs])
        for s in strengths:
            cols.append(Column(f"{role}-s{s:.2f}", role, f"{label} @ {s:.2f}", s,
                               tuple(LoraRef(r.name, s, r.expert) for r in refs)))
    return cols


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "grid"


def plan_grid(loras: Sequence[str], strengths: Sequence[float], prompts: Sequence[str], *,
              compare: Sequence[str] = (), include_base: bool = False, seed: int = 42, name: str = "grid",
              task: str = "t2v-A14B", **workflow_args: Any) -> dict:
    """The manifest (``grid.json`` content) with each cell's workflow inline under ``"workflow_graph"``."""
    cols = columns(loras, strengths, compare, include_base)
    cells = []
    for p_index, prompt in enumerate(prompts, 1):
        for col in cols:
            high, low = stacks(list(col.loras))
            cell_id = f"p{p_index:02d}-{col.key}"
            graph = wfmod.build_workflow(task, loras_high=high, loras_low=low, prompt=prompt,
                                         seed=seed + p_index - 1, output_prefix=f"kohyawan_grid/{safe_name(name)}/{cell_id}",
                                         **workflow_args)
            cells.append({
                "id": cell_id, "prompt_index": p_index, "column": col.key, "role": col.role, "label": col.label,
                "strength": col.strength, "seed": seed + p_index - 1,
                "loras_high": [[n, s] for n, s in high], "loras_low": [[n, s] for n, s in low],
                "workflow": f"workflows/{cell_id}.json", "status": "planned", "prompt_id": None,
                "outputs": [], "frame": None, "error": None, "seconds": None, "workflow_graph": graph,
            })
    return {
        "version": MANIFEST_VERSION, "name": name, "task": task, "lora": list(loras), "compare": list(compare),
        "strengths": list(strengths), "include_base": include_base, "seed": seed,
        "settings": _settings(workflow_args),
        "prompts": [{"index": i, "text": p} for i, p in enumerate(prompts, 1)],
        "columns": [{"key": c.key, "role": c.role, "label": c.label, "strength": c.strength} for c in cols],
        "cells": cells, "server": None, "contact_sheet": None, "index": None,
    }


def _settings(workflow_args: dict) -> dict:
    settings = {k: workflow_args.get(k, wfmod.DEFAULTS.get(k)) for k in
                ("width", "height", "frames", "steps", "split_step", "cfg", "shift", "fps")}
    if settings["split_step"] is None:  # record the split actually used, not "default"
        settings["split_step"] = settings["steps"] // 2
    return settings


def _manifest_text(manifest: dict) -> str:
    slim = dict(manifest, cells=[{k: v for k, v in c.items() if k != "workflow_graph"} for c in manifest["cells"]])
    return json.dumps(slim, indent=2, ensure_ascii=False) + "\n"


def save_manifest(out_dir: Path, manifest: dict) -> None:
    write_text(out_dir / MANIFEST, _manifest_text(manifest))


def write_grid(out_dir: Path, manifest: dict) -> None:
    (out_dir / "workflows").mkdir(parents=True, exist_ok=True)
    for cell in manifest["cells"]:
        write_text(out_dir / cell["workflow"], wfmod.dumps(cell["workflow_graph"]))
    save_manifest(out_dir, manifest)


def run_grid(client, out_dir: Path, manifest: dict, *, timeout: float,
             report: Callable[[str], None] = lambda line: None) -> dict:
    """Queue every planned cell, wait for it, download its outputs. Execution errors and timeouts fail
    that cell and the grid goes on; an unreachable server or Ctrl-C stops it (grid.json stays truthful)."""
    from kohyawan.comfy.client import ExecutionFailed, TimedOut, output_files
    from kohyawan.comfy.sheet import first_frame

    manifest["server"] = client.url
    todo = [c for c in manifest["cells"] if c["status"] != "done"]
    for n, cell in enumerate(todo, 1):
        report(f"[{n}/{len(todo)}] {cell['id']}: {cell['label']}, prompt {cell['prompt_index']}")
        cell.update(status="running", error=None)
        save_manifest(out_dir, manifest)
        started = time.monotonic()
        last = [0.0]

        def on_event(kind: str, data: dict) -> None:
            if kind == "progress":
                now = time.monotonic()
                if data.get("value") == data.get("max") or now - last[0] >= 2.0:
                    last[0] = now
                    report(f"    node {data.get('node')}: step {data.get('value')}/{data.get('max')}")

        try:
            prompt_id, entry = client.run(cell["workflow_graph"], timeout=timeout, on_event=on_event)
        except (ExecutionFailed, TimedOut) as exc:
            cell.update(status="failed", error=str(exc), seconds=round(time.monotonic() - started, 1))
            save_manifest(out_dir, manifest)
            report(f"    failed: {exc}")
            continue
        except (Interrupted, KeyboardInterrupt):
            cell.update(status="interrupted")
            save_manifest(out_dir, manifest)
            raise
        except Exception as exc:  # server gone mid-grid and the like: stop, but leave grid.json truthful
            cell.update(status="failed", error=str(exc))
            save_manifest(out_dir, manifest)
            raise
        cell["prompt_id"] = prompt_id
        saved = []
        for item in output_files(entry):
            rel = f"outputs/{cell['id']}/{Path(item['filename']).name}"
            write_bytes(out_dir / rel, client.view(item["filename"], item["subfolder"], item["type"]))
            saved.append(rel)
        cell["outputs"] = saved
        if saved:
            frame = f"frames/{cell['id']}.png"
            try:
                first_frame(out_dir / saved[0], out_dir / frame)
                cell["frame"] = frame
            except BadInput as exc:
                report(f"    warning: no first frame for {saved[0]}: {exc}")
        cell.update(status="done" if saved else "failed", error=None if saved else "the workflow produced no file",
                    seconds=round(time.monotonic() - started, 1))
        save_manifest(out_dir, manifest)
    return manifest

