"""Ledger, notifications, preflight, cache skipping and the supervisor on small real processes."""

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from kohyawan.run import preflight
from kohyawan.errors import BadInput, ToolMissing
from kohyawan.run.ledger import Ledger
from kohyawan.run.notify import Notifier
from kohyawan.run.runlock import RunLock
from kohyawan.run.attemptconfig import attempt_config
from kohyawan.run.supervise import Supervisor, Timeouts, group_alive


def test_ledger_is_rewritten_atomically_with_the_schema(tmp_path):
    led = Ledger.create(tmp_path / "r", run_id="r", profile="character", task="t2v-A14B", total_steps=100)
    led.start_attempt(rung=None, changes={}, resumed_from=None, first_step=0)
    led.end_attempt(outcome="oom_vram", reason="CUDA out of memory", exit_code=1, steps=[0, 42])
    data = json.loads((tmp_path / "r" / "run.json").read_text())
    assert data["version"] == 1 and data["status"] == "running" and data["attempts"][0]["steps"] == [0, 42]
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]
    f = tmp_path / "r" / "a.safetensors"
    f.write_bytes(b"abc")
    entry = led.add_checkpoint(f, step=5, epoch=1, attempt=1)
    assert entry["bytes"] == 3 and entry["sha256"].startswith("ba7816bf")


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):
        pass


def test_webhook_posts_slack_and_discord_fields_and_failures_never_raise():
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    warnings = []
    try:
        n = Notifier([f"http://127.0.0.1:{server.server_port}/hook", "http://127.0.0.1:9/closed"], run_id="r1",
                     warn=warnings.append, timeout_s=2)
        assert n.send("succeeded", "all done", step=10) == 1
        n.send("ladder", "again")
    finally:
        server.shutdown()
    msg = _Hook.received[0]
    assert msg["text"] == msg["content"] == "kohyawan r1: all done" and msg["event"] == "succeeded" and msg["step"] == 10
    assert len(warnings) == 1 and "9/closed" in warnings[0]


def test_preflight_failures_are_one_clear_line(tmp_path):
    with pytest.raises(ToolMissing, match="--trainer-dir is required"):
        preflight.trainer(None, "python", "accelerate")
    with pytest.raises(ToolMissing, match="trainer checkout not found"):
        preflight.trainer(tmp_path / "nope", "python", "accelerate")
    checkout = tmp_path / "musubi"
    (checkout / "src" / "musubi_tuner").mkdir(parents=True)
    with pytest.raises(ToolMissing, match="not a musubi-tuner checkout"):
        preflight.trainer(checkout, "python", "accelerate")
    for s in ("wan_cache_latents.py", "wan_cache_text_encoder_outputs.py", "wan_train_network.py"):
        (checkout / "src" / "musubi_tuner" / s).write_text("")
    with pytest.raises(ToolMissing, match="trainer python not found"):
        preflight.trainer(checkout, str(tmp_path / "no-python"), "accelerate")
    with pytest.raises(ToolMissing, match="not importable"):
        preflight.trainer(checkout, sys.executable, "python")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BadInput, match="not writable"):
        preflight.runs_dir_writable(blocker / "runs")
    with pytest.raises(BadInput, match="not enough disk space"):
        preflight.disk(tmp_path, 10**18)
    need = preflight.disk_needed("t2v-A14B", {"save_precision": "bf16", "save_every_n_steps": 100, "save_state": True,
                                              "optimizer_type": "AdamW8bit"}, 1000, 10, 1, 32)
    assert 10 * 0.29e9 < need < 11 * 3e9  # 10 saves + final of ~307 MB LoRA plus states


def test_cli_preflight_fails_before_anything_runs(tmp_path):
    from runtime_helpers import env, make_dataset
    import subprocess

    data = make_dataset(tmp_path / "d", n=1)
    r = subprocess.run([sys.executable, "-m", "kohyawan", "run", "--profile", "character", "--dataset", str(data),
                        "--task", "t2v-1.3B", "--runs-dir", str(tmp_path / "runs")], env=env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --trainer-dir is required")
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_attempt_config_drops_epochs_and_overrides_last():
    from kohyawan.files import toml as tomllib  # stdlib tomllib, or tomli on Python 3.10

    text = '[training]\nmax_train_epochs = 10\nmax_train_steps = 99\noutput_name = "a"\n'
    out = attempt_config(text, {"max_train_steps": 40, "output_name": "a-a02", "lr_scheduler_args": ["x=1", "k='c'"]})
    flat = {}
    for body in tomllib.loads(out).values():
        flat.update(body)
    assert flat == {"max_train_steps": 40, "output_name": "a-a02", "lr_scheduler_args": ["x=1", "k='c'"]}


def test_one_supervisor_per_run(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(BadInput, match="already being supervised"):  # bad usage: exit 2
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire()


STUBBORN = "import signal, time, sys\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('ready', flush=True)\n" \
           "time.sleep(60)\n"


def test_stop_escalates_when_the_trainer_ignores_sigint(tmp_path):
    lines = []

    def tick(sup, now):
        if lines:
            sup.request_stop("stall", "test")

    sup = Supervisor([sys.executable, "-c", STUBBORN], log_path=tmp_path / "c.log", on_line=lines.append,
                     on_tick=tick, tick_s=0.1, timeouts=Timeouts(sigint_s=0.5, sigterm_s=5))
    t0 = time.monotonic()
    result = sup.run()
    assert result.stopped_for == "stall" and result.escalated == ["SIGTERM"]
    assert result.exit_code == -signal.SIGTERM and time.monotonic() - t0 < 10
    assert not group_alive(sup.pid)
    assert (tmp_path / "c.log").read_text() == "ready\n"


def test_output_split_on_cr_and_complete_log(tmp_path):
    code = "import sys\nfor i in range(50):\n    sys.stderr.write(f'\\rsteps: {i}')\nprint('\\ndone')\n"
    seen = []
    sup = Supervisor([sys.executable, "-c", code], log_path=tmp_path / "c.log", on_line=seen.append)
    result = sup.run()
    assert result.exit_code == 0 and seen[-1] == "done" and seen.count("steps: 49") == 1
    assert (tmp_path / "c.log").read_bytes().count(b"\r") == 50


def test_user_environment_reaches_the_trainer(tmp_path):
    seen = []
    sup = Supervisor([sys.executable, "-c", "import os; print(os.environ['MY_VAR'], os.environ['PYTHONUNBUFFERED'])"],
                     log_path=tmp_path / "c.log", env={**os.environ, "MY_VAR": "x y $(z)"}, on_line=seen.append)
    assert sup.run().exit_code == 0 and seen == ["x y $(z) 1"]


def test_uncaptioned_videos_fail_in_preflight(tmp_path):
    videos = tmp_path / "d" / "videos"
    videos.mkdir(parents=True)
    (videos / "clip.mp4").write_bytes(b"not decoded here")
    with pytest.raises(BadInput, match="text-encoder caching would fail"):
        preflight.captions(tmp_path / "d")
    (videos / "clip.txt").write_text("a clip")
    preflight.captions(tmp_path / "d")


def test_prepared_dataset_gets_the_dataset_check_as_warnings(tmp_path):
    from PIL import Image

    images = tmp_path / "d" / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(images / "a.png")
    Image.new("RGB", (64, 64)).save(images / "b.png")
    (images / "b.txt").write_text("a caption")
    (tmp_path / "d" / "dataset.toml").write_text(
        f'[general]\nresolution = [64, 64]\ncaption_extension = ".txt"\nenable_bucket = true\n\n'
        f'[[datasets]]\nimage_directory = "{images}"\ncache_directory = "{tmp_path / "cache"}"\n')
    warnings = []
    preflight.dataset(tmp_path / "d", warn=warnings.append)
    assert warnings == ["dataset check: a.png: missing caption a.txt"]


def test_a_failing_callback_never_leaves_the_trainer_running(tmp_path):
    def tick(sup, now):
        raise RuntimeError("bug in a callback")

    sup = Supervisor([sys.executable, "-c", "import time; time.sleep(60)"], log_path=tmp_path / "c.log",
                     on_tick=tick, tick_s=0.1)
    with pytest.raises(RuntimeError):
        sup.run()
    sup.proc.wait(timeout=10)
    assert not group_alive(sup.pid)


def test_attempt_config_replaces_rendered_values_instead_of_repeating_them():
    from kohyawan.files import toml as tomllib  # stdlib tomllib, or tomli on Python 3.10

    from kohyawan.run.attemptconfig import attempt_config

    text = '[save_load]\noutput_name = "character"\nsave_state = true\n\n[training]\nmax_train_epochs = 15\n'
    out = attempt_config(text, {"output_name": "character-a02", "max_train_steps": 40})
    assert out.count("output_name =") == 1 and "max_train_epochs" not in out
    assert tomllib.loads(out)["kohyawan_attempt"]["output_name"] == "character-a02"


def test_resume_points_whose_state_folder_is_gone_fall_back_to_the_weights(tmp_path):
    from kohyawan.run import ladder, training

    whole = tmp_path / "a-step4-state"
    whole.mkdir()
    for name in training.STATE_FILES:
        (whole / name).write_bytes(b"x")
    partial = tmp_path / "a-step8-state"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"x")
    lora8 = tmp_path / "a-step8.safetensors"
    lora8.write_bytes(b"x")
    saves = [ladder.Saved(4, str(whole), None), ladder.Saved(8, str(partial), str(lora8)),
             ladder.Saved(12, str(tmp_path / "gone-state"), str(tmp_path / "gone.safetensors"))]
    assert training.present(saves) == [ladder.Saved(4, str(whole), None), ladder.Saved(8, None, str(lora8))]


def test_parallel_rehearsals_share_one_set_of_stand_in_models(tmp_path):
    # a sweep starts several rehearsals at once in one runs folder; none may read a half-written marker
    import json
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from kohyawan.config import profiles; from kohyawan.run import rehearsal; "
            "spec = profiles.resolve('character', task='t2v-1.3B'); "
            "out = rehearsal.rehearsal_models(spec, Path(sys.argv[1])); print(out.models.dit)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results]
    assert len({r[0] for r in results}) == 1
    marker = json.loads((tmp_path / ".rehearsal-models" / "t2v-1.3B" / ".complete").read_text())
    assert marker["dit"] == results[0][0].strip()
