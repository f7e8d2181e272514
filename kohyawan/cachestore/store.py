"""The cache store as a whole: its folders, what they hold, which runs used them, and pruning.

A store is a folder of cache folders (``RUNS_DIR/.cache`` unless the project file or ``--cache-dir`` says
otherwise). Each cache folder holds musubi-tuner's cache files, its key document (``.kohyawan-cache.json``:
what its files depend on), one completion marker per stage, its ``.lock`` and ``uses/``: one small file
per run that used it (run folder, run id, first and last use), written by that run alone. A run still
refers to a folder while its run folder exists and its run.json lists the folder under ``caches``; pruning
removes only folders no run refers to and nobody holds, and moves each away (``.pruning-*``) before
deleting it, so a half-deleted folder never looks like a cache. See docs/architecture.md ("Caches").
"""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from kohyawan.cachestore.folder import KEY_DOCUMENT, MARKERS, STAMP, utc_stamp
from kohyawan.cachestore.keys import CacheFolder
from kohyawan.cachestore.lease import LOCK_NAME, Leases
from kohyawan.files import atomic, jsonfile, locks

USES = "uses"
PRUNING = ".pruning-"


def _now() -> str:
    return utc_stamp()


def describe(cf: CacheFolder) -> None:
    """Write the folder's key document, once (what ``cache list`` shows about it)."""
    path = cf.path / KEY_DOCUMENT
    doc = {k: v for k, v in cf.document().items() if k != "dataset"}
    if jsonfile.read_object(path) != doc:
        atomic.write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def record_use(folder: Path, run_dir: Path, run_id: str) -> None:
    """This run used ``folder`` now (its own file under ``uses/``: no other writer)."""
    name = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16] + ".json"
    path = folder / USES / name
    old = jsonfile.read_object(path) or {}
    atomic.write_text(path, json.dumps({"run_dir": str(Path(run_dir).resolve()), "run_id": run_id,
                                        "first_used": old.get("first_used") or _now(), "last_used": _now()}) + "\n")


def refers(run_dir: str, folder: Path) -> bool:
    """Does the run in ``run_dir`` still exist and list ``folder`` among its caches?"""
    data = jsonfile.read_object(Path(run_dir) / "run.json")
    if data is None:
        return False
    here = os.path.realpath(folder)      # the run may have named the store through a symlink, or another cwd
    return any(os.path.realpath(str(c.get("cache_directory"))) == here
               for c in data.get("caches") or [] if isinstance(c, dict))


@dataclass
class FolderInfo:
    path: Path
    bytes: int
    files: int
    key: Mapping[str, Any] | None
    items: dict[str, int]                 # stage -> items its marker vouches for
    runs: list[dict] = field(default_factory=list)
    last_used: str | None = None
    in_use: bool = False

    @property
    def referred(self) -> bool:
        return any(r["refers"] for r in self.runs)

    def document(self) -> dict[str, Any]:
        key = self.key or {}
        return {"folder": str(self.path), "bytes": self.bytes, "files": self.files, "kind": key.get("kind"),
                "media": key.get("media"), "latent": key.get("latent"), "text": key.get("text"),
                "latent_items": self.items.get("cache_latents", 0), "text_items": self.items.get("cache_text_encoder", 0),
                "runs": self.runs, "referred": self.referred, "last_used": self.last_used, "in_use": self.in_use}


def inspect(folder: Path) -> FolderInfo:
    size = files = 0
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):
            size += entry.stat().st_size
            files += 1
    items = {}
    for stage, name in MARKERS.items():
        doc = jsonfile.read_object(folder / name)
        items[stage] = len(doc.get("items") or {}) if isinstance(doc, dict) else 0
    runs = []
    for path in sorted((folder / USES).glob("*.json")):
        use = jsonfile.read_object(path)
        if isinstance(use, dict) and use.get("run_dir"):
            runs.append({**use, "refers": refers(use["run_dir"], folder)})
    runs.sort(key=lambda r: (str(r.get("first_used")), str(r.get("run_id"))))
    stamps = [r["last_used"] for r in runs if r.get("last_used")]
    last = max(stamps) if stamps else utc_stamp(folder.stat().st_mtime)
    return FolderInfo(folder, size, files, jsonfile.read_object(folder / KEY_DOCUMENT), items, runs, last,
                      locks.in_use(folder / LOCK_NAME))


def folders(store: Path) -> list[FolderInfo]:
    store = Path(store)
    if not store.is_dir():
        return []
    return [inspect(Path(e.path)) for e in sorted(os.scandir(store), key=lambda e: e.name)
            if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]


def _age_s(stamp: str | None, now: float) -> float:
    try:
        return now - calendar.timegm(time.strptime(stamp, STAMP))
    except (TypeError, ValueError):
        return float("inf")


def prunable(store: Path, older_than_s: float | None = None, now: float | None = None) -> list[FolderInfo]:
    """Folders no run refers to (and, with ``older_than_s``, last used longer ago than that)."""
    now = time.time() if now is None else now
    return [f for f in folders(store) if not f.referred and not f.in_use
            and (older_than_s is None or _age_s(f.last_used, now) > older_than_s)]


def remove(info: FolderInfo) -> bool:
    """Delete one folder if nobody holds it (False: in use now). Moved aside first, then deleted."""
    lease = Leases()
    if not lease.try_all([info.path], shared=False):
        return False
    try:
        aside = info.path.parent / f"{PRUNING}{info.path.name}-{os.getpid()}"
        os.rename(info.path, aside)
    finally:
        lease.release_all()
    shutil.rmtree(aside, ignore_errors=True)
    return True


def sweep_leftovers(store: Path) -> None:
    """Finish deleting what a killed prune moved aside."""
    if Path(store).is_dir():
        for entry in os.scandir(store):
            if entry.name.startswith(PRUNING) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)


def borrow_text(folder: Path, text_key: str, captions: Mapping[str, str | None], keys: list[str]) -> list[str]:
    """Copy the text caches of ``keys`` from sibling folders with the same text basis (same dataset,
    captions file type, T5 file and fp8_t5; another resolution or frame count), so a ladder rung or a
    sweep variant with new latents does not load the text encoder again. A copy is taken only when it is
    whole and records exactly the current caption; it lands under a temporary name first."""
    from kohyawan.cachestore.folder import whole
    from kohyawan.trainer.cachefiles import TEXT_SUFFIX

    store = Path(folder).parent
    siblings = [Path(e.path) for e in os.scandir(store) if e.is_dir(follow_symlinks=False) and e.path != str(folder)
                and not e.name.startswith(".") and (jsonfile.read_object(Path(e.path) / KEY_DOCUMENT) or {}).get("text_key") == text_key]
    copied = []
    for key in keys:
        name = f"{key}{TEXT_SUFFIX}"
        for sibling in siblings:
            ok, meta = whole(sibling / name)
            if not ok or captions.get(key) is None or meta.get("caption1") != captions[key]:
                continue
            tmp = Path(folder) / f".{name}.{os.getpid()}.tmp"
            try:
                shutil.copyfile(sibling / name, tmp)
                if whole(tmp)[0]:
                    os.replace(tmp, Path(folder) / name)
                    copied.append(key)
                    break
            except OSError:
                pass
            finally:
                if tmp.exists():
                    tmp.unlink()
    return copied
