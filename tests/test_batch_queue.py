"""Queue persistence, transitions and the driver lock; GPU slot allocation (pure)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kohyawan.batch import queue
from kohyawan.batch import allocate
from kohyawan.batch.manifest import Job, with_fingerprint
from kohyawan.errors import BadInput


def _job(i, name, **kw):
    base = dict(index=i, key=f"c/{name}", client="c", name=name, kind="character", dataset=Path("/d"),
                profile="character", variant=None, task="t2v-1.3B", expert="both", sets=(), models={}, export=True,
                checkpoint="auto", dtype=None, notes=None, env={}, max_attempts=None, gpu_memory=None)
    base.update(kw)
    return with_fingerprint(Job(**base))


def test_queue_persists_across_connections_in_wal_mode(tmp_path):
    q = queue.Queue(tmp_path)
    assert q.sync([_job(0, "a"), _job(1, "b")]) == ["c/a", "c/b"]
    q.update("c/a", state="running", attempts=1, run_dir="/r/a")
    q.event("c/a", "start", {"slot": "0"})
    q.close()
    q2 = queue.Queue(tmp_path)
    assert q2.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert q2.sync([_job(0, "a"), _job(1, "b")]) == []     # nothing new
    assert q2.get("c/a")["state"] == "running" and q2.get("c/a")["attempts"] == 1
    assert q2.counts() == {"pending": 1, "running": 1, "succeeded": 0, "failed": 0}
    assert [e["event"] for e in q2.events()] == ["start"]
    ro = queue.Queue(tmp_path, readonly=True)
    assert len(ro.rows()) == 2
    with pytest.raises(Exception):
        ro.update("c/a", state="failed")


def test_a_bad_state_or_column_is_refused(tmp_path):
    import sqlite3

    q = queue.Queue(tmp_path)
    q.sync([_job(0, "a")])
    with pytest.raises(sqlite3.IntegrityError):
        q.update("c/a", state="exploded")
    with pytest.raises(KeyError):
        q.update("c/a", nonsense=1)


def test_changed_definition_of_a_finished_job_is_refused_but_a_pending_or_failed_one_is_updated(tmp_path):
    q = queue.Queue(tmp_path)
    q.sync([_job(0, "a"), _job(1, "b")])
    q.update("c/a", run_dir="/r/a", run_status="stopped")
    q.sync([_job(0, "a", sets=("network_dim=8",)), _job(1, "b")])        # pending: updated, starts fresh
    assert "network_dim=8" in q.get("c/a")["definition"] and q.get("c/a")["run_dir"] is None
    q.update("c/a", state="failed", run_dir="/r/a")
    q.sync([_job(0, "a", sets=("network_dim=4",))])
    assert q.get("c/a")["state"] == "failed" and "network_dim=4" in q.get("c/a")["definition"]
    for state in ("succeeded", "running"):
        q.update("c/b", state=state, run_dir="/r/b")
        with pytest.raises(BadInput, match=f"changed in the manifest since it {state}"):
            q.sync([_job(1, "b", sets=("network_dim=8",))])


def test_retry_failed_resets_only_failed_jobs_and_keeps_a_trained_run_whose_export_failed(tmp_path):
    q = queue.Queue(tmp_path)
    q.sync([_job(0, "a"), _job(1, "b"), _job(2, "c")])
    q.update("c/a", state="failed", run_dir="/r/a", run_status="failed", reason="oom")
    q.update("c/b", state="failed", run_dir="/r/b", run_status="succeeded", export_state="failed")
    q.update("c/c", state="succeeded", run_dir="/r/c", run_status="succeeded")
    assert q.retry_failed() == ["c/a", "c/b"]
    a, b, c = q.get("c/a"), q.get("c/b"), q.get("c/c")
    assert (a["state"], a["run_dir"], a["reason"]) == ("pending", None, None)
    assert (b["state"], b["run_dir"], b["export_state"]) == ("pending", "/r/b", "none")
    assert c["state"] == "succeeded"


def test_only_one_driver_per_batch_folder(tmp_path):
    with queue.BatchLock(tmp_path):
        assert queue.is_driven(tmp_path) == os.getpid()
        # another process trying to drive the same folder is refused
        code = ("import sys; from kohyawan.batch.queue import BatchLock\n"
                f"try:\n  BatchLock({str(tmp_path)!r}).__enter__()\nexcept Exception as e:\n  print(e); sys.exit(3)")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
        assert proc.returncode == 3 and f"pid {os.getpid()}" in proc.stdout
    assert queue.is_driven(tmp_path) is None


def test_gpu_slots_parse_group_and_allocate_one_job_per_gpu():
    assert allocate.parse_gpus(None) == [""] and allocate.parse_gpus(" ") == [""]
    assert allocate.parse_gpus("0, 1,2") == ["0", "1", "2"]
    assert allocate.parse_gpus("0,1,2,3", per_job=2) == ["0,1", "2,3"]
    assert allocate.parse_gpus("GPU-8f2a-11,MIG-3c1d/1/0") == ["GPU-8f2a-11", "MIG-3c1d/1/0"]
    for bad, match in (("0,0", "twice"), ("0,,1", "not a GPU id"), ("0;rm", "not a GPU id")):
        with pytest.raises(BadInput, match=match):
            allocate.parse_gpus(bad)
    with pytest.raises(BadInput, match="groups of 2"):
        allocate.parse_gpus("0,1,2", per_job=2)
    alloc = allocate.Allocator(["0", "1"])
    assert alloc.take("a") == "0" and alloc.take("b") == "1" and alloc.take("c") is None
    alloc.give_back("0")
    assert alloc.free() == ["0"] and alloc.take("c") == "0"
    alloc.give_back("1")
    alloc.hold("1", "d")
    with pytest.raises(ValueError):
        alloc.hold("1", "e")
    assert alloc.take("e") is None


def test_change_notes_compare_item_counts_with_the_previous_version(tmp_path):
    from conftest import make_dataset
    from kohyawan.batch import results

    assert results.change_note(12, None, "images") == "first version, trained on 12 images"
    prev = {"version": 3, "dataset": {"size": 10}}
    assert results.change_note(60, prev, "images") == "retrained on 50 new images (60 in all; v3 had 10)"
    assert results.change_note(8, prev, "items") == "retrained on 8 items, 2 fewer than v3"
    assert results.change_note(10, prev) == "retrained on the same number of items as v3 (10)"
    assert results.change_note(10, {"version": 2, "dataset": {}}) == "retrained (batch); dataset size of v2 not recorded"
    assert results.dataset_word(make_dataset(tmp_path / "a", images=2)) == "images"
    assert results.dataset_word(make_dataset(tmp_path / "b", images=2, videos=1)) == "items"


def test_run_summary_tolerates_missing_and_half_written_files(tmp_path):
    import json

    from kohyawan.batch import results

    assert results.summarize(None)["status"] is None
    assert results.summarize(tmp_path)["status"] is None              # nothing written yet
    (tmp_path / "run.json").write_text(json.dumps({
        "id": "r", "status": "succeeded", "total_steps": 100, "created": "2026-11-28T01:00:00Z",
        "updated": "2026-11-28T01:10:00Z",
        "attempts": [{"peak_vram_gb": 20.5, "rung": None}, {"peak_vram_gb": 18.0, "rung": "fp8_base"}],
        "checkpoints": [{"step": s} for s in (50, 60, 70, 80, 90, 100)] + [{"step": 65, "removed": True}],
        "final": {"path": "/x/final.safetensors"}}))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.2}\n'
                                             '{"step": 3, "loss": NaN}\n{"step": 4, "loss": 0.3}\n{"step": 5, "lo')
    row = results.summarize(tmp_path)
    assert (row["final_loss"], row["best_loss"], row["best_step"]) == (0.3, 0.2, 2)
    assert row["seconds"] == 600 and row["peak_vram_gb"] == 20.5 and row["rungs"] == ["fp8_base"]
    assert row["candidates"] == [60, 70, 80] and row["final"] == "/x/final.safetensors"
