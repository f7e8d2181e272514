"""The batch's persistent state: ``queue.sqlite`` in the batch folder, one row per job.

States: ``pending`` -> ``running`` -> ``succeeded`` | ``failed``. A row remembers its run folder, so a job
interrupted halfway is continued (``kohyawan runs resume``) rather than restarted, and ``tries`` counts
fresh runs, so a retried job gets a new run folder and the failed run stays as evidence. ``events`` is an
append-only log (start, end, export, ...) with wall-clock times: the scheduling-overhead figures come from it.

Only the batch driver writes the database (SLURM tasks write run folders; the driver merges them), and a
lock file keeps a second driver out, so SQLite's WAL mode is safe even with the batch folder on shared
storage mounted on one submit host.
See docs/architecture.md.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from kohyawan.errors import BadInput
from kohyawan.files import locks

DB_NAME = "queue.sqlite"
LOCK = "batch.lock"
STATES = ("pending", "running", "succeeded", "failed")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,
    idx INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed')),
    fingerprint TEXT NOT NULL,
    definition TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    run_id TEXT, run_dir TEXT, run_status TEXT,
    gpu TEXT, pid INTEGER, pid_started REAL,
    queued_at REAL, started_at REAL, ended_at REAL,
    exit_code INTEGER, reason TEXT,
    export_state TEXT NOT NULL DEFAULT 'none',
    exported_version INTEGER, export_detail TEXT,
    slurm_job TEXT, slurm_state TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL, key TEXT, event TEXT NOT NULL, detail TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
COLUMNS = ("key", "idx", "state", "fingerprint", "definition", "attempts", "tries", "run_id", "run_dir",
           "run_status", "gpu", "pid", "pid_started", "queued_at", "started_at", "ended_at", "exit_code", "reason",
           "export_state", "exported_version", "export_detail", "slurm_job", "slurm_state")


class Queue:
    def __init__(self, folder: Path, *, readonly: bool = False):
        self.folder = Path(folder)
        path = self.folder / DB_NAME
        if readonly:
            if not path.is_file():
                raise BadInput(f"{folder} is not a batch folder (no {DB_NAME})")
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None)
            if not self.db.execute("SELECT name FROM sqlite_master WHERE name = 'jobs'").fetchone():
                self.db.close()
                raise BadInput(f"{folder}: the batch queue is being created; try again in a moment")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    # --- meta -------------------------------------------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        with self.db:
            for k, v in values.items():
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, json.dumps(v, default=str)))

    def meta(self) -> dict[str, Any]:
        return {r["key"]: json.loads(r["value"]) for r in self.db.execute("SELECT key, value FROM meta")}

    # --- rows -------------------------------------------------------------------------------------------
    def sync(self, jobs: Iterable[Any]) -> list[str]:
        """Add new jobs as pending; refuse a finished or running job whose definition changed. Returns keys added."""
        added = []
        with self.db:
            for job in jobs:
                row = self.get(job.key)
                definition = json.dumps(asdict(job), sort_keys=True, default=str)
                if row is None:
                    self.db.execute("INSERT INTO jobs (key, idx, state, fingerprint, definition, queued_at) "
                                    "VALUES (?, ?, 'pending', ?, ?, ?)",
                                    (job.key, job.index, job.fingerprint, definition, time.time()))
                    added.append(job.key)
                elif row["fingerprint"] != job.fingerprint:
                    if row["state"] in ("succeeded", "running"):
                        raise BadInput(f"job {job.key} changed in the manifest since it {row['state']} in this batch "
                                       f"folder; use a new --dir for the new definition")
                    # A pending or failed job may be fixed: its next run starts fresh under the new definition.
                    self.db.execute("UPDATE jobs SET fingerprint = ?, idx = ?, definition = ?, run_dir = NULL, "
                                    "run_status = NULL WHERE key = ?",
                                    (job.fingerprint, job.index, definition, job.key))
        return added

    def get(self, key: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()

    def rows(self, state: str | None = None) -> list[sqlite3.Row]:
        if state:
            return list(self.db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY idx", (state,)))
        return list(self.db.execute("SELECT * FROM jobs ORDER BY idx"))

    def update(self, key: str, **fields: Any) -> None:
        bad = set(fields) - set(COLUMNS)
        if bad:
            raise KeyError(f"unknown queue column(s): {', '.join(sorted(bad))}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.db:
            self.db.execute(f"UPDATE jobs SET {sets} WHERE key = ?", (*fields.values(), key))

    def event(self, key: str | None, event: str, detail: Any = None, t: float | None = None) -> None:
        with self.db:
            self.db.execute("INSERT INTO events (t, key, event, detail) VALUES (?, ?, ?, ?)",
                            (time.time() if t is None else t, key, event,
                             None if detail is None else json.dumps(detail, default=str)))

    def events(self) -> list[sqlite3.Row]:
        return list(self.db.execute("SELECT * FROM events ORDER BY id"))

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for r in self.db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            counts[r["state"]] = r["n"]
        return counts

    # --- transitions ------------------------------------------------------------------------------------
    def retry_failed(self) -> list[str]:
        """Failed jobs back to pending. A job whose run succeeded but whose export failed keeps its run."""
        keys = [r["key"] for r in self.rows("failed")]
        with self.db:
            for key in keys:
                row = self.get(key)
                keep_run = row["run_status"] == "succeeded"
                self.db.execute("UPDATE jobs SET state = 'pending', reason = NULL, exit_code = NULL, "
                                "export_state = CASE WHEN export_state = 'failed' THEN 'none' ELSE export_state END, "
                                "run_dir = CASE WHEN ? THEN run_dir ELSE NULL END, "
                                "run_status = CASE WHEN ? THEN run_status ELSE NULL END WHERE key = ?",
                                (keep_run, keep_run, key))
        for key in keys:
            self.event(key, "retry")
        return keys


class BatchLock:
    """One driver per batch folder: a second ``kohyawan batch`` on the same folder is refused, not raced."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self._lock = locks.FileLock(self.path)

    def __enter__(self) -> "BatchLock":
        if not self._lock.try_acquire():
            holder = self._lock.recorded()
            self._lock.release()
            raise BadInput(f"another kohyawan batch (pid {holder or '?'}) is driving {self.path.parent}") from None
        self._lock.record_pid()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()


def is_driven(folder: Path) -> int | None:
    """The pid of the driver holding the folder's lock (-1 when it wrote none), or None."""
    return locks.holder(Path(folder) / LOCK)
