"""Bad usage is exit 2 with one `error:` line and nothing written (issue 15, item 11): a run whose folder
another kohyawan holds, and a dataset prepare with nothing to prepare."""

import json
import subprocess
import sys

import pytest

from runtime_helpers import env, make_dataset, run_cli

from kohyawan.run.runlock import RunLock


def _one_error_line(result, *words):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert all(w in lines[0] for w in words), lines[0]


def _run(data, runs, name):
    return [sys.executable, "-m", "kohyawan", "run", "--profile", "character", "--dataset", str(data), "--task",
            "t2v-1.3B", "--runs-dir", str(runs), "--name", name, "--rehearse", "--plain", "--interval", "1000",
            "--set", "max_train_epochs=2", "--set", "resolution=[64,64]"]


@pytest.mark.slow
def test_a_run_whose_folder_another_kohyawan_holds_is_bad_usage_and_writes_nothing(tmp_path):
    data = make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    lock = RunLock(runs / "held")  # another kohyawan, starting a run of the same name
    lock.acquire()
    try:
        r = run_cli(_run(data, runs, "held"))
    finally:
        lock.release()
    _one_error_line(r, "held", "already being supervised")
    assert sorted(p.name for p in (runs / "held").iterdir()) == [".lock"]


@pytest.mark.slow
def test_two_runs_of_one_name_started_together_one_trains_the_other_is_refused(tmp_path):
    data = make_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    procs = [subprocess.Popen(_run(data, runs, "twin"), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=180), p.communicate()[1]) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert refused.count("error: ") == 1 and "Traceback" not in refused
    d = json.loads((runs / "twin" / "run.json").read_text())
    assert d["status"] == "succeeded" and len(d["attempts"]) == 1


def test_prepare_of_an_empty_source_folder_is_bad_input_and_writes_nothing(tmp_path, kohyawan_argv):
    src = tmp_path / "empty"
    src.mkdir()
    (src / "notes.md").write_text("no media here")
    dest = tmp_path / "prepared"
    r = subprocess.run([*kohyawan_argv, "dataset", "prepare", str(src), "--out", str(dest), "--profile", "character"],
                       capture_output=True, text=True, env=env())
    _one_error_line(r, "no images or videos", str(src))
    assert not dest.exists() and [p.name for p in src.iterdir()] == ["notes.md"]
