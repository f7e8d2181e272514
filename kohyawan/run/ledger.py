"""The run folder: ``run.json`` (rewritten atomically after every change), ``metrics.jsonl``, and one
folder per attempt with its ``console.log`` and rendered configs.

run.json, version 1 (stable: add fields, never rename): ``version, id, status ("running" | "succeeded" |
"failed" | "stopped"), profile, task, total_steps, attempts[{n, rung, changes, outcome, reason,
resumed_from, steps: [first, last], exit_code, peak_vram_gb, peak_ram_gb}], checkpoints[{path, step,
epoch, attempt, bytes, sha256}], final`` plus the extra fields described in docs/architecture.md ("A run").

Paths: every path run.json records is absolute (``Ledger`` keeps its folder absolute, and everything it
records is built from it or from the trainer's absolute output folder), so it means the same from any
working directory. ``locate`` reads any recorded path back, older records included: a relative one is
taken against the run folder, or (recorded relative to the working directory of the time) by what
follows the run folder's own name; an absolute one that no longer exists is looked for the same way
under the run folder (a run folder moved or copied elsewhere).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from kohyawan.files import atomic
from kohyawan.files.digest import sha256_file

VERSION = 1
STATUSES = ("running", "succeeded", "failed", "stopped")


# run.json's lists of records, and the fields of theirs that hold a path (stage saves and the final: below)
_PATH_FIELDS = {"checkpoints": ("path", "trainer_path"), "attempts": ("console_log", "resumed_from"),
                "stages": ("final", "log")}


def locate(run_dir: Path, recorded: str | os.PathLike) -> Path:
    """The file a path recorded in ``run_dir``'s run.json names, from any working directory (see the
    module docstring); a path that cannot be found is returned as best understood."""
    run_dir = Path(os.path.abspath(run_dir))
    path = Path(recorded)
    first = path if path.is_absolute() else run_dir / path
    rerooted = [run_dir.joinpath(*path.parts[i + 1:]) for i in reversed(range(len(path.parts)))
                if path.parts[i] == run_dir.name]
    for candidate in [first, *rerooted]:
        if candidate.exists():
            return candidate
    return first if path.is_absolute() or not rerooted else rerooted[0]


def recorded_paths(data: dict) -> list[tuple[dict, str]]:
    """(record, field) of every path a run.json document holds: checkpoints, attempts' logs and resume
    points, stages' final files, logs and saves, and the final LoRA(s)."""
    found: list[tuple[dict, str]] = []
    for section, fields in _PATH_FIELDS.items():
        for record in data.get(section) or []:
            found += [(record, f) for f in fields if isinstance(record.get(f), str)]
    for stage in data.get("stages") or []:
        for save in stage.get("saves") or []:
            found += [(save, f) for f in ("state_dir", "weights") if isinstance(save.get(f), str)]
    final = data.get("final")
    if isinstance(final, dict):
        for record in [final, *(final.get("outputs") or [])]:
            if isinstance(record, dict) and isinstance(record.get("path"), str):
                found.append((record, "path"))
    return found


class Ledger:
    def __init__(self, run_dir: Path, data: dict[str, Any]):
        # absolute once and for all: every path recorded below is built from it
        self.dir = Path(os.path.abspath(run_dir))
        self.data = data

    @classmethod
    def create(cls, run_dir: Path, *, run_id: str, profile: str, task: str, total_steps: int | None,
               **extra: Any) -> "Ledger":
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        data = {"version": VERSION, "id": run_id, "status": "running", "profile": profile, "task": task,
                "total_steps": total_steps, "attempts": [], "checkpoints": [], "final": None,
                "created": _now(), "updated": _now(), **extra}
        led = cls(run_dir, data)
        led.save()
        return led

    @classmethod
    def load(cls, run_dir: Path) -> "Ledger":
        run_dir = Path(run_dir)
        return cls(run_dir, json.loads((run_dir / "run.json").read_text(encoding="utf-8")))

    @property
    def path(self) -> Path:
        return self.dir / "run.json"

    def absolutize(self) -> bool:
        """Rewrite the relative paths of an older run.json as absolute ones (``locate``); True when one
        changed. The caller saves."""
        changed = False
        for record, key in recorded_paths(self.data):
            if not os.path.isabs(record[key]):
                record[key] = str(locate(self.dir, record[key]))
                changed = True
        return changed

    def save(self) -> None:
        self.data["updated"] = _now()
        atomic.write_text(self.path, json.dumps(self.data, indent=2, ensure_ascii=False, default=str) + "\n")

    def set(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    # --- attempts -------------------------------------------------------------------------------------
    def attempt_dir(self, n: int) -> Path:
        d = self.dir / "attempts" / f"{n:02d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def start_attempt(self, *, rung: str | None, changes: dict, resumed_from: str | None, first_step: int,
                      **extra: Any) -> dict:
        att = {"n": len(self.data["attempts"]) + 1, "rung": rung, "changes": changes, "outcome": None,
               "reason": None, "resumed_from": resumed_from, "steps": [first_step, first_step], "exit_code": None,
               "peak_vram_gb": None, "peak_ram_gb": None, "started": _now(), "ended": None, **extra}
        self.data["attempts"].append(att)
        self.save()
        return att

    def update_attempt(self, **fields: Any) -> None:
        self.data["attempts"][-1].update(fields)
        self.save()

    def end_attempt(self, *, outcome: str, reason: str, exit_code: int | None, **fields: Any) -> None:
        self.update_attempt(outcome=outcome, reason=reason, exit_code=exit_code, ended=_now(), **fields)

    # --- outputs --------------------------------------------------------------------------------------
    def add_checkpoint(self, path: Path, *, step: int, epoch: int | None, attempt: int, **extra: Any) -> dict:
        path = Path(path)
        entry = {"path": str(path), "step": step, "epoch": epoch, "attempt": attempt,
                 "bytes": path.stat().st_size if path.exists() else None,
                 "sha256": sha256_file(path) if path.exists() else None, **extra}
        self.data["checkpoints"] = [c for c in self.data["checkpoints"] if c["path"] != str(path)] + [entry]
        self.save()
        return entry

    def metric(self, record: dict) -> None:
        with open(self.dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def last_step(self, attempt: int) -> int | None:
        """The last absolute step attempt ``attempt`` is known to have reached: its newest metric or
        checkpoint (what survives a kohyawan killed mid-attempt)."""
        steps = [m.get("step") for m in read_metrics(self.dir) if m.get("attempt") == attempt]
        steps += [c.get("step") for c in self.data.get("checkpoints", []) if c.get("attempt") == attempt]
        return max((s for s in steps if isinstance(s, int)), default=None)


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl's records; a half-written last line (a killed writer) is left out."""
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
