"""training_notes.md, rendered from a model's index record (pure: same record -> same bytes).

The file is regenerated inside every registry transaction, so it never drifts from the index; hand edits
are overwritten (add notes with ``kohyawan registry notes NAME --add``). Per version, newest first: date,
files, source run and checkpoint, dataset, hyperparameters, changes from the previous version (an automatic
diff of hyperparameters and dataset), test results, notes and the status history.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

_MISSING = object()


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Sorted (key, old, new) for every key whose value differs; a missing side is ``None``-free _MISSING."""
    rows = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if a != b:
            rows.append((key, a, b))
    return rows


def _val(value: Any) -> str:
    if value is _MISSING:
        return "(unset)"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _cell(value: Any) -> str:
    return _val(value).replace("|", "\\|").replace("\n", " ")


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _dataset_view(v: Mapping[str, Any]) -> dict[str, Any]:
    return {k: val for k, val in (v.get("dataset") or {}).items() if val is not None}


def changes(prev: Mapping[str, Any], v: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, key, before, after) for each thing version ``v`` changed against ``prev``: the rows of the notes'
    "Changes from" section (and of the dashboard's)."""
    out = []
    for title, old, new in (
        ("hyperparameter", prev.get("hyperparameters") or {}, v.get("hyperparameters") or {}),
        # hash_source explains a hash; the hash line itself already shows the change
        ("dataset", {k: x for k, x in _dataset_view(prev).items() if k != "hash_source"},
         {k: x for k, x in _dataset_view(v).items() if k != "hash_source"}),
    ):
        out += [(title, key, _val(a), _val(b)) for key, a, b in diff(old, new)]
    out += [("run", key, _val(prev.get(key)), _val(v.get(key)))
            for key in ("task", "profile", "variant", "expert") if prev.get(key) != v.get(key)]
    return out


def _lines_for_changes(prev: Mapping[str, Any] | None, v: Mapping[str, Any]) -> list[str]:
    if prev is None:
        return ["First version."]
    out = [f"- {what} `{key}`: {a} → {b}" if what != "run" else f"- {key}: {a} → {b}"
           for what, key, a, b in changes(prev, v)]
    return out or [f"No changes in hyperparameters or dataset since v{prev['version']}."]


def _note_lines(notes: Iterable[Mapping[str, Any]]) -> list[str]:
    lines = []
    for n in notes:
        text = str(n["text"]).replace("\n", "\n  ")
        lines.append(f"- {n['at'][:10]} {n['user']}: {text}")
    return lines


def _version_section(model: Mapping[str, Any], v: Mapping[str, Any], prev: Mapping[str, Any] | None) -> list[str]:
    lines = [f"## v{v['version']} — {v['created'][:10]} — {v['status']}", ""]
    lines += _file_lines(v) + [_source_line(v.get("source") or {}), _task_line(v), _dataset_line(v)]
    lines += ["", "### Hyperparameters", ""]
    lines += _table("key | value", v.get("hyperparameters") or {}) or ["Not recorded."]
    title = "### Changes from " + (f"v{prev['version']}" if prev else "the previous version")
    lines += ["", title, ""] + _lines_for_changes(prev, v)
    lines += ["", "### Test results", ""]
    lines += _table("test | result", v.get("scores") or {}) or [
        f"None recorded yet (`kohyawan registry notes {model['name']} --version v{v['version']} --score likeness=8`)."]
    if v.get("notes"):
        lines += ["", "### Notes", ""] + _note_lines(v["notes"])
    lines += ["", "### Status", ""] + _status_lines(model, v)
    lines.append("")
    return lines


_EXPERT_WORDS = {"both": "both experts", "high": "high-noise expert", "low": "low-noise expert"}


def _file_lines(v: Mapping[str, Any]) -> list[str]:
    lines = []
    for f in v.get("files", []):
        expert = _EXPERT_WORDS.get(f.get("expert"), f.get("expert"))
        lines.append(f"- **File**: `{f['path'].rsplit('/', 1)[-1]}` ({expert}, {f.get('dtype') or '?'}, "
                     f"{_size(f.get('bytes'))}, sha256 `{f['sha256'][:16]}`)")
    return lines


def _source_line(src: Mapping[str, Any]) -> str:
    """The run (or file) a version came from, the step and how far into training it is, and how it was chosen."""
    where = f"run `{src['run_id']}`" if src.get("run_id") else f"`{src.get('origin', '?')}`"
    step = ""
    if src.get("step") is not None:
        step = f", step {src['step']}"
        if src.get("total_steps"):
            step += f" of {src['total_steps']} ({100 * src['step'] / src['total_steps']:.0f} %)"
    choice = f", chosen by `{src['choice']}`" if src.get("choice") else ""
    return f"- **Source**: {where}{step}{choice}"


def _task_line(v: Mapping[str, Any]) -> str:
    profile = (v.get("profile") or "?") + (f" ({v['variant']})" if v.get("variant") else "")
    return f"- **Task**: {v.get('task') or '?'}; **profile**: {profile}; **exported by** {v.get('user')}"


def _dataset_line(v: Mapping[str, Any]) -> str:
    ds = _dataset_view(v)
    if ds:
        return "- **Dataset**: " + ", ".join(f"{k} `{_val(val)}`" for k, val in sorted(ds.items()))
    return "- **Dataset**: not recorded (exported from a file without kohyawan run data)"


def _table(header: str, values: Mapping[str, Any]) -> list[str]:
    """A two-column markdown table sorted by key; empty when there is nothing to show."""
    if not values:
        return []
    return [f"| {header} |", "|---|---|"] + [f"| {_cell(k)} | {_cell(values[k])} |" for k in sorted(values)]


def _status_lines(model: Mapping[str, Any], v: Mapping[str, Any]) -> list[str]:
    """The version's status history (scores have their own section)."""
    lines = []
    for ev in model.get("events", []):
        if ev["version"] != v["version"] or ev["action"] == "score":
            continue
        why = f" ({ev['reason']})" if ev.get("reason") else ""
        lines.append(f"- {ev['at']} {ev['user']}: {ev['action']}, {ev['from'] or 'new'} → {ev['to']}{why}")
    return lines


def render(model: Mapping[str, Any]) -> str:
    versions = sorted(model["versions"], key=lambda v: v["version"])
    current = next((v for v in versions if v["status"] == "current"), None)
    lines = [
        f"# Training notes: {model['name']} ({model['kind']}, client {model['client']})",
        "",
        "Generated by kohyawan from the registry index on every change; edits here are overwritten.",
        f"Add notes with `kohyawan registry notes {model['name']} --add \"...\"`.",
        "",
    ]
    if current:
        files = ", ".join(f"`{f['path'].rsplit('/', 1)[-1]}`" for f in current.get("files", []))
        lines.append(f"**Current (production)**: v{current['version']} — {files}")
    else:
        lines.append("**Current (production)**: none yet (promote a tested version)")
    lines += ["", "| version | date | status | task | steps | scores |", "|---|---|---|---|---|---|"]
    for v in reversed(versions):
        src = v.get("source") or {}
        scores = ", ".join(f"{k}={_val(val)}" for k, val in sorted((v.get("scores") or {}).items())) or "-"
        lines.append(f"| v{v['version']} | {v['created'][:10]} | {v['status']} | {v.get('task') or '?'} | "
                     f"{src.get('step') if src.get('step') is not None else '?'} | {_cell(scores)} |")
    lines.append("")
    if model.get("notes"):
        lines += ["## Model notes", ""] + _note_lines(model["notes"]) + [""]
    by_number = {v["version"]: v for v in versions}
    for v in reversed(versions):
        prev = max((n for n in by_number if n < v["version"]), default=None)
        lines += _version_section(model, v, by_number.get(prev) if prev else None)
    return "\n".join(lines).rstrip("\n") + "\n"
