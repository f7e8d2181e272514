"""The two kinds of job the process pool runs; top-level functions taking and returning plain data.

A job whose ffmpeg child died of a signal returns ``{"died": why}``: ``prepare`` runs it again, and never
records it as a verdict about the source.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kohyawan.dataset import normalise
from kohyawan.dataset.ffmpeg import ChildDied
from kohyawan.dataset.plan import Piece
from kohyawan.dataset.probe import analyse, intermediate_fits
from kohyawan.dataset.settings import Settings
from kohyawan.errors import KohyawanError


def probe_job(path: str, kind: str, settings: Settings, intermediate: str | None = None) -> dict:
    """Probe one source. With `intermediate` (a square video run), the normalised frames may be left
    there for the encode pass; the result's "intermediate" says whether they were."""
    target = None
    try:
        if intermediate and kind == "video" and not settings.keep_aspect and Path(path).stat().st_size:
            if intermediate_fits(Path(path), settings):
                target = Path(intermediate)
        probe = analyse(Path(path), kind, settings, intermediate=target)
    except ChildDied as exc:
        if target is not None:
            target.unlink(missing_ok=True)
        return {"died": str(exc)}
    except OSError as exc:  # unreadable by us: permissions, a file that vanished
        return {"ok": False, "error": f"{type(exc).__name__}: {exc.strerror or exc}"}
    if target is not None and not probe.ok:
        target.unlink(missing_ok=True)
        target = None
    data = dataclasses.asdict(probe)
    data["intermediate"] = str(target) if target is not None and target.is_file() else None
    data["shifts"] = [[float(a), float(b)] for a, b in probe.shifts]
    return data


def encode_job(path: str, kind: str, outputs: list, size: tuple, settings: Settings, threads: int,
               intermediate: str | None = None) -> dict:
    """outputs: [(absolute final path, start, frames)]. Returns {"error": str} or {}."""
    try:
        if kind == "image":
            normalise.write_image(Path(path), Path(outputs[0][0]), size)
        else:
            pieces = [(Path(final), Piece(start, frames)) for final, start, frames in outputs]
            normalise.write_clips(Path(path), pieces, size, settings, threads,
                                  Path(intermediate) if intermediate else None)
    except ChildDied as exc:
        return {"died": str(exc)}
    except (KohyawanError, OSError) as exc:
        return {"error": str(exc)}
    finally:
        if intermediate:
            Path(intermediate).unlink(missing_ok=True)
    return {}
