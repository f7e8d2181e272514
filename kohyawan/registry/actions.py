"""The registry's listing and status changes as library calls (``registry list``, ``promote``,
``deprecate``, ``rollback``): the CLI and ``kohyawan ui`` both go through here, so both check ``roles.toml``
for the same acting user (``store.current_user()``) and write under the same lock (``Registry.transaction``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STATUS_ACTIONS = ("promote", "deprecate")


def list_models(index: dict[str, Any], *, kind: str | None = None, client: str | None = None) -> list[dict[str, Any]]:
    """One row per model: versions, current and latest version, deployments (``registry list``)."""
    rows = []
    for key, m in sorted(index["models"].items()):
        if (kind and m["kind"] != kind) or (client and m["client"] != client):
            continue
        cur = next((v for v in m["versions"] if v["status"] == "current"), None)
        last = m["versions"][-1] if m["versions"] else None
        rows.append({"model": key, "name": m["name"], "kind": m["kind"], "client": m["client"],
                     "versions": len(m["versions"]), "current": cur["version"] if cur else None,
                     "latest": last["version"] if last else None, "latest_status": last["status"] if last else None,
                     "latest_date": last["created"] if last else None,
                     "deployments": len(m.get("deployments", []))})
    return rows


def from_rehearsal(version: dict[str, Any]) -> bool:
    """Whether a version was exported from a rehearsal (kohyawan's simulated trainer: no training happened)."""
    return bool((version.get("dataset") or {}).get("rehearsal"))


def change_status(root: Path, action: str, name: str, version: str | int, *, reason: str | None = None,
                  client: str | None = None, kind: str | None = None, user: str | None = None,
                  force: bool = False) -> dict[str, Any]:
    """promote / deprecate one version (checked against roles.toml); returns the new statuses. Promoting a
    rehearsal's LoRA to production is refused unless ``force`` (the result then says ``rehearsal``)."""
    from kohyawan.errors import BadInput
    from kohyawan.registry import naming, roles, store, versions

    if action not in STATUS_ACTIONS:
        raise ValueError(action)
    reg = store.Registry.open(Path(root))
    user = user or store.current_user()
    roles.check(reg.root, action, user)
    n = naming.parse_version(str(version))
    with reg.transaction() as index:
        m = store.find_model(index, name, client=client, kind=kind)
        key = f"{m['kind']}/{m['client']}/{m['name']}"
        new = getattr(versions, action)(m, n, at=store.now_iso(), user=user, reason=reason)
        rehearsal = action == "promote" and from_rehearsal(next(v for v in new["versions"] if v["version"] == n))
        if rehearsal and not force:
            raise BadInput(f"{key} v{n} comes from a rehearsal run (kohyawan's simulated trainer: no training "
                           "happened); pass --force to make it the production version anyway")
        index["models"][key] = new
    cur = versions.current_of(new)
    result = {"model": key, "action": action, "version": n, "current": cur["version"] if cur else None,
              "statuses": {f"v{v['version']}": v["status"] for v in new["versions"]}, "user": user}
    return {**result, "rehearsal": True} if rehearsal else result


def rollback(root: Path, name: str, *, reason: str, client: str | None = None, kind: str | None = None,
             user: str | None = None) -> dict[str, Any]:
    """Make the previous good version current again (checked against roles.toml)."""
    from kohyawan.registry import roles, store, versions

    reg = store.Registry.open(Path(root))
    user = user or store.current_user()
    roles.check(reg.root, "rollback", user)
    with reg.transaction() as index:
        m = store.find_model(index, name, client=client, kind=kind)
        key = f"{m['kind']}/{m['client']}/{m['name']}"
        new, old, to = versions.rollback(m, at=store.now_iso(), user=user, reason=reason)
        index["models"][key] = new
    return {"model": key, "action": "rollback", "from": old, "to": to, "current": to, "reason": reason, "user": user}


def status_line(result: dict[str, Any]) -> str:
    """The one line the CLI prints after a status change."""
    if result["action"] == "rollback":
        return f"{result['model']}: rolled back from v{result['from']} to v{result['to']} ({result['reason']})"
    cur = result["current"]
    return f"{result['model']}: v{result['version']} {result['action']}d; current is " + (f"v{cur}" if cur else "none")
