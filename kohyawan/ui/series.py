"""The run page's charts: ``metrics.jsonl`` read incrementally and cut down on the server to a bounded
number of points per series, so a 100,000-step run's page stays small and fast.

Loss: per attempt, the raw loss and its exponential moving average (computed here, on the full series,
before downsampling), against the absolute step. Memory: VRAM and RAM against seconds since the first
record. Downsampling keeps, for every bucket of the x range, the points with the smallest and largest value
(min/max per bucket), so spikes survive. Ladder steps (an attempt that ended in an OOM, a NaN, a stall ...)
become markers at the step and time where they happened.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

BUCKETS = 600          # per chart: at most 2 points per bucket per series
FIELDS = ("step", "loss", "attempt", "time", "vram_gb", "ram_gb")
_CACHE_FILES = 32
_NUMBER = (int, float)


def ema_alpha(n: int) -> float:
    """Smoothing for n points: a span of n/50 points, between 5 and 500."""
    span = min(500.0, max(5.0, n / 50))
    return 2.0 / (span + 1.0)


def ema(values: np.ndarray, alpha: float) -> np.ndarray:
    out = np.empty_like(values)
    acc = math.nan
    for i, v in enumerate(values.tolist()):
        acc = v if math.isnan(acc) else acc + alpha * (v - acc)
        out[i] = acc
    return out


def minmax_keep(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sorted indices of the smallest and the largest value within each key (bucket)."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((values, keys))
    k = keys[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    ends = np.r_[starts[1:], len(k)] - 1
    return np.unique(np.r_[order[starts], order[ends]])


def buckets(x: np.ndarray, lo: float, hi: float, n: int = BUCKETS) -> np.ndarray:
    width = max(hi - lo, 1e-9)
    return np.minimum(((x - lo) / width * n).astype(np.int64), n - 1)


class _Entry:
    def __init__(self, ino: int):
        self.ino, self.offset = ino, 0
        self.cols: dict[str, list] = {f: [] for f in FIELDS}
        self.payloads: dict[Any, bytes] = {}


class MetricsCache:
    """Parsed ``metrics.jsonl`` files, grown by the bytes appended since the last read."""

    def __init__(self):
        self._lock = threading.Lock()
        self._files: OrderedDict[str, _Entry] = OrderedDict()

    def read(self, path: Path) -> _Entry | None:
        key = str(path)
        with self._lock:
            try:
                st = os.stat(path)
            except OSError:
                self._files.pop(key, None)
                return None
            entry = self._files.get(key)
            if entry is None or entry.ino != st.st_ino or st.st_size < entry.offset:
                entry = _Entry(st.st_ino)
            if st.st_size > entry.offset:
                _grow(path, entry)
            self._files[key] = entry
            self._files.move_to_end(key)
            while len(self._files) > _CACHE_FILES:
                self._files.popitem(last=False)
            return entry

    def payload(self, path: Path, attempts: list[dict]) -> bytes:
        """The chart document (JSON bytes) for one run; computed once per state of the file."""
        entry = self.read(path)
        marks = json.dumps([[a.get("n"), a.get("outcome"), a.get("steps"), a.get("rung"), a.get("started")]
                            for a in attempts])
        key = (entry.offset if entry else 0, marks)
        if entry is not None and key in entry.payloads:
            return entry.payloads[key]
        doc = chart_doc(entry.cols if entry else {f: [] for f in FIELDS}, attempts)
        data = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        if entry is not None:
            entry.payloads = {key: data}
        return data


def _grow(path: Path, entry: _Entry) -> None:
    with open(path, "rb") as f:
        f.seek(entry.offset)
        chunk = f.read()
    end = chunk.rfind(b"\n")
    if end < 0:
        return
    text = chunk[: end + 1].decode("utf-8", errors="replace")
    entry.offset += end + 1
    try:  # one parse for the whole chunk: several times faster than a parse per line
        records = json.loads("[" + text.rstrip("\n").replace("\n", ",") + "]")
    except ValueError:  # a damaged or blank line: parse one by one and skip it
        records = []
        for line in text.split("\n"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    recs = [r for r in records if isinstance(r, dict) and type(r.get("step")) is int]
    for f in FIELDS:
        entry.cols[f].extend([v if type(v) in _NUMBER else None for v in (r.get(f) for r in recs)])


def _floats(values: list) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def _clean(values) -> list:
    return [None if (v is None or not math.isfinite(v)) else round(float(v), 6) for v in values]


def loss_chart(cols: dict[str, list]) -> dict[str, Any]:
    steps = np.array(cols["step"], dtype=np.int64)
    loss = _floats(cols["loss"])
    attempt = np.array([a or 0 for a in cols["attempt"]], dtype=np.int64)
    ok = np.isfinite(loss)
    if not ok.any():
        return {"x": [], "attempts": [], "alpha": None}
    lo, hi = float(steps[ok].min()), float(steps[ok].max())
    kept, alpha = [], ema_alpha(int(ok.sum()))
    for a in sorted(set(attempt[ok].tolist())):
        idx = np.flatnonzero(ok & (attempt == a))
        smooth = ema(loss[idx], alpha)
        keep = minmax_keep(buckets(steps[idx].astype(np.float64), lo, hi), loss[idx])
        kept.append((a, steps[idx][keep], loss[idx][keep], smooth[keep]))
    x = np.unique(np.concatenate([k[1] for k in kept]))
    out = []
    for a, s, raw, smooth in kept:
        pos = np.searchsorted(x, s)
        r, e = np.full(len(x), np.nan), np.full(len(x), np.nan)
        r[pos], e[pos] = raw, smooth
        out.append({"attempt": int(a), "raw": _clean(r), "ema": _clean(e)})
    return {"x": x.tolist(), "attempts": out, "alpha": round(alpha, 5)}


def memory_chart(cols: dict[str, list]) -> dict[str, Any]:
    t = _floats(cols["time"])
    vram, ram = _floats(cols["vram_gb"]), _floats(cols["ram_gb"])
    ok = np.isfinite(t)
    if not ok.any():
        return {"x": [], "t0": None, "vram": [], "ram": []}
    t0 = float(t[ok].min())
    rel = t - t0
    b = buckets(rel[ok], 0.0, float(rel[ok].max()))
    idx = np.flatnonzero(ok)
    keep = set()
    for series in (vram, ram):
        fin = np.isfinite(series[idx])
        if fin.any():
            keep.update(idx[fin][minmax_keep(b[fin], series[idx][fin])].tolist())
    if not keep:  # neither is measured: still one point per bucket for the time axis
        keep.update(idx[minmax_keep(b, rel[idx])].tolist())
    order = sorted(keep, key=lambda i: (rel[i], i))
    return {"x": [round(float(rel[i]), 3) for i in order], "t0": t0,
            "vram": _clean(vram[order]), "ram": _clean(ram[order])}


def _epoch(iso: str | None) -> float | None:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return None


def attempt_ends(cols: dict[str, list]) -> dict[int, float]:
    """The time of each attempt's last metric line (more exact than run.json's whole seconds)."""
    ends: dict[int, float] = {}
    for a, t in zip(cols["attempt"], cols["time"]):
        if a is not None and t is not None:
            ends[a] = max(t, ends.get(a, t))
    return ends


def ladder_marks(attempts: list[dict], t0: float | None, ends: dict[int, float] | None = None) -> list[dict[str, Any]]:
    """One mark per attempt that ended without success: the ladder step, at its step and time."""
    marks = []
    ends = ends or {}
    for a, nxt in zip(attempts, attempts[1:] + [None]):
        if a.get("outcome") in (None, "succeeded"):
            continue
        step = (a.get("steps") or [0, 0])[1]
        ended = ends.get(a.get("n")) or _epoch(a.get("ended"))
        then = (f"rung {nxt['rung']}" if nxt and nxt.get("rung") else
                f"attempt {nxt['n']}" if nxt else "stopped")
        marks.append({"attempt": a.get("n"), "step": step, "outcome": a.get("outcome"),
                      "t": round(ended - t0, 3) if ended is not None and t0 is not None else None,
                      "label": f"step {step}: {a.get('outcome')} \u2192 {then}", "next": a.get("next")})
    return marks


def chart_doc(cols: dict[str, list], attempts: list[dict]) -> dict[str, Any]:
    memory = memory_chart(cols)
    loss = loss_chart(cols)
    shown = len(loss["x"]) * max(1, len(loss["attempts"])) + len(memory["x"]) * 2
    return {"records": len(cols["step"]), "points": shown, "loss": loss, "memory": memory,
            "ladder": ladder_marks(attempts, memory["t0"], attempt_ends(cols))}
