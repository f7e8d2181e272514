"""``kohyawan sweep``: the same profile, dataset and seed trained once per variant, then compared.

A sweep is a small batch without a manifest: one job per variant, run by the same scheduler (in parallel on
separate GPUs when several are given, else one after another), with its queue in the sweep folder, so an
interrupted sweep continues where it stopped. The comparison (``sweep.json`` and the table) reads each run
folder: final and best loss, time, peak VRAM, attempts, candidate checkpoints.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from kohyawan.batch import jobs as jobs_mod, results
from kohyawan.batch import allocate as gpus_mod
from kohyawan.batch.manifest import Job, with_fingerprint
from kohyawan.batch.queue import BatchLock, Queue
from kohyawan.errors import BadInput, KohyawanError

VERSION = 1
DEFAULT_SEED = 42


@dataclass(frozen=True)
class SweepRequest:
    profile: str
    dataset: Path
    variants: tuple[str, ...]
    runs_dir: Path
    name: str | None = None
    task: str = "t2v-A14B"
    expert: str = "both"
    models: tuple[tuple[str, str], ...] = ()
    sets: tuple[str, ...] = ()
    seed: int | None = None
    gpus: str | None = None
    rehearse: bool = False
    gpu_memory: float | None = None
    trainer: Path | None = None
    python: str | None = None
    kohyawan: tuple[str, ...] = ()
    grid_prompts: Path | None = None     # write a ComfyUI comparison grid of the variants' final LoRAs
    grid_strength: float = 1.0
    comfyui: Path | None = None          # copy the LoRAs into this ComfyUI folder for the grid
    server: str | None = None            # run the grid on this ComfyUI server
    cache_dir: Path | None = None        # the cache store (None: the runs' default, RUNS_DIR/.cache)


def parse_variants(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    if len(names) < 2:
        raise BadInput("--variants needs at least two variants to compare, e.g. conservative,standard,aggressive")
    if len(set(names)) != len(names):
        raise BadInput("--variants lists a variant twice")
    return names


def plan_jobs(req: SweepRequest) -> tuple[str, int, list[Job]]:
    """Resolve every variant's plan (fails before anything starts) and one job per variant."""
    from kohyawan.config import profiles, validate
    from kohyawan.commands.common import resolve_spec

    known = profiles.variants(profiles.find_project_file().parent if profiles.find_project_file() else None)
    unknown = [v for v in req.variants if v not in known]
    if unknown:
        raise BadInput(f"unknown variant(s) {', '.join(unknown)}; available: {', '.join(sorted(known))}")
    name = req.name or f"sweep-{req.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
        raise BadInput(f"sweep name {name!r}: use letters, digits, '.', '-' and '_'")
    models = dict(req.models)
    seed = req.seed
    jobs = []
    for i, variant in enumerate(req.variants):
        m = {role: Path(p) for role, p in models.items()}
        try:
            spec = resolve_spec(req.profile, req.dataset, req.task, req.expert, variant, m.get("dit"),
                                m.get("dit_high_noise"), m.get("vae"), m.get("t5"), req.sets)
            validate.check(spec, need_models=not req.rehearse)
        except KohyawanError as exc:
            raise type(exc)(f"variant {variant}: {exc}") from None
        if seed is None:
            seed = spec.train.get("seed", DEFAULT_SEED)
        jobs.append(Job(index=i, key=variant, client="sweep", name=variant, kind=req.profile,
                        dataset=Path(req.dataset).absolute(), profile=req.profile, variant=variant, task=req.task,
                        expert=req.expert, sets=tuple(req.sets), models=models, export=False, checkpoint="auto",
                        dtype=None, notes=None, env={}, max_attempts=None, gpu_memory=req.gpu_memory,
                        run_base=f"{name}-{variant}"))
    # The same seed for every variant: differences come from the variants, not from the noise.
    seeded = [with_fingerprint(_replace_sets(j, (*j.sets, f"seed={seed}"))) for j in jobs]
    return name, int(seed), seeded


def _replace_sets(job: Job, sets: Sequence[str]) -> Job:
    from dataclasses import replace

    return replace(job, sets=tuple(sets))


def run(req: SweepRequest, say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    from kohyawan.batch.local import Scheduler

    name, seed, jobs = plan_jobs(req)
    slots = gpus_mod.parse_gpus(req.gpus)
    folder = Path(req.runs_dir).absolute() / name
    launch = jobs_mod.Launch(runs_dir=Path(req.runs_dir).absolute(), rehearse=req.rehearse, trainer=req.trainer,
                             python=req.python, kohyawan=req.kohyawan,
                             cache_dir=Path(req.cache_dir).absolute() if req.cache_dir else None)
    with BatchLock(folder):
        q = Queue(folder)
        try:
            q.sync(jobs)
            q.set_meta(kind="sweep", name=name, seed=seed, profile=req.profile, dataset=str(req.dataset))
            say(f"sweep {name}: {len(jobs)} variants on {len([s for s in slots if s]) or 1} GPU slot(s), seed {seed}")
            Scheduler(q, jobs, launch, slots, export=False, say=say).run()
            doc = document(q, name, seed, req)
        finally:
            q.close()
    if req.grid_prompts is not None:
        doc["comparison_grid"] = _grid(doc, req, folder, say)
    from kohyawan.files.atomic import write_text as atomic_write

    atomic_write(folder / "sweep.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return doc


def _grid(doc: dict[str, Any], req: SweepRequest, folder: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """The ComfyUI side-by-side grid; its failure is recorded, never loses the sweep's results."""
    from kohyawan.batch import sweep_grid

    try:
        grid = sweep_grid.build(doc, req.grid_prompts, folder / "grid", strength=req.grid_strength,
                                comfyui=req.comfyui, server=req.server, report=say)
    except KohyawanError as exc:
        say(f"comparison grid not made: {exc}")
        return {"error": str(exc)}
    say(f"comparison grid: {grid['workflows']} workflows in {grid['dir']}"
        + (f", contact sheet {grid['contact_sheet']}" if grid["contact_sheet"] else ""))
    return grid


def document(q: Queue, name: str, seed: int, req: SweepRequest) -> dict[str, Any]:
    rows = []
    for row in q.rows():
        info = results.summarize(Path(row["run_dir"])) if row["run_dir"] else results.summarize(None)
        rows.append({"variant": row["key"], "state": row["state"], "gpu": row["gpu"], "run_id": row["run_id"],
                     "run_dir": row["run_dir"], "reason": row["reason"],
                     "started_at": row["started_at"], "ended_at": row["ended_at"],
                     **{k: info[k] for k in ("final_loss", "best_loss", "best_step", "seconds", "peak_vram_gb",
                                             "attempts", "rungs", "total_steps", "checkpoints", "candidates",
                                             "final", "rehearsal")}})
    done = [r for r in rows if r["state"] == "succeeded" and r["best_loss"] is not None]
    return {"version": VERSION, "name": name, "dir": str(q.folder), "profile": req.profile,
            "dataset": str(Path(req.dataset).absolute()), "task": req.task, "seed": seed,
            "rehearsal": req.rehearse, "gpus": [s for s in gpus_mod.parse_gpus(req.gpus) if s],
            "parallel": _overlap(rows), "variants": rows,
            "lowest_best_loss": min(done, key=lambda r: r["best_loss"])["variant"] if done else None,
            "comparison_grid": None}


def _overlap(rows: list[dict]) -> bool:
    """Did any two variants train at the same time (the proof that GPUs were used in parallel)?"""
    spans = sorted((r["started_at"], r["ended_at"]) for r in rows if r["started_at"] and r["ended_at"])
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def print_table(doc: dict[str, Any]) -> None:
    from rich import box

    from kohyawan.console import out, print_table as show_table

    from kohyawan.batch.tables import SWEEP_COLUMNS, sweep_rows

    c = out()
    show_table(SWEEP_COLUMNS, sweep_rows(doc), console=c, box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
               title_justify="left",
                title=f"sweep {doc['name']} (seed {doc['seed']})" + (" - REHEARSAL" if doc["rehearsal"] else ""))
    if doc["lowest_best_loss"]:
        c.print(f"lowest best loss: {doc['lowest_best_loss']} (loss alone does not pick a LoRA: compare outputs)",
                markup=False)
    c.print(f"sweep.json: {Path(doc['dir']) / 'sweep.json'}", markup=False)
