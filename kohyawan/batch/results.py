"""What a finished run folder says, for comparison tables and version notes (reads files, no processes).

A run folder is ``kohyawan run``'s ledger: ``run.json`` (status, attempts with peak VRAM, checkpoints,
total steps), ``metrics.jsonl`` (one line per logged step with ``loss``) and ``plan.json`` (dataset item
count). Missing or half-written files give ``None`` fields, never an exception: a table of ten runs must
not fail because one run died before writing anything.
"""

from __future__ import annotations

import json
import math
from kohyawan.files import jsonfile
from datetime import datetime
from pathlib import Path
from typing import Any

# Checkpoints in this part of training are the candidates for export (the registry's "auto" choice picks
# the one nearest 70 %): the guide's advice that the best LoRA is rarely the last one.
CANDIDATE_RANGE = (0.6, 0.8)


def losses(run_dir: Path) -> list[tuple[int, float]]:
    out = []
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line being written when we read
        loss, step = rec.get("loss"), rec.get("step")
        if isinstance(loss, (int, float)) and isinstance(step, int) and math.isfinite(loss):
            out.append((step, float(loss)))
    return out


def _seconds(data: dict) -> float | None:
    starts = [a.get("started") for a in data.get("attempts", []) if a.get("started")]
    ends = [a.get("ended") for a in data.get("attempts", []) if a.get("ended")]
    first, last = data.get("created") or (starts[0] if starts else None), data.get("updated") or (ends[-1] if ends else None)
    try:
        return (datetime.fromisoformat(last.replace("Z", "+00:00"))
                - datetime.fromisoformat(first.replace("Z", "+00:00"))).total_seconds()
    except (AttributeError, ValueError):
        return None


def summarize(run_dir: Path | None) -> dict[str, Any]:
    """One row: status, losses, time, peak VRAM, attempts, checkpoints and export candidates."""
    row: dict[str, Any] = {"run_dir": str(run_dir) if run_dir else None, "run_id": None, "status": None,
                           "final_loss": None, "best_loss": None, "best_step": None, "seconds": None,
                           "peak_vram_gb": None, "attempts": 0, "rungs": [], "total_steps": None,
                           "checkpoints": [], "candidates": [], "final": None, "items": None, "rehearsal": None}
    if run_dir is None:
        return row
    data = jsonfile.read_object(Path(run_dir) / "run.json")
    plan = jsonfile.read_object(Path(run_dir) / "plan.json")
    if plan:
        row["items"] = (plan.get("steps") or {}).get("items")
    if data is None:
        return row
    final = data.get("final")
    row.update({"run_id": data.get("id"), "status": data.get("status"), "total_steps": data.get("total_steps"),
                **_loss_fields(losses(Path(run_dir))), "seconds": _seconds(data),
                **_attempt_fields(data.get("attempts") or []), **_checkpoint_fields(data),
                "final": final.get("path") if isinstance(final, dict) else final,
                "rehearsal": data.get("rehearsal"), "reason": data.get("reason")})
    return row


def _loss_fields(series: list[tuple[int, float]]) -> dict[str, Any]:
    """The last loss logged, and the lowest with its step."""
    if not series:
        return {"final_loss": None, "best_loss": None, "best_step": None}
    best_step, best_loss = min(series, key=lambda p: p[1])
    return {"final_loss": series[-1][1], "best_loss": best_loss, "best_step": best_step}


def _attempt_fields(attempts: list[dict]) -> dict[str, Any]:
    """The highest VRAM peak over all attempts, how many there were, and the ladder rungs they ran."""
    peaks = [a.get("peak_vram_gb") for a in attempts if isinstance(a.get("peak_vram_gb"), (int, float))]
    return {"peak_vram_gb": max(peaks) if peaks else None, "attempts": len(attempts),
            "rungs": [a["rung"] for a in attempts if a.get("rung")]}


def _checkpoint_fields(data: dict) -> dict[str, Any]:
    """Steps of the checkpoints still on disk, and those in the export candidate range."""
    total = data.get("total_steps")
    cks = [c for c in data.get("checkpoints") or [] if not c.get("removed")]
    steps = sorted({c["step"] for c in cks if isinstance(c.get("step"), int)})
    lo, hi = CANDIDATE_RANGE
    return {"checkpoints": steps, "candidates": [s for s in steps if total and lo * total <= s <= hi * total]}


def dataset_word(dataset: Path) -> str:
    """'images' for an image-only dataset, else 'items': the counts compared are the trainer's items, and a
    clip can give several items (chunked frame extraction), so clips are not counted as such."""
    from kohyawan.dataset import inventory

    inv = inventory.scan(Path(dataset))
    return "images" if inv.images and not inv.clips else "items"


def change_note(items: int | None, previous: dict | None, word: str = "items") -> str:
    """The automatic part of a version's notes: what changed since the previous version's data."""
    if previous is None:
        return f"first version, trained on {items} {word}" if items is not None else "first version"
    prev_items = (previous.get("dataset") or {}).get("size")
    v = previous.get("version")
    if items is None or not isinstance(prev_items, int):
        return f"retrained (batch); dataset size of v{v} not recorded"
    diff = items - prev_items
    if diff > 0:
        return f"retrained on {diff} new {word} ({items} in all; v{v} had {prev_items})"
    if diff < 0:
        return f"retrained on {items} {word}, {-diff} fewer than v{v}"
    return f"retrained on the same number of {word} as v{v} ({items})"
