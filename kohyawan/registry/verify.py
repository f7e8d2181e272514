"""``registry verify``: every file the index names exists with its recorded size and sha256.

Also reports, without failing, what the index does not explain: LoRA files nobody recorded (a crash
between rename and index write) and temp files left by an interrupted export or deploy.
"""

from __future__ import annotations

from typing import Any

from kohyawan.registry import store


def verify(reg: store.Registry, *, name: str | None = None, client=None, kind=None, quick: bool = False) -> dict[str, Any]:
    """``quick`` checks presence and size only (no reading of the files: fast on a slow network drive)."""
    index = reg.read_index()
    models = [store.find_model(index, name, client=client, kind=kind)] if name else list(index["models"].values())
    problems, checked, known = [], 0, set()
    for m in models:
        for v in m["versions"]:
            for f in v.get("files", []):
                known.add(f["path"])
                path = reg.path_of(f["path"])
                checked += 1
                where = {"model": f"{m['kind']}/{m['client']}/{m['name']}", "version": v["version"], "file": f["path"]}
                if not path.is_file():
                    problems.append({**where, "problem": "missing"})
                elif path.stat().st_size != f["bytes"]:
                    problems.append({**where, "problem": f"size {path.stat().st_size} != recorded {f['bytes']}"})
                elif not quick and store.sha256_file(path) != f["sha256"]:
                    problems.append({**where, "problem": "sha256 differs from the index (corrupted or replaced)"})
        note = reg.notes_path(m)
        if not note.is_file():
            problems.append({"model": f"{m['kind']}/{m['client']}/{m['name']}", "version": None,
                             "file": str(note.relative_to(reg.root)), "problem": "training notes missing"})
    strays = []
    if not name:
        for p in sorted(reg.root.rglob("*")):
            rel = p.relative_to(reg.root).as_posix()
            if p.is_file() and p.name.startswith(store.TMP_PREFIX):
                strays.append({"file": rel, "what": "temp file: a write in progress, or left by an interrupted one"})
            elif p.is_file() and p.suffix == ".safetensors" and rel not in known:
                strays.append({"file": rel, "what": "LoRA file the index does not know"})
    return {"registry": str(reg.root), "checked": checked, "hashed": not quick, "ok": not problems, "problems": problems,
            "untracked": strays}
