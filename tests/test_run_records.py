"""What a run records must not lie: paths that resolve from anywhere, the steps an attempt cut short really
trained, the config each attempt ran with, checkpoints' epochs (issue 15). Real processes, simulated trainer."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runtime_helpers import env, make_dataset, run_cli, wait_for

from kohyawan.run.checkpoints import list_checkpoints

pytestmark = pytest.mark.slow

KOHYAWAN = [sys.executable, "-m", "kohyawan"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def _run_args(data, name, *extra):
    """A run in the default runs folder (./runs, relative to the working directory)."""
    return [*KOHYAWAN, "run", "--profile", "character", "--dataset", str(data), "--task", "t2v-1.3B",
            "--name", name, "--rehearse", "--plain", "--interval", "1000", "--set", "max_train_epochs=5",
            "--set", "save_every_n_steps=5", "--set", "resolution=[64,64]", *extra]


def _cli(args, cwd, **extra_env):
    return subprocess.run(args, cwd=cwd, env=env(**extra_env), capture_output=True, text=True, timeout=180)


def _saved_step(run_dir: Path):
    try:
        saves = [s for st in json.loads((run_dir / "run.json").read_text()).get("stages", [])
                 for s in st.get("saves", [])]
    except (OSError, ValueError):
        return None
    return max((s["step"] for s in saves), default=None)


# --- item 1: every recorded path resolves the same way from any working directory -----------------------
def test_resumed_run_in_the_default_relative_runs_folder_records_absolute_paths(data, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen(_run_args(data, "st"), cwd=work, env=env(KOHYAWAN_REHEARSE_STEP_S="0.2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = work / "runs" / "st"
    wait_for(lambda: _saved_step(run_dir))
    assert _cli([*KOHYAWAN, "runs", "stop", "st"], work).returncode == 0
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    r = _cli([*KOHYAWAN, "runs", "resume", "st", "--plain"], work)
    assert r.returncode == 0, r.stderr
    d = json.loads((run_dir / "run.json").read_text())
    assert len(d["attempts"]) == 2 and d["status"] == "succeeded"
    # the same listing from the run's parent, from inside the runs folder and from elsewhere
    listings = [_cli([*KOHYAWAN, "checkpoints", where, "--json", "--no-effect"], cwd)
                for where, cwd in (("runs/st", work), ("st", work / "runs"), (str(run_dir), tmp_path))]
    assert all(r.returncode == 0 for r in listings), [r.stderr for r in listings]
    docs = [json.loads(r.stdout) for r in listings]
    assert docs[0] == docs[1] == docs[2]
    assert [c["flags"] for c in docs[0]] == [[]] * len(docs[0]) and len(docs[0]) == len(d["checkpoints"])
    assert any(c["candidate"] for c in docs[0]) and {c["attempt"] for c in docs[0]} == {1, 2}
    steps = [c["step"] for c in docs[0]]
    epochs = [c["epoch"] for c in docs[0]]
    assert steps == sorted(steps) and epochs == sorted(epochs), (steps, epochs)
    from kohyawan.run.ledger import recorded_paths

    paths = [record[key] for record, key in recorded_paths(d)]
    assert len(paths) > 10 and all(os.path.isabs(p) for p in paths), [p for p in paths if not os.path.isabs(p)]


def _finished_run(data, tmp_path, name):
    runs = tmp_path / "runs"
    r = run_cli([*_run_args(data, name), "--runs-dir", str(runs)])
    assert r.returncode == 0, r.stderr
    return runs / name


def test_older_relative_records_are_still_found_and_made_absolute(data, tmp_path):
    from kohyawan.run.ledger import Ledger, recorded_paths

    run_dir = _finished_run(data, tmp_path, "old")
    doc = json.loads((run_dir / "run.json").read_text())
    fields = recorded_paths(doc)
    for i, (record, key) in enumerate(fields):  # how older kohyawan wrote them: relative to its cwd, or the run
        rel = Path(record[key]).relative_to(run_dir)
        record[key] = str(Path("runs", "old", rel) if i % 2 else rel)
    (run_dir / "run.json").write_text(json.dumps(doc))
    items = list_checkpoints(run_dir, effect=False)
    assert items and all(i.flags == [] and Path(i.path).is_file() for i in items)
    led = Ledger.load(run_dir)
    assert led.absolutize() and not led.absolutize()
    assert all(Path(record[key]).is_relative_to(run_dir) and Path(record[key]).exists()
               for record, key in recorded_paths(led.data))


def test_a_moved_run_folder_still_resolves_its_absolute_records(data, tmp_path):
    from kohyawan.run.ledger import locate, recorded_paths

    run_dir = _finished_run(data, tmp_path, "mv")
    moved = tmp_path / "elsewhere" / "mv"
    moved.parent.mkdir()
    run_dir.rename(moved)
    doc = json.loads((moved / "run.json").read_text())
    assert all(locate(moved, record[key]).is_relative_to(moved) for record, key in recorded_paths(doc))
    assert all(i.flags == [] for i in list_checkpoints(moved, effect=False))


# --- item 9: an attempt cut short by a killed kohyawan is closed at the last step it reached --------------
def test_attempt_of_a_killed_kohyawan_is_closed_at_the_last_step_its_metrics_and_saves_show(data, tmp_path):
    runs = tmp_path / "runs"
    args = [*_run_args(data, "k9", "--set", "save_every_n_steps=4"), "--runs-dir", str(runs)]
    proc = subprocess.Popen(args, env=env(KOHYAWAN_REHEARSE_STEP_S="0.2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for(lambda: (_saved_step(runs / "k9") or 0) >= 8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = run_cli([*KOHYAWAN, "runs", "resume", "k9", "--runs-dir", str(runs), "--plain"])
    assert r.returncode == 0, r.stderr
    d = json.loads((runs / "k9" / "run.json").read_text())
    first, second = d["attempts"]
    metrics = [json.loads(line) for line in (runs / "k9" / "metrics.jsonl").read_text().splitlines()]
    reached = max(m["step"] for m in metrics if m["attempt"] == 1)
    saved = [c["step"] for c in d["checkpoints"] if c["attempt"] == 1]
    assert first["outcome"] == "interrupted" and max(saved) >= 8
    assert first["steps"] == [0, max(reached, *saved)] and first["steps"][1] >= 8
    assert second["steps"][0] == max(saved) and second["steps"][0] <= first["steps"][1]
    assert second["outcome"] == "succeeded" and second["steps"][1] == 20


# --- item 10: every attempt names the config that ran ---------------------------------------------------
def _toml(path: Path) -> dict:
    from kohyawan.files import toml as tomllib  # stdlib tomllib, or tomli on Python 3.10

    flat = {}
    for body in tomllib.loads(path.read_text()).values():
        flat.update(body if isinstance(body, dict) else {})
    return flat


def test_every_attempt_launches_with_its_own_config_and_records_that_command(data, tmp_path):
    runs = tmp_path / "runs"
    r = run_cli([*_run_args(data, "a10", "--start-rung", "base"), "--runs-dir", str(runs)],
                KOHYAWAN_REHEARSE_FAULTS="oom@7", KOHYAWAN_REHEARSE_FAULT_STATE=str(tmp_path / "faults.json"))
    assert r.returncode == 0, r.stderr
    run_dir = runs / "a10"
    d = json.loads((run_dir / "run.json").read_text())
    assert [a["rungs"] for a in d["attempts"]] == [[], ["fp8_base"]]
    for attempt in d["attempts"]:
        adir = run_dir / "attempts" / f"{attempt['n']:02d}"
        config = _toml(adir / "train.toml")
        assert config["output_name"] == attempt["output_name"]
        assert bool(config.get("fp8_base")) == ("fp8_base" in attempt["rungs"])
        assert config["dataset_config"] == str(adir / "dataset.toml") and (adir / "dataset.toml").is_file()
        plan = json.loads((adir / "plan.json").read_text())
        argv = next(s["argv"] for s in plan["stages"] if s["name"] == "train")
        assert argv[argv.index("--config_file") + 1] == str(adir / "train.toml")
        assert f"Loading settings from {adir / 'train.toml'}" in (adir / "console.log").read_text()
        assert str(adir / "train.toml") in (adir / "commands.sh").read_text()
    # the run folder's own files stay the current plan, for a manual run: no attempt's settings in them
    current = _toml(run_dir / "train.toml")
    assert current["output_name"] == "character" and "resume" not in current and current["fp8_base"] is True
    assert current["dataset_config"] == str(run_dir / "dataset.toml")
    top = json.loads((run_dir / "plan.json").read_text())
    argv = next(s["argv"] for s in top["stages"] if s["name"] == "train")
    assert argv[argv.index("--config_file") + 1] == str(run_dir / "train.toml")


# --- item 7: config render, the run's scheduler and the trainer count the warm-up alike ------------------
def test_rendered_warmup_is_the_warmup_the_runs_scheduler_uses(data, tmp_path):
    runs, lr_log = tmp_path / "runs", tmp_path / "lr.jsonl"
    # 0.13 x 20 steps = 2.6: the trainer truncates a ratio to 2 (rounding would say 3)
    extra = ("--set", "lr_warmup_steps=0.13", "--set", 'lr_scheduler="cosine"', "--start-rung", "base")
    r = run_cli([*_run_args(data, "w7", *extra), "--runs-dir", str(runs)], KOHYAWAN_REHEARSE_LR_LOG=str(lr_log))
    assert r.returncode == 0, r.stderr
    run_dir = runs / "w7"
    rendered = _toml(run_dir / "train.toml")["lr_warmup_steps"]
    args = _toml(run_dir / "attempts" / "01" / "train.toml")["lr_scheduler_args"]
    scheduler = int(next(a for a in args if a.startswith("warmup_steps=")).split("=")[1])
    lrs = [json.loads(line)["lr"] for line in lr_log.read_text().splitlines()]
    peak = lrs.index(max(lrs))  # the LR climbs for the warm-up steps, then decays
    plan = json.loads((run_dir / "plan.json").read_text())["steps"]
    assert rendered == scheduler == peak == plan["warmup_steps"] == int(0.13 * 20) == 2


# --- item 5: the resolution the media were prepared at is the plan's, in every command ---------------------
def test_the_prepared_resolution_is_what_render_estimate_run_and_the_notes_use(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    src = make_dataset(tmp_path / "src")  # 64x64 stills: prepared at 48 (the profile says 512)
    r = _cli([*KOHYAWAN, "dataset", "prepare", str(src), "--out", "data", "--resolution", "48", "--jobs", "1"], work)
    assert r.returncode == 0, r.stderr
    plan = ["--profile", "character", "--dataset", "data", "--task", "t2v-1.3B"]
    shown = json.loads(_cli([*KOHYAWAN, "config", "show", *plan, "--json"], work).stdout)
    value = next(v for v in shown["values"] if v["key"] == "dataset.resolution")
    assert (value["value"], value["source"]) == ([48, 48], "dataset-report")
    assert any("prepared at 48x48" in note for note in shown["notes"])

    def estimate(*sets):
        r = _cli([*KOHYAWAN, "estimate", *plan, "--vram", "24", "--json", *sets], work)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["rungs"], r.stderr

    prepared, _ = estimate()
    assert prepared == estimate("--set", "resolution=[48,48]")[0]
    larger, warned = estimate("--set", "resolution=[512,512]")
    assert larger != prepared and "differs from the 48x48 the media" in warned and "still trains at 48x48" in warned
    r = _cli([*KOHYAWAN, "run", *plan, "--name", "p5", "--rehearse", "--plain", "--set", "max_train_epochs=2"], work)
    assert r.returncode == 0, r.stderr
    assert "resolution = [48, 48]" in (work / "runs" / "p5" / "dataset.toml").read_text()
    r = _cli([*KOHYAWAN, "export", "runs/p5", "--name", "p5", "--kind", "character", "--client", "c", "--registry",
              "reg"], work)
    assert r.returncode == 0, r.stderr
    (notes,) = (work / "reg").rglob("*training_notes.md")
    assert "resolution `[48, 48]`" in notes.read_text()


# --- item 8: every checkpoint records its task and expert; lora inspect and checkpoints agree on epochs ---
def _checkpoints(run_dir: Path) -> list[dict]:
    r = run_cli([*KOHYAWAN, "checkpoints", str(run_dir), "--json", "--no-effect"])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _inspect(path: str) -> dict:
    r = run_cli([*KOHYAWAN, "lora", "inspect", path, "--json"])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_checkpoints_record_task_and_expert_and_a_resumed_runs_epochs_are_absolute(data, tmp_path):
    straight = _finished_run(data, tmp_path, "straight")
    runs = tmp_path / "runs"
    r = run_cli([*_run_args(data, "a8", "--start-rung", "base"), "--runs-dir", str(runs)],
                KOHYAWAN_REHEARSE_FAULTS="oom@7", KOHYAWAN_REHEARSE_FAULT_STATE=str(tmp_path / "faults.json"))
    assert r.returncode == 0, r.stderr
    resumed = _checkpoints(runs / "a8")
    assert {c["attempt"] for c in resumed} == {1, 2}
    # what an uninterrupted run's own files say, step by step (the trainer's count, nothing resumed)
    truth = {(c["step"], c["final"]): _inspect(c["path"])["metadata"] for c in _checkpoints(straight)}
    assert all(meta["ss_steps"] == str(step) for (step, _), meta in truth.items())
    for c in resumed:
        info = _inspect(c["path"])
        assert (info["task"], info["expert"], c["expert"]) == ("t2v-1.3B", "both", "both")
        assert str(c["epoch"]) == truth[(c["step"], c["final"])]["ss_epoch"], c
        assert (info["run"]["step"], info["run"]["epoch"], info["run"]["attempt"]) == (c["step"], c["epoch"],
                                                                                     c["attempt"])
        if c["attempt"] == 2 and not c["final"]:  # resumed: the trainer's own file counts from the attempt's start
            assert info["metadata"]["ss_steps"] != str(c["step"])
        if c["final"]:  # the run's final LoRA is stamped with the whole run's values (the trainer's kept aside)
            assert info["metadata"]["ss_steps"] == str(c["step"]) != info["metadata"]["kohyawan.trainer_ss_steps"]
    text = run_cli([*KOHYAWAN, "lora", "inspect", resumed[-1]["path"]]).stdout
    assert "trained   task t2v-1.3B, expert both" in text and f"run       a8 ({runs / 'a8'}): step 20, epoch" in text
