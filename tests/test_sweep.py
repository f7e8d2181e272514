"""Sweeps: one run per variant with the same data and seed, in parallel on separate (virtual) GPUs."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchkit import CLI, FAST_ENV
from conftest import make_dataset
from kohyawan.batch import sweep
from kohyawan.cli import cli
from kohyawan.errors import BadInput


@pytest.fixture
def fast(monkeypatch):
    for k, v in FAST_ENV.items():
        monkeypatch.setenv(k, v)


def _req(tmp_path, **kw):
    base = dict(profile="character", dataset=make_dataset(tmp_path / "data", images=4),
                variants=("conservative", "standard", "aggressive"), runs_dir=tmp_path / "runs", name="ab",
                task="t2v-1.3B", rehearse=True, kohyawan=CLI)
    base.update(kw)
    return sweep.SweepRequest(**base)


@pytest.mark.slow
def test_sweep_on_two_virtual_gpus_runs_variants_in_parallel_and_compares_them(tmp_path, fast):
    doc = sweep.run(_req(tmp_path, gpus="0,1"))
    rows = {r["variant"]: r for r in doc["variants"]}
    assert list(rows) == ["conservative", "standard", "aggressive"]
    assert all(r["state"] == "succeeded" for r in rows.values())
    assert doc["parallel"] is True and doc["gpus"] == ["0", "1"]
    assert {rows["conservative"]["gpu"], rows["standard"]["gpu"]} == {"0", "1"}
    for variant, r in rows.items():
        assert r["run_id"] == f"ab-{variant}"
        assert r["final_loss"] is not None and r["best_loss"] <= r["final_loss"]
        assert r["attempts"] == 1 and r["checkpoints"] and r["total_steps"]
        run = json.loads(Path(r["run_dir"], "run.json").read_text())
        # same data and seed, each its own variant
        assert run["request"]["variant"] == variant and f"seed={doc['seed']}" in run["request"]["sets"]
    assert json.loads((tmp_path / "runs" / "ab" / "sweep.json").read_text())["variants"] == doc["variants"]
    # the sweep can be run again: nothing is redone
    again = sweep.run(_req(tmp_path, gpus="0,1"))
    assert [r["started_at"] for r in again["variants"]] == [r["started_at"] for r in doc["variants"]]


@pytest.mark.slow
def test_sweep_on_one_gpu_runs_variants_one_after_another(tmp_path, fast):
    doc = sweep.run(_req(tmp_path, variants=("conservative", "aggressive"), seed=7))
    assert doc["parallel"] is False and doc["seed"] == 7
    assert all(r["state"] == "succeeded" for r in doc["variants"])


def test_sweep_refuses_bad_variants_before_starting(tmp_path):
    with pytest.raises(BadInput, match="unknown variant"):
        sweep.run(_req(tmp_path, variants=("standard", "wild")))
    with pytest.raises(BadInput, match="at least two"):
        sweep.parse_variants("standard")
    with pytest.raises(BadInput, match="twice"):
        sweep.parse_variants("standard,standard")
    assert not (tmp_path / "runs").exists()
    result = CliRunner().invoke(cli, ["sweep", "--dataset", str(tmp_path / "data"), "--variants", "a,b",
                                      "--variant", "standard"])
    assert result.exit_code == 2 and "--variant is for single runs" in result.output


@pytest.mark.slow
def test_sweep_command_prints_sweep_json_and_the_table(tmp_path, fast):
    import subprocess
    import sys

    data = make_dataset(tmp_path / "data", images=3)
    argv = [sys.executable, "-m", "kohyawan", "sweep", "--profile", "character", "--dataset", str(data),
            "--task", "t2v-1.3B", "--variants", "conservative,aggressive", "--gpus", "0,1", "--rehearse",
            "--runs-dir", str(tmp_path / "runs"), "--name", "cli"]
    proc = subprocess.run(argv + ["--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["version"] == 1 and [r["variant"] for r in doc["variants"]] == ["conservative", "aggressive"]
    assert "started conservative on GPU 0" in proc.stderr
    table = subprocess.run(argv, capture_output=True, text=True)    # continues: nothing to do
    assert table.returncode == 0
    assert "sweep cli (seed" in table.stdout and "conservative" in table.stdout and "REHEARSAL" in table.stdout
