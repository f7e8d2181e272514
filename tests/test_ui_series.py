"""The run page's chart data: bounded points for any length, spikes kept, EMA on the full series, the file
read incrementally (a line still being written waits for its newline)."""

import json

import pytest

np = pytest.importorskip("numpy")

from kohyawan.ui import series  # noqa: E402


def write(path, records, mode="a"):
    with open(path, mode) as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def rec(step, loss, attempt=1, t=None, vram=None):
    return {"step": step, "loss": loss, "s_per_it": 1.0, "vram_gb": vram, "ram_gb": 30.0,
            "time": float(t if t is not None else step), "attempt": attempt, "stage": "train"}


def test_a_long_run_is_cut_to_a_bounded_payload_that_keeps_its_spike(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rng = np.random.default_rng(0)
    n = 50_000
    loss = 0.1 + 0.01 * rng.random(n)
    loss[31_337] = 9.5   # one spike among 50,000 steps
    write(path, [rec(i + 1, float(loss[i]), vram=20 + float(rng.random())) for i in range(n)], mode="w")
    doc = json.loads(series.MetricsCache().payload(path, []))
    (att,) = doc["loss"]["attempts"]
    assert doc["records"] == n
    assert len(doc["loss"]["x"]) <= 2 * series.BUCKETS and len(doc["memory"]["x"]) <= 4 * series.BUCKETS
    assert max(v for v in att["raw"] if v is not None) == pytest.approx(9.5)
    assert doc["loss"]["x"][att["raw"].index(max(v for v in att["raw"] if v is not None))] == 31_338
    assert min(v for v in att["raw"] if v is not None) == pytest.approx(float(loss.min()), abs=1e-6)
    # the EMA was computed on all 50,000 points, then sampled: it stays near the mean, the spike barely moves it
    assert all(0.09 < v < 0.2 for v in att["ema"] if v is not None)
    assert len(json.dumps(doc)) < 120_000


def test_attempts_are_separate_series_and_the_ladder_step_is_marked(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write(path, [rec(s, 0.2, 1) for s in range(1, 8)] + [rec(s, 0.1, 2, t=100 + s) for s in range(6, 11)], mode="w")
    attempts = [{"n": 1, "outcome": "oom_vram", "steps": [0, 7], "rung": None, "next": "next rung fp8_base"},
                {"n": 2, "outcome": None, "steps": [5, 5], "rung": "fp8_base"}]
    doc = json.loads(series.MetricsCache().payload(path, attempts))
    x = doc["loss"]["x"]
    a1, a2 = doc["loss"]["attempts"]
    assert x == list(range(1, 11))
    assert [v is not None for v in a1["raw"]] == [s <= 7 for s in x]
    assert [v is not None for v in a2["raw"]] == [s >= 6 for s in x]
    (mark,) = doc["ladder"]
    assert mark == {"attempt": 1, "step": 7, "outcome": "oom_vram", "t": 6.0,
                    "label": "step 7: oom_vram \u2192 rung fp8_base", "next": "next rung fp8_base"}


def test_the_file_is_read_incrementally_and_a_half_line_waits(tmp_path):
    path = tmp_path / "metrics.jsonl"
    cache = series.MetricsCache()
    write(path, [rec(1, 0.3), rec(2, 0.2)], mode="w")
    assert json.loads(cache.payload(path, []))["records"] == 2
    with open(path, "a") as f:
        f.write(json.dumps(rec(3, 0.1)) + "\n" + '{"step": 4, "loss": 0.0')   # the trainer is mid-line
    doc = json.loads(cache.payload(path, []))
    assert doc["records"] == 3 and doc["loss"]["x"] == [1, 2, 3]
    with open(path, "a") as f:
        f.write('5, "attempt": 1, "time": 4.0}\nnot json\n')
    doc = json.loads(cache.payload(path, []))
    assert doc["records"] == 4 and doc["loss"]["x"][-1] == 4
    path.write_text(json.dumps(rec(1, 0.9)) + "\n")    # replaced (a new run with the same name): read anew
    assert json.loads(cache.payload(path, []))["records"] == 1


def test_no_metrics_yet(tmp_path):
    doc = json.loads(series.MetricsCache().payload(tmp_path / "metrics.jsonl", []))
    assert doc["records"] == 0 and doc["loss"]["x"] == [] and doc["memory"]["x"] == [] and doc["ladder"] == []
