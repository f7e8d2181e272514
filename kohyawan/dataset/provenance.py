"""What produced each output, so a rerun redoes only what changed; and a lock against two runs at once.

DEST/.kohyawan/manifest.json maps each source (relative path) to the fingerprint of its inputs (size,
mtime and sampled content of the media and caption, plus the settings fingerprint), the probe result
it produced, and the outputs written from it with their sizes. A source whose fingerprint and outputs
still match is neither probed nor re-encoded.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from kohyawan.dataset.layout import STATE, atomic_write
from kohyawan.errors import DatasetError
from kohyawan.files import locks

MANIFEST = "manifest.json"
LOCK = "lock"
SAMPLE = 1 << 20  # bytes hashed from each end of a media file


def _sample_hash(path: Path, digest) -> None:
    flags = os.O_RDONLY | getattr(os, "O_NOATIME", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest.update(handle.read(SAMPLE))
        if size > 2 * SAMPLE:
            handle.seek(size - SAMPLE)
            digest.update(handle.read(SAMPLE))
        elif size > SAMPLE:
            digest.update(handle.read())


def fingerprint(media: Path, caption: Path | None, settings_fp: str) -> str:
    """Cheap and safe: stat plus the first and last MiB, so a replaced file with the same size shows."""
    digest = hashlib.sha256(settings_fp.encode())
    for path in (media, caption):
        if path is None:
            digest.update(b"-")
            continue
        st = path.stat()
        digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        _sample_hash(path, digest)
    return digest.hexdigest()[:24]


def load(dest: Path) -> dict:
    try:
        data = json.loads((dest / STATE / MANIFEST).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {"version": 1, "sources": {}}
    if data.get("version") != 1 or not isinstance(data.get("sources"), dict):
        return {"version": 1, "sources": {}}
    return data


def save(dest: Path, data: dict) -> None:
    atomic_write(dest / STATE / MANIFEST, json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True))


def outputs_intact(dest: Path, entry: dict) -> bool:
    for rel, size in entry.get("sizes", {}).items():
        try:
            if (dest / rel).stat().st_size != size:
                return False
        except FileNotFoundError:
            return False
    return True


@contextmanager
def locked(dest: Path) -> Iterator[None]:
    (dest / STATE).mkdir(parents=True, exist_ok=True)
    lock = locks.FileLock(dest / STATE / LOCK, mode=0o666)
    try:
        if not lock.try_acquire():
            raise DatasetError(f"another `kohyawan dataset prepare` is writing to {dest}")
        yield
    finally:
        lock.release()
