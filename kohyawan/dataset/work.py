"""The two kinds of job the process pool runs; top-level functions taking and returning plain data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kohyawan.dataset import normalise
from kohyawan.dataset.plan import Piece
from kohyawan.dataset.probe import analyse
from kohyawan.dataset.settings import Settings
from kohyawan.errors import KohyawanError


def probe_job(path: str, kind: str, settings: Settings) -> dict:
    try:
        probe = analyse(Path(path), kind, settings)
    except OSError as exc:  # unreadable by us: permissions, a file that vanished
        return {"ok": False, "error": f"{type(exc).__name__}: {exc.strerror or exc}"}
    data = dataclasses.asdict(probe)
    data["shifts"] = [[float(a), float(b)] for a, b in probe.shifts]
    return data


def encode_job(path: str, kind: str, outputs: list, size: tuple, settings: Settings, threads: int) -> dict:
    """outputs: [(absolute final path, start, frames)]. Returns {"error": str} or {}."""
    try:
        if kind == "image":
            normalise.write_image(Path(path), Path(outputs[0][0]), size)
        else:
            pieces = [(Path(final), Piece(start, frames)) for final, start, frames in outputs]
            normalise.write_clips(Path(path), pieces, size, settings, threads)
    except (KohyawanError, OSError) as exc:
        return {"error": str(exc)}
    return {}
