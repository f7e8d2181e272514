"""The comparison tables of ``kohyawan sweep`` and ``kohyawan batch status``, as header + rows of text: the
terminal prints them with rich and ``kohyawan ui`` shows them as HTML, from this one definition."""

from __future__ import annotations

from typing import Any

SWEEP_COLUMNS = ("variant", "state", "GPU", "last loss", "best (step)", "time", "VRAM", "att.", "candidates")
BATCH_COLUMNS = ("job", "state", "GPU/task", "loss last/best", "time", "VRAM", "att.", "export")


def f(value: Any, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def sweep_rows(doc: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in doc["variants"]:
        best = "-" if r["best_loss"] is None else f"{r['best_loss']:.3f} ({r['best_step']})"
        rows.append([r["variant"], r["state"], r["gpu"] or "-", f(r["final_loss"]), best,
                     f(r["seconds"], "{:.0f}s"), f(r["peak_vram_gb"], "{:.1f}G"),
                     str(r["attempts"]) + (f" (+{len(r['rungs'])} rungs)" if r["rungs"] else ""),
                     ", ".join(str(s) for s in r["candidates"]) or "-"])
    return rows


def batch_rows(doc: dict[str, Any]) -> list[list[str]]:
    rows = []
    for j in doc["jobs"]:
        run = j["run"]
        export = f"v{j['exported_version']}" if j["exported_version"] else j["export_state"]
        tries = f" (try {j['tries']})" if (j["tries"] or 0) > 1 else ""
        rows.append([j["key"], j["state"] + tries, j["gpu"] or j.get("slurm_job") or "-",
                     f"{f(run['final_loss'])}/{f(run['best_loss'])}", f(run["seconds"] or j["seconds"], "{:.0f}s"),
                     f(run["peak_vram_gb"], "{:.1f}G"), str(run["attempts"]), export or ""])
    return rows
