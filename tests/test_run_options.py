"""RunOptions: one definition, the options object run.json keeps, and what `runs resume` merges over it."""

import json
from pathlib import Path

import click

from kohyawan.run.options import RunOptions

# run.json's options object as kohyawan has always written it: these keys, in this order (new keys are
# added at the end: cache_dir came with the shared cache store)
KEYS = ["trainer_dir", "python", "launcher", "accelerate_args", "gpus", "max_attempts", "notify", "rehearse",
        "gpu_memory_gb", "start_rung", "data_parallel", "cache_dir"]


def test_the_stored_options_keep_their_keys_order_and_json_form(tmp_path):
    opts = RunOptions(runs_dir=tmp_path, name="x", trainer_dir=Path("/opt/musubi"), python="/opt/py",
                      accelerate_args=("--mixed_precision=bf16",), gpus="0,1", max_attempts=3,
                      notify=("http://hook",), gpu_memory_gb=12.0, data_parallel=True, recache=True, quiet=True,
                      cache_dir=Path("/srv/runs/.cache"))
    doc = opts.to_document()
    assert list(doc) == KEYS
    assert json.dumps(doc) == (
        '{"trainer_dir": "/opt/musubi", "python": "/opt/py", "launcher": "accelerate", "accelerate_args": '
        '["--mixed_precision=bf16"], "gpus": "0,1", "max_attempts": 3, "notify": ["http://hook"], "rehearse": false, '
        '"gpu_memory_gb": 12.0, "start_rung": "auto", "data_parallel": true, "cache_dir": "/srv/runs/.cache"}')
    assert RunOptions(runs_dir=tmp_path).to_document() == {
        "trainer_dir": None, "python": "python", "launcher": "accelerate", "accelerate_args": [], "gpus": None,
        "max_attempts": None, "notify": [], "rehearse": False, "gpu_memory_gb": None, "start_rung": "auto",
        "data_parallel": False, "cache_dir": None}


def test_a_run_json_from_before_the_cache_store_resumes_with_its_own_caches(tmp_path):
    before = {k: None for k in KEYS[:-1]}   # options as runs wrote them before cache_dir existed
    opts = RunOptions.resolve(tmp_path, {"trainer_dir": None, "python": None}, before)
    assert opts.cache_dir is None            # None: the run folder's own cache/, as the run was started
    stored = RunOptions.resolve(tmp_path, {}, {"cache_dir": "/srv/runs/.cache"})
    assert stored.cache_dir == Path("/srv/runs/.cache")


def test_stored_options_round_trip_and_session_options_are_not_stored(tmp_path):
    opts = RunOptions(runs_dir=tmp_path, trainer_dir=Path("/opt/musubi"), launcher="python", gpus="",
                      notify=("a", "b"), rehearse=True, start_rung="base")
    back = RunOptions.resolve(tmp_path, {}, json.loads(json.dumps(opts.to_document())), plain_interval_s=5.0)
    assert back.to_document() == opts.to_document()
    assert back.trainer_dir == Path("/opt/musubi") and back.notify == ("a", "b") and back.gpus == ""
    assert back.plain_interval_s == 5.0 and not back.recache and back.name is None


def test_a_given_value_wins_over_the_stored_one_even_when_falsy(tmp_path):
    stored = {"trainer_dir": "/old", "python": "/old/py", "gpus": "0,1", "max_attempts": 5, "rehearse": True,
              "data_parallel": True, "gpu_memory_gb": 12.0, "notify": ["http://old"], "start_rung": "base"}
    given = {"gpus": "", "max_attempts": 0, "rehearse": False, "data_parallel": False, "gpu_memory_gb": 0.0,
             "python": ""}
    opts = RunOptions.resolve(tmp_path, given, stored)
    assert (opts.gpus, opts.max_attempts, opts.rehearse, opts.data_parallel, opts.gpu_memory_gb, opts.python) == \
        ("", 0, False, False, 0.0, "")
    # what was not given (None) comes from run.json, and what run.json lacks from the defaults
    assert opts.trainer_dir == Path("/old") and opts.notify == ("http://old",) and opts.start_rung == "base"
    assert opts.launcher == "accelerate" and opts.accelerate_args == ()
    assert opts.processes == 1


def _params(command: click.Command, args: list[str]) -> dict:
    with command.make_context(command.name, args, resilient_parsing=False) as ctx:
        return dict(ctx.params)


def test_options_not_given_on_the_command_line_are_none(tmp_path):
    from kohyawan.commands.run import resume, run

    params = _params(run, ["--profile", "character", "--dataset", str(tmp_path)])
    for name in ("trainer_dir", "python", "launcher", "gpus", "max_attempts", "rehearse", "gpu_memory",
                 "data_parallel", "name"):
        assert params[name] is None, name
    assert params["accelerate_args"] == () and params["notify"] == ()
    params = _params(run, ["--profile", "character", "--dataset", str(tmp_path), "--rehearse", "--data-parallel",
                           "--gpus", ""])
    assert params["rehearse"] is True and params["data_parallel"] is True and params["gpus"] == ""
    params = _params(resume, ["some-run"])
    assert params["trainer_dir"] is None and params["python"] is None


def test_the_command_layer_merges_what_runs_resume_is_given_over_run_json(tmp_path):
    from kohyawan.commands.run import _options

    stored = RunOptions(runs_dir=tmp_path, trainer_dir=Path("/opt/musubi"), python="/opt/py", gpus="1",
                        max_attempts=2, rehearse=True).to_document()
    opts = _options({"trainer_dir": tmp_path / "other", "python": None}, runs_dir=tmp_path, stored=stored,
                    plain=True, interval=7.0)
    assert opts.trainer_dir == (tmp_path / "other").resolve() and opts.python == "/opt/py"
    assert (opts.gpus, opts.max_attempts, opts.rehearse) == ("1", 2, True)
    assert opts.live is False and opts.plain_interval_s == 7.0 and opts.runs_dir == tmp_path
    fresh = _options({"accelerate_args": (), "notify": ("http://x",)}, runs_dir=tmp_path)
    assert fresh.accelerate_args == () and fresh.notify == ("http://x",) and fresh.live is None
