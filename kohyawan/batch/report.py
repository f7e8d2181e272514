"""The batch's documents and tables: ``batch.json`` and what ``kohyawan batch status`` prints.

``batch.json`` (version 1; add fields, never rename): ``version, dir, manifest, driver_pid, counts{pending,
running, succeeded, failed}, jobs[{key, in_manifest (false: in the queue from an earlier manifest, not run any more), client, name, kind, state, attempts, tries, run_id, run_dir, gpu,
started_at, ended_at, seconds, exit_code, reason, export_state, exported_version, export_notes,
slurm_job, slurm_state, run{status, final_loss, best_loss, best_step, seconds, peak_vram_gb, attempts,
rungs, checkpoints, candidates, final}}], scheduling{gaps_s[], max_gap_s, mean_gap_s}``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kohyawan.batch import results
from kohyawan.batch.queue import Queue, is_driven

VERSION = 1


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def scheduling_gaps(queue: Queue) -> list[float]:
    """Seconds from a job's end to the next start on the same GPU: the scheduler's own overhead."""
    gaps, last_end = [], {}
    for ev in queue.events():
        detail = json.loads(ev["detail"]) if ev["detail"] else {}
        slot = detail.get("slot")
        if slot is None:
            continue
        if ev["event"] == "end":
            last_end[slot] = ev["t"]
        elif ev["event"] in ("start", "resume") and slot in last_end:
            gaps.append(ev["t"] - last_end.pop(slot))
    return gaps


def document(queue: Queue) -> dict[str, Any]:
    meta = queue.meta()
    current = set(meta.get("jobs") or [])
    jobs = []
    for row in queue.rows():
        definition = json.loads(row["definition"])
        detail = json.loads(row["export_detail"]) if row["export_detail"] else {}
        run = results.summarize(Path(row["run_dir"])) if row["run_dir"] else results.summarize(None)
        seconds = (row["ended_at"] - row["started_at"]) if row["ended_at"] and row["started_at"] else None
        jobs.append({
            "key": row["key"], "in_manifest": row["key"] in current if current else True,
            "client": definition.get("client"), "name": definition.get("name"),
            "kind": definition.get("kind"), "dataset": definition.get("dataset"), "state": row["state"],
            "attempts": row["attempts"], "tries": row["tries"], "run_id": row["run_id"], "run_dir": row["run_dir"],
            "gpu": row["gpu"], "started_at": _iso(row["started_at"]), "ended_at": _iso(row["ended_at"]),
            "seconds": round(seconds, 3) if seconds is not None else None, "exit_code": row["exit_code"],
            "reason": row["reason"], "export_state": row["export_state"],
            "exported_version": row["exported_version"], "export_notes": detail.get("notes"),
            "exported_files": detail.get("files"), "slurm_job": row["slurm_job"], "slurm_state": row["slurm_state"],
            "run": {k: run[k] for k in ("status", "final_loss", "best_loss", "best_step", "seconds", "peak_vram_gb",
                                        "attempts", "rungs", "checkpoints", "candidates", "final")},
        })
    gaps = scheduling_gaps(queue)
    return {
        "version": VERSION, "dir": str(queue.folder), "manifest": meta.get("manifest"),
        "rehearsal": meta.get("rehearse"), "driver_pid": is_driven(queue.folder),
        "counts": queue.counts(), "jobs": jobs,
        "scheduling": {"gaps_s": [round(g, 4) for g in gaps], "max_gap_s": round(max(gaps), 4) if gaps else None,
                       "mean_gap_s": round(sum(gaps) / len(gaps), 4) if gaps else None},
    }


def write(queue: Queue) -> dict[str, Any]:
    from kohyawan.files.atomic import write_text as atomic_write

    doc = document(queue)
    atomic_write(queue.folder / "batch.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return doc


def print_table(doc: dict[str, Any], *, title: str | None = None) -> None:
    from rich import box

    from kohyawan.console import out, print_table as show_table

    from kohyawan.batch.tables import BATCH_COLUMNS, batch_rows

    c = out()
    show_table(BATCH_COLUMNS, batch_rows(doc), console=c, title=title, title_justify="left", box=box.SIMPLE_HEAD,
               pad_edge=False, show_edge=False)
    for j in doc["jobs"]:
        if j["reason"] and j["state"] != "succeeded":
            c.print(f"  {j['key']}: {j['reason']}", markup=False)
    counts = doc["counts"]
    c.print(", ".join(f"{n} {state}" for state, n in counts.items()) + f"  ({doc['dir']})", markup=False)
