"""Pure status changes of a model's versions: testing -> current -> deprecated, and back by rollback.

Each function takes a model record (as stored in the index) and returns a changed deep copy; nothing here
reads or writes files. Every change is appended to ``model["events"]`` (who, when, what, why), which is
both the audit trail shown in training_notes.md and what ``rollback`` walks to find the previous good one.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from kohyawan.errors import BadInput

STATUSES = ("testing", "current", "deprecated")


def _find(model: dict[str, Any], n: int) -> dict[str, Any]:
    for v in model["versions"]:
        if v["version"] == n:
            return v
    have = ", ".join(f"v{v['version']}" for v in model["versions"]) or "none"
    raise BadInput(f"{model['name']} has no version v{n} (versions: {have})")


def current_of(model: Mapping[str, Any]) -> dict[str, Any] | None:
    return next((v for v in model["versions"] if v["status"] == "current"), None)


def _event(model, *, at, user, action, version, old, new, reason=None):
    model.setdefault("events", []).append(
        {"at": at, "user": user, "action": action, "version": version, "from": old, "to": new, "reason": reason}
    )


def _set(model, v, new, *, at, user, action, reason=None):
    old = v["status"]
    v["status"] = new
    _event(model, at=at, user=user, action=action, version=v["version"], old=old, new=new, reason=reason)


def add_version(model: dict[str, Any], record: dict[str, Any], *, at: str, user: str) -> tuple[dict[str, Any], int]:
    """Append a new version (status testing) numbered one above the highest ever used."""
    model = copy.deepcopy(model)
    n = max((v["version"] for v in model["versions"]), default=0) + 1
    record = {**copy.deepcopy(record), "version": n, "status": "testing", "created": at, "user": user}
    record.setdefault("notes", [])
    record.setdefault("scores", {})
    model["versions"].append(record)
    _event(model, at=at, user=user, action="export", version=n, old=None, new="testing")
    return model, n


def promote(model: dict[str, Any], n: int, *, at: str, user: str, reason: str | None = None) -> dict[str, Any]:
    """Make vN current; the version that was current becomes deprecated."""
    model = copy.deepcopy(model)
    target = _find(model, n)
    if target["status"] == "current":
        raise BadInput(f"{model['name']} v{n} is already current")
    old = current_of(model)
    if old is not None:
        _set(model, old, "deprecated", at=at, user=user, action="promote", reason=f"replaced by v{n}")
    target.pop("rolled_back", None)  # an admin promoting it on purpose overrides an earlier rollback
    _set(model, target, "current", at=at, user=user, action="promote", reason=reason)
    return model


def deprecate(model: dict[str, Any], n: int, *, at: str, user: str, reason: str | None = None) -> dict[str, Any]:
    model = copy.deepcopy(model)
    target = _find(model, n)
    if target["status"] == "deprecated":
        raise BadInput(f"{model['name']} v{n} is already deprecated")
    _set(model, target, "deprecated", at=at, user=user, action="deprecate", reason=reason)
    return model


def rollback_target(model: Mapping[str, Any]) -> int | None:
    """The version that was current most recently before the present one and was not itself rolled back."""
    cur = current_of(model)
    bad = {v["version"] for v in model["versions"] if v.get("rolled_back")}
    for ev in reversed(model.get("events", [])):
        if ev["to"] != "current":
            continue
        n = ev["version"]
        if (cur is not None and n == cur["version"]) or n in bad:
            continue
        if any(v["version"] == n for v in model["versions"]):
            return n
    return None


def rollback(model: dict[str, Any], *, at: str, user: str, reason: str) -> tuple[dict[str, Any], int, int]:
    """Current -> deprecated (marked rolled back, with the reason); previous good -> current.

    Returns (model, from_version, to_version).
    """
    if not reason or not reason.strip():
        raise BadInput("rollback needs --reason: say what is wrong with the current version")
    model = copy.deepcopy(model)
    cur = current_of(model)
    if cur is None:
        raise BadInput(f"{model['name']} has no current version to roll back from; use promote")
    target = rollback_target(model)
    if target is None:
        raise BadInput(
            f"{model['name']} has no earlier version that was ever current; deprecate v{cur['version']} "
            "or promote a tested version instead"
        )
    cur["rolled_back"] = {"at": at, "user": user, "reason": reason}
    _set(model, cur, "deprecated", at=at, user=user, action="rollback", reason=reason)
    _set(model, _find(model, target), "current", at=at, user=user, action="rollback",
         reason=f"rolled back from v{cur['version']}: {reason}")
    return model, cur["version"], target


def add_note(model: dict[str, Any], n: int | None, text: str, *, at: str, user: str) -> dict[str, Any]:
    if not text or not text.strip():
        raise BadInput("the note is empty")
    model = copy.deepcopy(model)
    target = model if n is None else _find(model, n)
    target.setdefault("notes", []).append({"at": at, "user": user, "text": text.strip()})
    return model


def add_scores(model: dict[str, Any], n: int, scores: Mapping[str, Any], *, at: str, user: str) -> dict[str, Any]:
    model = copy.deepcopy(model)
    target = _find(model, n)
    target.setdefault("scores", {}).update(scores)
    _event(model, at=at, user=user, action="score", version=n, old=target["status"], new=target["status"],
           reason=", ".join(f"{k}={v}" for k, v in scores.items()))
    return model


def parse_scores(items) -> dict[str, Any]:
    """['likeness=8.5', 'motion=ok'] -> {'likeness': 8.5, 'motion': 'ok'}."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadInput(f"score {item!r} must look like key=value (e.g. likeness=8.5)")
        value = value.strip()
        try:
            out[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key] = value
        if isinstance(out[key], float) and out[key] != out[key]:  # NaN is not a score
            out[key] = value
    return out
