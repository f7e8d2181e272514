"""A batch end to end: real child processes, one job failing, export with notes, interrupt and continue."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchkit import CLI, FAST_ENV, write_manifest
from conftest import tiny_png
from kohyawan.batch import driver

pytestmark = pytest.mark.slow

MANIFEST = """
[defaults]
profile = "character"
task = "t2v-1.3B"
rehearse = true
registry = "registry"
overrides = { max_train_epochs = 2 }

[[jobs]]
client = "brand-x"
name = "sarah"
dataset = "data/sarah"
notes = "new hair"

[[jobs]]
client = "brand-x"
name = "tom"
dataset = "data/tom"
env = { KOHYAWAN_REHEARSE_FAULTS = "crash@3" }
max_attempts = 1

[[jobs]]
client = "brand-y"
name = "ana"
dataset = "data/ana"
"""


@pytest.fixture
def fast(monkeypatch):
    for k, v in FAST_ENV.items():
        monkeypatch.setenv(k, v)


def _opts(path, **kw):
    return driver.BatchOptions(manifest=path, kohyawan=CLI, **kw)


def test_batch_runs_every_job_a_failure_stops_nothing_and_finished_jobs_are_exported(tmp_path, fast):
    path = write_manifest(tmp_path, MANIFEST)
    doc = driver.run(_opts(path, gpus="0,1"))
    jobs = {j["key"]: j for j in doc["jobs"]}
    assert doc["counts"] == {"pending": 0, "running": 0, "succeeded": 2, "failed": 1}
    tom = jobs["brand-x/tom"]
    assert tom["state"] == "failed" and tom["export_state"] == "none"
    assert tom["reason"] == json.loads(Path(tom["run_dir"], "run.json").read_text())["reason"]   # the run's own words
    for key in ("brand-x/sarah", "brand-y/ana"):
        j = jobs[key]
        assert j["state"] == "succeeded" and j["export_state"] == "done" and j["exported_version"] == 1
        assert j["run"]["status"] == "succeeded" and j["run"]["final_loss"] is not None
        assert j["gpu"] in ("0", "1")
    assert jobs["brand-x/sarah"]["export_notes"] == "first version, trained on 3 images. new hair"
    _assert_one_job_per_gpu_at_a_time(tmp_path / "clients.batch")
    index = json.loads((tmp_path / "registry" / "index.json").read_text())
    assert sorted(index["models"]) == ["character/brand-x/sarah", "character/brand-y/ana"]
    shown = subprocess.run([*CLI, "registry", "show", "sarah", "--client", "brand-x", "--kind", "character",
                            "--registry", str(tmp_path / "registry"), "--json"], capture_output=True, text=True)
    versions = json.loads(shown.stdout)["versions"]
    assert len(versions) == 1
    assert versions[0]["notes"][0]["text"] == "batch: first version, trained on 3 images. new hair"
    assert json.loads((tmp_path / "clients.batch" / "batch.json").read_text())["counts"] == doc["counts"]

    # Running again redoes nothing; --retry-failed retries only the failed job (fixed in the manifest).
    again = driver.run(_opts(path, gpus="0,1"))
    assert [j["attempts"] for j in again["jobs"]] == [j["attempts"] for j in doc["jobs"]]
    path.write_text(path.read_text().replace('env = { KOHYAWAN_REHEARSE_FAULTS = "crash@3" }\n', ""))
    data = tmp_path / "data" / "sarah"
    for i in range(2):   # new material for sarah does not matter: sarah is done in this batch folder
        (data / "images" / f"new{i}.png").write_bytes(tiny_png(i))
    retried = driver.run(_opts(path, gpus="0,1", retry_failed=True))
    jobs = {j["key"]: j for j in retried["jobs"]}
    assert retried["counts"]["succeeded"] == 3
    assert jobs["brand-x/tom"]["tries"] == 2 and jobs["brand-x/tom"]["run_id"] == "brand-x__tom.r2"
    assert jobs["brand-x/sarah"]["attempts"] == 1 and jobs["brand-y/ana"]["attempts"] == 1
    assert (tmp_path / "clients.batch" / "runs" / "brand-x__tom" / "run.json").is_file()   # evidence kept


def test_a_second_batch_reports_what_changed_since_the_previous_version(tmp_path, fast):
    body = MANIFEST.split("[[jobs]]")[0] + "[[jobs]]" + MANIFEST.split("[[jobs]]")[1]
    path = write_manifest(tmp_path, body.replace("[defaults]\n", '[defaults]\nruns_dir = "shared-runs"\n'))
    driver.run(_opts(path))
    for i in range(5):
        (tmp_path / "data" / "sarah" / "images" / f"new{i}.png").write_bytes(tiny_png(i))  # a rehearsal decodes
        (tmp_path / "data" / "sarah" / "images" / f"new{i}.txt").write_text("new")
    doc = driver.run(_opts(path, folder=tmp_path / "second"))
    (sarah,) = doc["jobs"]
    assert sarah["exported_version"] == 2
    assert sarah["export_notes"] == "retrained on 5 new images (8 in all; v1 had 3). new hair"
    # the runs folder is shared with the first batch: the retrain got a fresh run folder beside the old one
    assert sarah["run_id"] == "brand-x__sarah.r2" and (tmp_path / "shared-runs" / "brand-x__sarah" / "run.json").is_file()


def _assert_one_job_per_gpu_at_a_time(folder):
    from kohyawan.batch.queue import Queue

    q = Queue(folder, readonly=True)
    spans, open_ = {}, {}
    for e in q.events():
        detail = json.loads(e["detail"]) if e["detail"] else {}
        if e["event"] in ("start", "resume"):
            assert detail["slot"] not in open_, f"GPU {detail['slot']} given to two jobs"
            open_[detail["slot"]] = e["key"]
        elif e["event"] == "end":
            assert open_.pop(detail["slot"]) == e["key"]
            spans.setdefault(detail["slot"], []).append(e["key"])
    q.close()
    assert set(spans) == {"0", "1"}        # both GPUs were used


def _drive_in_process(path, folder, gpus):
    """`kohyawan batch` as a real process, so it can be signalled and killed."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), "KOHYAWAN_REHEARSE_STEP_S": "0.3"}
    return subprocess.Popen([*CLI, "batch", str(path), "--dir", str(folder), "--gpus", gpus], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def _states(folder):
    from kohyawan.batch.queue import Queue

    try:
        q = Queue(folder, readonly=True)
    except Exception:   # not created yet
        return {}
    try:
        return {r["key"]: r["state"] for r in q.rows()}
    finally:
        q.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_killing_the_batch_halfway_and_rerunning_finishes_only_what_was_left(tmp_path, fast, sig):
    path = write_manifest(tmp_path, MANIFEST.replace('env = { KOHYAWAN_REHEARSE_FAULTS = "crash@3" }\n', ""))
    folder = tmp_path / "b"
    proc = _drive_in_process(path, folder, "0,1")
    _wait_for(lambda: list(_states(folder).values()).count("running") == 2)
    runs = folder / "runs"
    _wait_for(lambda: all((runs / n / "metrics.jsonl").is_file() for n in ("brand-x__sarah", "brand-x__tom")))
    from kohyawan.batch.queue import Queue

    q = Queue(folder, readonly=True)
    for row in q.rows("running"):      # each job's process sees exactly its own GPU
        environ = Path(f"/proc/{row['pid']}/environ").read_bytes().split(b"\0")
        assert f"CUDA_VISIBLE_DEVICES={row['gpu']}".encode() in environ
    q.close()
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 130          # interrupted, jobs left
    assert "batch stopped with 3 job(s) left; run the same command again to continue" in proc.stderr.read()
    states = _states(folder)
    assert states == {"brand-x/sarah": "pending", "brand-x/tom": "pending", "brand-y/ana": "pending"}
    doc = driver.run(_opts(path, folder=folder, gpus="0,1"))
    jobs = {j["key"]: j for j in doc["jobs"]}
    assert doc["counts"]["succeeded"] == 3
    for key in ("brand-x/sarah", "brand-x/tom"):     # interrupted: resumed in the same run folder
        run = json.loads(Path(jobs[key]["run_dir"], "run.json").read_text())
        assert jobs[key]["tries"] == 1 and jobs[key]["attempts"] == 2 and jobs[key]["run_id"] == key.replace("/", "__")
        assert run["status"] == "succeeded"
    q = Queue(folder, readonly=True)
    resumed = sorted(e["key"] for e in q.events() if e["event"] == "resume")
    q.close()
    assert resumed == ["brand-x/sarah", "brand-x/tom"]          # continued with `kohyawan runs resume`
    assert jobs["brand-y/ana"]["attempts"] == 1


def test_a_killed_driver_leaves_jobs_running_and_the_next_driver_adopts_them(tmp_path, fast):
    path = write_manifest(tmp_path, MANIFEST.replace('env = { KOHYAWAN_REHEARSE_FAULTS = "crash@3" }\n', ""),)
    folder = tmp_path / "b"
    proc = _drive_in_process(path, folder, "0")
    _wait_for(lambda: "running" in _states(folder).values())
    proc.kill()
    proc.wait()
    doc = driver.run(_opts(path, folder=folder, gpus="0"))
    assert doc["counts"]["succeeded"] == 3
    from kohyawan.batch.queue import Queue

    q = Queue(folder, readonly=True)
    events = [e["event"] for e in q.events()]
    q.close()
    assert "adopt" in events and events.count("start") == 3      # nothing was started twice


def test_batch_status_shows_the_folder_at_any_time(tmp_path, fast):
    from click.testing import CliRunner

    from kohyawan.cli import cli

    path = write_manifest(tmp_path, MANIFEST)
    driver.run(_opts(path, gpus="0,1"))
    folder = tmp_path / "clients.batch"
    result = CliRunner().invoke(cli, ["batch", "status", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["version"] == 1 and doc["counts"]["failed"] == 1 and doc["driver_pid"] is None
    assert doc["scheduling"]["gaps_s"] and doc["scheduling"]["max_gap_s"] < 1.0
    text = CliRunner().invoke(cli, ["batch", "status", str(folder)])
    assert text.exit_code == 0
    assert "brand-x/tom" in text.output and "failed" in text.output and "v1" in text.output
    assert "2 succeeded" in text.output.replace("  ", " ")
    missing = CliRunner().invoke(cli, ["batch", "status", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not a batch folder" in missing.output


def test_a_job_dropped_from_the_manifest_stays_in_the_folder_but_is_not_left_over(tmp_path, fast):
    path = write_manifest(tmp_path, MANIFEST.replace('env = { KOHYAWAN_REHEARSE_FAULTS = "crash@3" }\n', ""))
    from kohyawan.batch import manifest as manifest_mod
    from kohyawan.batch.queue import Queue

    folder = tmp_path / "clients.batch"
    q = Queue(folder)
    q.sync(manifest_mod.load(path).jobs)       # all three queued ...
    q.close()
    text = path.read_text()
    path.write_text(text[:text.rindex("[[jobs]]")])   # ... then ana is dropped from the manifest
    doc = driver.run(_opts(path))
    jobs = {j["key"]: j for j in doc["jobs"]}
    assert jobs["brand-y/ana"]["state"] == "pending" and jobs["brand-y/ana"]["in_manifest"] is False
    assert jobs["brand-x/sarah"]["state"] == "succeeded" and not driver.interrupted(doc)


def test_a_folder_with_slurm_tasks_in_flight_is_not_run_locally(tmp_path, fast):
    from kohyawan.batch import manifest as manifest_mod
    from kohyawan.batch.queue import Queue
    from kohyawan.errors import BadInput

    path = write_manifest(tmp_path, MANIFEST)
    q = Queue(tmp_path / "clients.batch")
    q.sync(manifest_mod.load(path).jobs)
    q.update("brand-x/sarah", state="running", slurm_job="77_0")
    q.close()
    with pytest.raises(BadInput, match="SLURM task 77_0, still in flight"):
        driver.run(_opts(path))


def test_a_failed_export_is_retried_without_training_again(tmp_path, fast):
    body = MANIFEST.replace('env = { KOHYAWAN_REHEARSE_FAULTS = "crash@3" }\n', "")
    body = body[:body.index('[[jobs]]\nclient = "brand-x"\nname = "tom"')]          # sarah only
    path = write_manifest(tmp_path, body.replace('registry = "registry"', 'registry = "not-a-folder"'))
    (tmp_path / "not-a-folder").write_text("a file where the registry should be")
    doc = driver.run(_opts(path))
    (sarah,) = doc["jobs"]
    assert sarah["state"] == "failed" and sarah["export_state"] == "failed" and sarah["reason"].startswith("export: ")
    assert sarah["run"]["status"] == "succeeded"
    path.write_text(path.read_text().replace('registry = "not-a-folder"', 'registry = "registry"'))
    doc = driver.run(_opts(path, retry_failed=True))
    (sarah,) = doc["jobs"]
    assert sarah["state"] == "succeeded" and sarah["exported_version"] == 1
    assert sarah["attempts"] == 1 and sarah["tries"] == 1          # trained once
