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
from typing import Any, Callable

import numpy as np

BUCKETS = 600          # per chart: at most 2 points per bucket per series
FIELDS = ("step", "loss", "attempt", "time", "vram_gb", "ram_gb")
_CACHE_FILES = 16      # parsed files kept: 100,000 lines take 4.8 MB
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
        self.cols: dict[str, np.ndarray] = empty_columns()
        self.payloads: dict[Any, bytes] = {}


def empty_columns() -> dict[str, np.ndarray]:
    return {f: np.zeros(0) for f in FIELDS}


class MetricsCache:
    """Parsed ``metrics.jsonl`` files (numpy columns, 48 bytes a line), grown by the bytes appended since the
    last read; the least recently used file is dropped past ``_CACHE_FILES``. One lock per file, so a long
    first parse does not hold up other runs' pages."""

    def __init__(self):
        self._lock = threading.Lock()
        self._files: OrderedDict[str, _Entry] = OrderedDict()
        self._file_locks: dict[str, threading.Lock] = {}

    def _file_lock(self, path: Path) -> threading.Lock:
        with self._lock:
            return self._file_locks.setdefault(str(path), threading.Lock())

    def read(self, path: Path) -> _Entry | None:
        with self._file_lock(path):
            return self._read(path)

    def _read(self, path: Path) -> _Entry | None:
        """Under the file's lock: the entry brought up to the file's present length."""
        key = str(path)
        try:
            st = os.stat(path)
        except OSError:
            with self._lock:
                self._files.pop(key, None)
            return None
        with self._lock:
            entry = self._files.get(key)
        if entry is None or entry.ino != st.st_ino or st.st_size < entry.offset:
            entry = _Entry(st.st_ino)
        if st.st_size > entry.offset:
            _grow(path, entry)
        with self._lock:
            self._files[key] = entry
            self._files.move_to_end(key)
            while len(self._files) > _CACHE_FILES:
                self._files.popitem(last=False)
        return entry

    def warm(self, paths: Callable[[], list[Path]]) -> threading.Thread:
        """Parse the files ``paths()`` names (newest first) in the background, so their pages open from the
        cache; called at start and whenever the runs list is opened."""
        def work():
            for path in paths()[:_CACHE_FILES]:
                try:
                    self.read(path)
                except OSError:
                    continue
        thread = threading.Thread(target=work, name="kohyawan-ui-warm", daemon=True)
        thread.start()
        return thread

    def payload(self, path: Path, attempts: list[dict]) -> bytes:
        """The chart document (JSON bytes) for one run; computed once per state of the file."""
        with self._file_lock(path):   # the columns must not grow while they are cut down
            return self._payload(path, attempts)

    def _payload(self, path: Path, attempts: list[dict]) -> bytes:
        entry = self._read(path)
        marks = json.dumps([[a.get("n"), a.get("outcome"), a.get("steps"), a.get("rung"), a.get("ended")]
                            for a in attempts])
        key = (entry.offset if entry else 0, marks)
        if entry is not None and key in entry.payloads:
            return entry.payloads[key]
        doc = chart_doc(entry.cols if entry else empty_columns(), attempts)
        data = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        if entry is not None:
            entry.payloads = {key: data}
        return data


def _records(text: str) -> list:
    try:  # one parse for the whole chunk: several times faster than a parse per line
        return json.loads("[" + text.rstrip("\n").replace("\n", ",") + "]")
    except ValueError:  # a damaged or blank line: parse one by one and skip it
        records = []
        for line in text.split("\n"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records


def _column(recs: list[dict], field: str) -> np.ndarray:
    try:
        return np.array([r.get(field) for r in recs], dtype=np.float64)   # None -> NaN
    except (TypeError, ValueError):  # a hand-edited value that is not a number
        return np.array([v if type(v) in _NUMBER else math.nan for v in (r.get(field) for r in recs)],
                        dtype=np.float64)


def _grow(path: Path, entry: _Entry) -> None:
    with open(path, "rb") as f:
        f.seek(entry.offset)
        chunk = f.read()
    end = chunk.rfind(b"\n")
    if end < 0:
        return
    entry.offset += end + 1
    recs = [r for r in _records(chunk[: end + 1].decode("utf-8", errors="replace"))
            if isinstance(r, dict) and type(r.get("step")) is int]
    for f in FIELDS:
        entry.cols[f] = np.concatenate([entry.cols[f], _column(recs, f)])


def _clean(values) -> list:
    return [None if not math.isfinite(v) else round(v, 6) for v in values.tolist()]


def loss_chart(cols: dict[str, np.ndarray]) -> dict[str, Any]:
    steps = cols["step"].astype(np.int64)
    loss = cols["loss"]
    attempt = np.nan_to_num(cols["attempt"]).astype(np.int64)
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


def memory_chart(cols: dict[str, np.ndarray]) -> dict[str, Any]:
    t, vram, ram = cols["time"], cols["vram_gb"], cols["ram_gb"]
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
    order = np.array(sorted(keep, key=lambda i: (rel[i], i)), dtype=np.int64)
    return {"x": np.round(rel[order], 3).tolist(), "t0": t0, "vram": _clean(vram[order]), "ram": _clean(ram[order])}


def _epoch(iso: str | None) -> float | None:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return None


def attempt_ends(cols: dict[str, np.ndarray]) -> dict[int, float]:
    """The time of each attempt's last metric line (more exact than run.json's whole seconds)."""
    ok = np.isfinite(cols["attempt"]) & np.isfinite(cols["time"])
    attempts, times = cols["attempt"][ok].astype(np.int64), cols["time"][ok]
    return {int(a): float(times[attempts == a].max()) for a in np.unique(attempts)}


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


def chart_doc(cols: dict[str, np.ndarray], attempts: list[dict]) -> dict[str, Any]:
    memory = memory_chart(cols)
    loss = loss_chart(cols)
    shown = len(loss["x"]) * max(1, len(loss["attempts"])) + len(memory["x"]) * 2
    return {"records": len(cols["step"]), "points": shown, "loss": loss, "memory": memory,
            "ladder": ladder_marks(attempts, memory["t0"], attempt_ends(cols))}
