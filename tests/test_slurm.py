"""SLURM: the rendered job-array script (golden + invariants), the tools' output formats, and a batch
driven through fake sbatch/squeue/sacct/scontrol that really run the array tasks."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import golden
from batchkit import CLI, FAST_ENV, write_manifest
from kohyawan.batch import driver, slurm

HOSTILE = "/data/client's \"set\" $(touch pwned) `x`\nline2 é"

TASKS = [
    {"index": 0, "key": "brand-x/sarah", "env": {},
     "argv": ["/venv/bin/python", "-m", "kohyawan", "run", "--profile", "character", "--dataset", "/data/sarah",
              "--runs-dir", "/shared/runs", "--name", "brand-x__sarah", "--json", "--set", 'optimizer_type="AdamW8bit"']},
    {"index": 2, "key": "brand-x/tom", "env": {"HF_HOME": "/shared/hf cache"},
     "argv": ["/venv/bin/python", "-m", "kohyawan", "run", "--dataset", HOSTILE, "--name", "brand-x__tom"]},
    {"index": 3, "key": "brand-y/ana", "env": {},
     "argv": ["/venv/bin/python", "-m", "kohyawan", "runs", "resume", "/shared/runs/brand-y__ana", "--json"]},
]
SETTINGS = {"partition": "gpu", "gpus": 1, "cpus": 8, "mem": "64G", "time": "24:00:00", "account": "studio",
            "max_parallel": 2, "setup": ["module load cuda/12.4", "source /venv/bin/activate"],
            "sbatch_args": ["--constraint=a100"]}


def test_rendered_array_script_matches_golden():
    golden.check("slurm/array.sh", slurm.render_script(TASKS, SETTINGS, "clients.batch"))


def test_rendered_script_is_valid_bash_and_runs_each_task_with_its_exact_arguments(tmp_path):
    """Run the rendered script with `exec` pointed at a recorder: every argument arrives byte for byte."""
    text = slurm.render_script(TASKS, {"gpus": 0}, "b")
    assert "--gres" not in text and "#SBATCH --array=0,2-3" in text
    assert subprocess.run(["bash", "-n", "-c", text]).returncode == 0
    recorder = tmp_path / "rec.py"
    recorder.write_text("import json, os, sys; json.dump({'argv': sys.argv[1:], 'hf': os.environ.get('HF_HOME')}, "
                        "open(os.environ['OUT'], 'w'))")
    for task in TASKS:
        script = text.replace("exec /venv/bin/python", f"exec python3 {recorder}")
        out = tmp_path / f"{task['index']}.json"
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(task["index"]), "OUT": str(out)}
        subprocess.run(["bash", "-c", script], env=env, check=True, cwd=tmp_path)
        got = json.loads(out.read_text())
        assert got["argv"] == task["argv"][1:]
        assert got["hf"] == task["env"].get("HF_HOME")
    assert not (tmp_path / "pwned").exists()
    wrong = subprocess.run(["bash", "-c", text], env={**os.environ, "SLURM_ARRAY_TASK_ID": "1"},
                           capture_output=True, text=True)
    assert wrong.returncode == 2 and "has no job" in wrong.stderr


def test_array_spec_and_job_name():
    assert slurm.array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert slurm.array_spec([3]) == "3"
    assert slurm.job_name("my batch/../x") == "kohyawan-my-batch-..-x"


def test_sbatch_argv_keeps_paths_out_of_the_script_and_escapes_percent(tmp_path):
    argv = slurm.sbatch_argv(Path("/s/submit.sh"), Path("/b/100% done/slurm"), Path("/work dir"))
    assert argv == ["sbatch", "--parsable", "--output=/b/100%% done/slurm/slurm-%A_%a.out", "--chdir=/work dir",
                    "/s/submit.sh"]


def test_parsers_follow_the_real_formats():
    assert slurm.parse_sbatch("12345\n") == "12345"
    assert slurm.parse_sbatch("12345;cluster-a\n") == "12345"
    with pytest.raises(Exception, match="no job id"):
        slurm.parse_sbatch("sbatch: error: Batch job submission failed: Invalid partition name specified\n")
    assert slurm.parse_squeue("123_0|RUNNING\n123_4|PENDING\n") == {"123_0": "RUNNING", "123_4": "PENDING"}
    sacct = ("123_0|COMPLETED|0:0\n123_0.batch|COMPLETED|0:0\n123_0.extern|COMPLETED|0:0\n"
             "123_1|FAILED|1:0\n123_2|CANCELLED by 0|0:15\n123_3|OUT_OF_MEMORY|0:125\n123_[4-7]|PENDING|0:0\n")
    assert slurm.parse_sacct(sacct) == {"123_0": ("COMPLETED", 0), "123_1": ("FAILED", 1), "123_2": ("CANCELLED", 0),
                                        "123_3": ("OUT_OF_MEMORY", 0)}
    sc = ("JobId=125 ArrayJobId=123 ArrayTaskId=1 JobName=kohyawan-b UserId=root(0) JobState=FAILED "
          "Reason=NonZeroExitCode Dependency=(null) ExitCode=1:0\n")
    assert slurm.parse_scontrol(sc) == {"123_1": ("FAILED", 1)}


MANIFEST = """
[defaults]
profile = "character"
task = "t2v-1.3B"
rehearse = true
registry = "registry"

[slurm]
gpus = 0
cpus = 1
mem = "1G"
time = "0:10:00"
poll_seconds = 0.2

[[jobs]]
client = "brand-x"
name = "sarah"
dataset = "data/sarah"

[[jobs]]
client = "brand-x"
name = "tom"
dataset = "data/tom"
env = { KOHYAWAN_REHEARSE_FAULTS = "crash@2" }

[[jobs]]
client = "brand-y"
name = "ana"
dataset = "data/ana"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for tool in ("sbatch", "squeue", "sacct", "scontrol"):
        (bin_dir / tool).symlink_to(Path(__file__).parent / "slurm" / "fake_slurm.py")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_STATE", str(tmp_path / "slurmstate"))
    for k, v in FAST_ENV.items():
        monkeypatch.setenv(k, v)
    return tmp_path / "slurmstate"


@pytest.mark.slow
def test_without_accounting_final_states_come_from_scontrol(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_NO_ACCOUNTING", "1")      # sacct fails as on a cluster without slurmdbd
    path = write_manifest(tmp_path, MANIFEST[:MANIFEST.index('[[jobs]]\nclient = "brand-x"\nname = "tom"')])
    doc = driver.run(driver.BatchOptions(manifest=path, slurm=True, kohyawan=CLI))
    (job,) = doc["jobs"]
    assert job["state"] == "succeeded" and job["slurm_state"] == "COMPLETED" and job["exit_code"] == 0


@pytest.mark.slow
def test_batch_through_fake_slurm_merges_results_and_exports(tmp_path, fake_slurm, monkeypatch):
    path = write_manifest(tmp_path, MANIFEST)
    messages = []
    doc = driver.run(driver.BatchOptions(manifest=path, slurm=True, kohyawan=CLI), say=messages.append)
    jobs = {j["key"]: j for j in doc["jobs"]}
    assert doc["counts"] == {"pending": 0, "running": 0, "succeeded": 2, "failed": 1}, messages
    assert jobs["brand-x/sarah"]["slurm_job"] == "1000_0" and jobs["brand-y/ana"]["slurm_job"] == "1000_2"
    assert jobs["brand-x/sarah"]["exported_version"] == 1 and jobs["brand-x/sarah"]["slurm_state"] == "COMPLETED"
    tom = jobs["brand-x/tom"]
    assert tom["slurm_state"] == "FAILED" and tom["exit_code"] == 1
    assert tom["reason"] == json.loads(Path(tom["run_dir"], "run.json").read_text())["reason"]
    script = (tmp_path / "clients.batch" / "slurm" / "submit-001.sh").read_text()
    assert "#SBATCH --array=0-2" in script and "--gres" not in script
    assert (tmp_path / "clients.batch" / "slurm" / "slurm-1000_1.out").is_file()
    # Running again submits nothing new; --retry-failed submits only the failed job, as array task 1.
    path.write_text(path.read_text().replace('env = { KOHYAWAN_REHEARSE_FAULTS = "crash@2" }\n', ""))
    again = driver.run(driver.BatchOptions(manifest=path, slurm=True, kohyawan=CLI, retry_failed=True))
    assert again["counts"]["succeeded"] == 3
    script2 = (tmp_path / "clients.batch" / "slurm" / "submit-002.sh").read_text()
    assert "#SBATCH --array=1\n" in script2 and "brand-x__tom.r2" in script2


@pytest.mark.slow
def test_a_task_that_never_ran_fails_with_the_slurm_state(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_FAIL_TASKS", "0:NODE_FAIL")
    path = write_manifest(tmp_path, MANIFEST[:MANIFEST.index('[[jobs]]\nclient = "brand-x"\nname = "tom"')])
    doc = driver.run(driver.BatchOptions(manifest=path, slurm=True, kohyawan=CLI))
    (sarah,) = doc["jobs"]
    assert sarah["state"] == "failed" and "SLURM NODE_FAIL" in sarah["reason"] and "no run.json" in sarah["reason"]


@pytest.mark.slow
def test_a_task_cut_short_by_its_time_limit_is_resumed_on_the_next_submission(tmp_path, fake_slurm, monkeypatch):
    path = write_manifest(tmp_path, MANIFEST[:MANIFEST.index('[[jobs]]\nclient = "brand-x"\nname = "tom"')])
    monkeypatch.setenv("KOHYAWAN_REHEARSE_STEP_S", "0.4")
    monkeypatch.setenv("FAKE_SLURM_FAIL_TASKS", "0:TIMEOUT@4")
    doc = driver.run(driver.BatchOptions(manifest=path, slurm=True, kohyawan=CLI))
    (sarah,) = doc["jobs"]
    assert sarah["state"] == "pending" and sarah["slurm_state"] == "TIMEOUT", sarah
    assert json.loads(Path(sarah["run_dir"], "run.json").read_text())["status"] == "stopped"
    monkeypatch.delenv("FAKE_SLURM_FAIL_TASKS")
    monkeypatch.setenv("KOHYAWAN_REHEARSE_STEP_S", "0.02")
    doc = driver.run(driver.BatchOptions(manifest=path, slurm=True, kohyawan=CLI))
    (sarah,) = doc["jobs"]
    assert sarah["state"] == "succeeded" and sarah["tries"] == 1 and sarah["attempts"] == 2
    script = (tmp_path / "clients.batch" / "slurm" / "submit-002.sh").read_text()
    assert "kohyawan runs resume" in script and str(Path(sarah["run_dir"])) in script


def test_slurm_tools_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    path = write_manifest(tmp_path, MANIFEST)
    from kohyawan.errors import ToolMissing

    with pytest.raises(ToolMissing, match="sbatch not found"):
        driver.run(driver.BatchOptions(manifest=path, slurm=True, kohyawan=CLI))


# --- a real single-node SLURM (Debian's slurm-wlm + munge), started by tests/slurm/start_slurm.sh ---------
@pytest.fixture(scope="module")
def real_slurm(tmp_path_factory):
    script = Path(__file__).parent / "slurm" / "start_slurm.sh"
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(t) is None]
    why = f"SLURM not installed ({', '.join(missing)} missing; apt-get install -y slurm-wlm munge)" if missing else \
        "starting slurmd needs root" if os.geteuid() != 0 else None
    if why:
        if os.environ.get("KOHYAWAN_REQUIRE_SLURM") == "1":
            pytest.fail(why)
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run(["bash", str(script), str(folder)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        subprocess.run(["bash", str(script), str(folder), "stop"])
        pytest.fail(f"start_slurm.sh failed: {proc.stderr[-2000:]}")
    yield folder / "slurm.conf"
    subprocess.run(["bash", str(script), str(folder), "stop"], timeout=60)


@pytest.mark.slow
@pytest.mark.integration
def test_rehearsal_batch_through_a_real_slurm(tmp_path, real_slurm, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(real_slurm))
    for k, v in FAST_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent.parent))   # sbatch exports it to the tasks
    path = write_manifest(tmp_path, MANIFEST.replace("poll_seconds = 0.2", "poll_seconds = 0.5"))
    messages = []
    doc = driver.run(driver.BatchOptions(manifest=path, slurm=True, kohyawan=CLI), say=messages.append)
    jobs = {j["key"]: j for j in doc["jobs"]}
    assert doc["counts"] == {"pending": 0, "running": 0, "succeeded": 2, "failed": 1}, messages
    assert jobs["brand-x/sarah"]["slurm_state"] == "COMPLETED" and jobs["brand-x/sarah"]["exported_version"] == 1
    assert jobs["brand-x/tom"]["slurm_state"] == "FAILED" and jobs["brand-x/tom"]["exit_code"] == 1
    job_id = jobs["brand-x/sarah"]["slurm_job"].split("_")[0]
    for j in doc["jobs"]:
        assert j["slurm_job"] == f"{job_id}_{['brand-x/sarah', 'brand-x/tom', 'brand-y/ana'].index(j['key'])}"
        assert (tmp_path / "clients.batch" / "slurm" / f"slurm-{j['slurm_job']}.out").is_file()
    # The run folders were written by the tasks, on "shared storage", and read back by the driver.
    run = json.loads((tmp_path / "clients.batch" / "runs" / "brand-y__ana" / "run.json").read_text())
    assert run["status"] == "succeeded"


@pytest.mark.slow
def test_interrupted_following_picks_the_array_up_again_without_resubmitting(tmp_path, fake_slurm):
    from kohyawan.batch import jobs as jobs_mod, manifest as manifest_mod
    from kohyawan.batch.queue import Queue

    path = write_manifest(tmp_path, MANIFEST.replace('env = { KOHYAWAN_REHEARSE_FAULTS = "crash@2" }\n', ""))
    m = manifest_mod.load(path)
    folder = tmp_path / "clients.batch"
    q = Queue(folder)
    q.sync(m.jobs)

    def ctrl_c(seconds):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        slurm.drive(q, m, jobs_mod.Launch(runs_dir=folder / "runs", rehearse=True, kohyawan=CLI), sleep=ctrl_c)
    assert {r["state"] for r in q.rows()} == {"running"} and {r["slurm_job"] for r in q.rows()} == {"1000_0", "1000_1", "1000_2"}
    q.close()
    doc = driver.run(driver.BatchOptions(manifest=path, slurm=True, kohyawan=CLI))
    assert doc["counts"]["succeeded"] == 3
    assert sorted(p.name for p in (folder / "slurm").glob("submit-*.sh")) == ["submit-001.sh"]


def test_dry_run_with_slurm_shows_the_script_and_submits_nothing(tmp_path, fake_slurm):
    from click.testing import CliRunner

    from kohyawan.cli import cli

    path = write_manifest(tmp_path, MANIFEST)
    result = CliRunner().invoke(cli, ["batch", str(path), "--slurm", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "SLURM job array that would be submitted:" in result.output
    assert "#SBATCH --array=0-2" in result.output and "--name brand-x__tom" in result.output
    assert not fake_slurm.exists() and not (tmp_path / "clients.batch").exists()
