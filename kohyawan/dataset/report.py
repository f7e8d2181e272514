"""report.json (schema version 1): building it, reading it back, and the terminal summary."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from kohyawan.dataset.layout import REPORT
from kohyawan.errors import DatasetError

VERSION = 1


def summarise(items: list[dict], targets: Mapping[str, int]) -> dict:
    kept = [i for i in items if i["status"] == "kept"]
    dropped = [i for i in items if i["status"] == "dropped"]
    by_reason = Counter(code for i in dropped for code in i["reasons"])
    notes_by_reason = Counter(code for i in kept for code in i["reasons"])
    images = sum(1 for i in kept for o in i["outputs"] if o.endswith(".png"))
    clips = sum(1 for i in kept for o in i["outputs"] if o.endswith(".mp4"))
    summary: dict[str, Any] = {"kept": len(kept), "dropped": len(dropped), "by_reason": dict(sorted(by_reason.items())),
                               "images": images, "clips": clips,
                               "notes_by_reason": dict(sorted(notes_by_reason.items()))}
    summary["size_check"] = size_check(images, clips, targets)
    return summary


def size_check(images: int, clips: int, targets: Mapping[str, int]) -> dict:
    """Compare the prepared size with the profile's minimum / recommended sizes.

    A profile's minimum is met by either kind (character: 150 images or 30 clips); a kind whose
    minimum is 0 does not count towards it.
    """
    result: dict[str, Any] = {"targets": dict(targets), "status": "unknown", "message": ""}
    if not targets:
        result["message"] = "no profile given: no size targets to compare with"
        return result
    met_min = met_rec = False
    for kind, have in (("images", images), ("clips", clips)):
        need = targets.get(f"min_{kind}", 0)
        rec = targets.get(f"recommended_{kind}", 0)
        if need and have >= need:
            met_min = True
        if rec and have >= rec:
            met_rec = True
    parts = []
    for kind, have in (("images", images), ("clips", clips)):
        need = targets.get(f"min_{kind}", 0)
        if need:
            rec = targets.get(f"recommended_{kind}", 0)
            parts.append(f"{have} {kind} (minimum {need}" + (f", recommended {rec})" if rec else ")"))
    result["status"] = "recommended" if met_rec else "enough" if met_min else "below_minimum"
    result["message"] = "; ".join(parts)
    return result


def build(source: Path, settings: dict, items: list[dict], targets: Mapping[str, int], ignored: list[str]) -> dict:
    return {"version": VERSION, "source": str(Path(source).absolute()), "settings": settings,
            "items": items, "summary": summarise(items, targets), "ignored": ignored}


def load_report(dest: Path) -> dict:
    path = Path(dest) / REPORT
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path} not found: run `kohyawan dataset prepare SRC --out {dest}` first") from None
    except ValueError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise DatasetError(f"{path}: unsupported report version {data.get('version') if isinstance(data, dict) else '?'}")
    return data


def render(report: dict, console) -> None:
    from rich.table import Table

    summary = report["summary"]
    table = Table(title="dataset prepare", show_header=True)
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("sources kept", str(summary["kept"]))
    table.add_row("sources dropped", str(summary["dropped"]))
    for code, n in summary["by_reason"].items():
        table.add_row(f"  dropped: {code}", str(n))
    for code, n in summary.get("notes_by_reason", {}).items():
        table.add_row(f"  kept, with {code}", str(n))
    table.add_row("images written", str(summary["images"]))
    table.add_row("clips written", str(summary["clips"]))
    console.print(table)
    check = summary.get("size_check", {})
    if check.get("message"):
        colour = {"below_minimum": "red", "enough": "yellow", "recommended": "green"}.get(check.get("status"), "")
        label = check.get("status", "").replace("_", " ")
        console.print(f"size vs profile: [{colour or 'default'}]{label}[/]: {check['message']}" if colour
                      else f"size vs profile: {check['message']}", markup=True)
