"""kohyawan run against the simulated trainer: real processes end to end (no mocked Popen)."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import media

from runtime_helpers import base_args, env, ledger, make_dataset, run_cli, trainer_processes, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def _summary(d):
    return [(a["outcome"], a["steps"], a["rung"]) for a in d["attempts"]]


def test_success_writes_ledger_checkpoints_metrics_and_a_real_lora(data, tmp_path):
    runs = tmp_path / "runs dir"
    r = run_cli(base_args(data, runs, "ok"))
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "ok")
    assert {"version", "id", "status", "profile", "task", "total_steps", "attempts", "checkpoints", "final"} <= set(d)
    assert d["version"] == 1 and d["status"] == "succeeded" and d["total_steps"] == 20
    a = d["attempts"][0]
    assert {"n", "rung", "changes", "outcome", "reason", "resumed_from", "steps", "exit_code", "peak_vram_gb",
            "peak_ram_gb"} <= set(a)
    assert _summary(d) == [("succeeded", [0, 20], None)]
    assert [c["step"] for c in d["checkpoints"]] == [5, 10, 15, 20, 20]
    assert all(c["bytes"] and len(c["sha256"]) == 64 for c in d["checkpoints"])
    metrics = [json.loads(line) for line in (runs / "ok" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 21)) and all(m["attempt"] == 1 for m in metrics)
    assert (runs / "ok" / "attempts" / "01" / "console.log").read_text().count("avr_loss=") >= 20
    assert (runs / "ok" / "attempts" / "01" / "train.toml").is_file()
    from safetensors import safe_open

    with safe_open(d["final"]["path"], "np") as f:
        keys = list(f.keys())
        meta = f.metadata()
        assert f.get_slice("lora_unet_blocks_29_ffn_2.lora_down.weight").get_shape() == [1, 8960]
    assert len(keys) == 900 and meta["kohyawan.rehearsal"] == "true" and meta["kohyawan.rehearsal_rank"] == "1"
    assert d["final"]["rehearsal"] is True and "REHEARSAL" in r.stderr


def test_cuda_oom_at_step_k_climbs_the_ladder_and_resumes_exactly(data, tmp_path):
    runs = tmp_path / "runs"
    r = run_cli(base_args(data, runs, "oom"), KOHYAWAN_REHEARSE_FAULTS="oom@7",
                KOHYAWAN_REHEARSE_FAULT_STATE=str(tmp_path / "faults.json"))
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "oom")
    assert _summary(d) == [("oom_vram", [0, 6], None), ("succeeded", [5, 20], "fp8_base")]
    second = d["attempts"][1]
    assert second["changes"]["train.fp8_base"] is True and second["resumed_from"].endswith("-a01-step00000005-state")
    steps = [(c["step"], c["attempt"]) for c in d["checkpoints"] if not c["final"]]
    assert steps == [(5, 1), (10, 2), (15, 2), (20, 2)]
    names = sorted(p.name for p in (runs / "oom" / "checkpoints").iterdir())
    assert names == ["character-step00000005.safetensors", "character-step00000010.safetensors",
                     "character-step00000015.safetensors", "character-step00000020.safetensors",
                     "character.safetensors"]
    # the trainer's own numbering restarted; nothing was overwritten
    assert (runs / "oom" / "output" / "character-a02-step00000005.safetensors").is_file()
    assert (runs / "oom" / "output" / "character-a01-step00000005.safetensors").is_file()
    assert "max_train_steps = 15" in (runs / "oom" / "attempts" / "02" / "train.toml").read_text()


def test_host_oom_sigkill_moves_down_the_ram_rungs(data, tmp_path):
    runs = tmp_path / "runs"
    r = run_cli(base_args(data, runs, "ram"), KOHYAWAN_REHEARSE_FAULTS="host_oom@7",
                KOHYAWAN_REHEARSE_FAULT_STATE=str(tmp_path / "faults.json"))
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "ram")
    assert _summary(d) == [("oom_ram", [0, 6], None), ("succeeded", [5, 20], "fewer_workers")]
    assert "SIGKILL" in d["attempts"][0]["reason"]


def test_stall_is_stopped_and_retried(data, tmp_path):
    runs = tmp_path / "runs"
    r = run_cli(base_args(data, runs, "stall", "--set", "watchdog.stall_minutes=0.03"),
                KOHYAWAN_REHEARSE_FAULTS="stall@8", KOHYAWAN_REHEARSE_FAULT_STATE=str(tmp_path / "faults.json"))
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "stall")
    assert _summary(d) == [("stall", [0, 7], None), ("succeeded", [5, 20], None)]
    assert "no progress" in d["attempts"][0]["reason"]


def test_nan_loss_halves_lr_from_the_last_good_save(data, tmp_path):
    runs = tmp_path / "runs"
    r = run_cli(base_args(data, runs, "nan"), KOHYAWAN_REHEARSE_FAULTS="nan@8",
                KOHYAWAN_REHEARSE_FAULT_STATE=str(tmp_path / "faults.json"))
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "nan")
    assert [a["outcome"] for a in d["attempts"]] == ["nan", "succeeded"]
    second = d["attempts"][1]
    assert second["rung"] == "half_lr" and second["lr_scale"] == 0.5 and second["steps"][0] == 5
    assert "lr_scale=0.5" in (runs / "nan" / "attempts" / "02" / "train.toml").read_text()


def test_loss_spike_halves_lr(data, tmp_path):
    runs = tmp_path / "runs"
    extra = ("--set", "watchdog.loss_spike_window=4", "--set", "watchdog.loss_spike_patience=3",
             "--set", "watchdog.loss_spike_factor=2.0")
    r = run_cli(base_args(data, runs, "spike", *extra), KOHYAWAN_REHEARSE_FAULTS="spike@12",
                KOHYAWAN_REHEARSE_FAULT_STATE=str(tmp_path / "faults.json"))
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "spike")
    assert [a["outcome"] for a in d["attempts"]] == ["loss_spike", "succeeded"]
    assert d["attempts"][1]["lr_scale"] == 0.5 and d["attempts"][1]["steps"][0] < 12


def test_unrelated_crash_stops_at_once_with_the_trainers_error(data, tmp_path):
    from http.server import BaseHTTPRequestHandler, HTTPServer
    import threading

    got = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    runs = tmp_path / "runs"
    try:
        r = run_cli(base_args(data, runs, "crash", "--notify", f"http://127.0.0.1:{server.server_port}/x"),
                    KOHYAWAN_REHEARSE_FAULTS="crash@7")
    finally:
        server.shutdown()
    assert r.returncode == 1
    assert [m["event"] for m in got] == ["failed"] and "Expected all tensors" in got[0]["text"] == got[0]["content"]
    d = ledger(runs, "crash")
    assert [a["outcome"] for a in d["attempts"]] == ["crashed"] and d["status"] == "failed"
    assert "RuntimeError: Expected all tensors to be on the same device" in d["attempts"][0]["reason"]
    assert r.stderr.strip().splitlines()[-1].startswith("error: run crash failed")


def test_exhausted_ladder_and_retry_budget(data, tmp_path):
    runs = tmp_path / "runs"
    r = run_cli(base_args(data, runs, "ex", "--set", 'ladder.vram=["fp8_base"]'), KOHYAWAN_REHEARSE_FAULTS="oom@3")
    assert r.returncode == 1
    d = ledger(runs, "ex")
    assert [a["outcome"] for a in d["attempts"]] == ["oom_vram", "oom_vram"]
    assert "ladder is exhausted" in d["reason"] and "fp8_base" in d["reason"]
    r = run_cli(base_args(data, runs, "budget", "--max-attempts", "1"), KOHYAWAN_REHEARSE_FAULTS="oom@3")
    assert r.returncode == 1 and "budget" in ledger(runs, "budget")["reason"]


def test_virtual_gpu_too_small_for_the_model_oom_then_fp8(data, tmp_path):
    runs = tmp_path / "runs"
    # 1.3B in bf16 needs ~3.6 GB to hold; fp8 halves it. --start-rung base: climb from the profile's settings
    r = run_cli(base_args(data, runs, "small", "--gpu-memory", "3", "--start-rung", "base"))
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "small")
    assert _summary(d)[0][0] == "oom_vram" and d["attempts"][0]["steps"] == [0, 0]
    assert d["attempts"][-1]["outcome"] == "succeeded" and "fp8_base" in d["attempts"][-1]["rungs"]


def test_run_starts_at_the_rung_the_estimate_says_fits(data, tmp_path):
    runs = tmp_path / "runs"
    r = run_cli(base_args(data, runs, "fits", "--gpu-memory", "5"))
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "fits")
    assert [a["outcome"] for a in d["attempts"]] == ["succeeded"]  # no OOM on the way
    assert "fp8_base" in d["attempts"][0]["rungs"]
    assert d["estimate"]["gpu_gib"] == 5 and d["estimate"]["start_index"] >= 1
    assert "estimate: starting at rung" in r.stderr


def test_the_virtual_gpu_recorded_and_planned_for_is_the_one_the_simulation_has(data, tmp_path):
    runs = tmp_path / "runs"
    r = run_cli(base_args(data, runs, "small-gpu"), KOHYAWAN_REHEARSE_GPU_GB="5")
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "small-gpu")
    assert d["gpu"]["total_gib"] == 5.0 and d["estimate"]["gpu_gib"] == 5.0


def _start(data, runs, name, step_s="0.2"):
    return subprocess.Popen(base_args(data, runs, name), env=env(KOHYAWAN_REHEARSE_STEP_S=step_s),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _saved_state(runs, name):
    try:
        train = [s for s in ledger(runs, name).get("stages", []) if s["name"] == "train"]
        return max((s["step"] for s in train[0]["saves"]), default=None) if train else None
    except (OSError, ValueError, KeyError):
        return None


def test_ctrl_c_stops_cleanly_and_resume_finishes_exactly(data, tmp_path):
    runs = tmp_path / "runs"
    proc = _start(data, runs, "intr")
    wait_for(lambda: _saved_state(runs, "intr"))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    saved = _saved_state(runs, "intr")
    d = ledger(runs, "intr")
    assert d["status"] == "stopped" and d["attempts"][-1]["outcome"] == "interrupted"
    assert not trainer_processes(str(runs))
    r = run_cli([sys.executable, "-m", "kohyawan", "runs", "resume", "intr", "--runs-dir", str(runs), "--plain"])
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "intr")
    assert d["status"] == "succeeded" and d["attempts"][-1]["steps"][1] == 20
    assert saved >= 5 and d["attempts"][-1]["steps"][0] == saved
    assert {s["name"]: s["status"] for s in d["stages"]}["cache_latents"] == "skipped"


def test_kohyawan_sigkilled_leaves_no_trainer_and_resume_continues(data, tmp_path):
    runs = tmp_path / "runs"
    proc = _start(data, runs, "kill")
    wait_for(lambda: _saved_state(runs, "kill"))
    assert trainer_processes(str(runs))
    proc.kill()
    proc.wait()
    t0 = time.monotonic()
    wait_for(lambda: not trainer_processes(str(runs)), timeout=10)
    assert time.monotonic() - t0 < 8
    listed = run_cli([sys.executable, "-m", "kohyawan", "runs", "list", "--runs-dir", str(runs), "--json"])
    assert json.loads(listed.stdout)[0]["state"] == "dead"
    r = run_cli([sys.executable, "-m", "kohyawan", "runs", "resume", "kill", "--runs-dir", str(runs), "--plain"])
    assert r.returncode == 0, r.stderr
    assert ledger(runs, "kill")["attempts"][-1]["steps"][1] == 20


def test_runs_stop_and_never_two_supervisors(data, tmp_path):
    runs = tmp_path / "runs"
    proc = _start(data, runs, "stop")
    wait_for(lambda: _saved_state(runs, "stop"))
    again = run_cli([sys.executable, "-m", "kohyawan", "runs", "resume", "stop", "--runs-dir", str(runs)])
    assert again.returncode == 2 and "being supervised" in again.stderr
    r = run_cli([sys.executable, "-m", "kohyawan", "runs", "stop", "stop", "--runs-dir", str(runs)])
    assert r.returncode == 0
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert ledger(runs, "stop")["status"] == "stopped" and not trainer_processes(str(runs))
    shown = run_cli([sys.executable, "-m", "kohyawan", "runs", "show", "stop", "--runs-dir", str(runs), "--json"])
    assert json.loads(shown.stdout)["state"] == "stopped"


def _lr_by_absolute_step(runs, name, log):
    d = ledger(runs, name)
    starts = {a["output_name"]: a["steps"][0] for a in d["attempts"]}
    lrs = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        lrs[starts[rec["output_name"]] + rec["step"]] = rec["lr"]  # a later attempt redoes lost steps
    return lrs


def test_resumed_run_uses_the_same_learning_rate_at_every_absolute_step(data, tmp_path):
    runs = tmp_path / "runs"
    extra = ("--set", 'lr_scheduler="cosine"', "--set", "lr_warmup_steps=3")
    straight_log, resumed_log = tmp_path / "lr-straight.jsonl", tmp_path / "lr-resumed.jsonl"
    r = run_cli(base_args(data, runs, "straight", *extra), KOHYAWAN_REHEARSE_LR_LOG=str(straight_log))
    assert r.returncode == 0, r.stderr
    r = run_cli(base_args(data, runs, "resumed", *extra), KOHYAWAN_REHEARSE_LR_LOG=str(resumed_log),
                KOHYAWAN_REHEARSE_FAULTS="oom@13", KOHYAWAN_REHEARSE_FAULT_STATE=str(tmp_path / "f.json"))
    assert r.returncode == 0, r.stderr
    assert [a["steps"] for a in ledger(runs, "resumed")["attempts"]] == [[0, 12], [10, 20]]
    straight = _lr_by_absolute_step(runs, "straight", straight_log)
    resumed = _lr_by_absolute_step(runs, "resumed", resumed_log)
    assert sorted(straight) == sorted(resumed) == list(range(1, 21))
    assert len(set(straight.values())) > 10  # a real decaying schedule, not a constant
    for step in straight:
        assert resumed[step] == pytest.approx(straight[step], rel=1e-12), step


def test_without_saved_states_a_resume_continues_from_the_lora_weights(data, tmp_path):
    runs = tmp_path / "runs"
    r = run_cli(base_args(data, runs, "nostate", "--set", "save_state=false"), KOHYAWAN_REHEARSE_FAULTS="oom@7",
                KOHYAWAN_REHEARSE_FAULT_STATE=str(tmp_path / "faults.json"))
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "nostate")
    second = d["attempts"][1]
    assert second["steps"] == [5, 20] and second["resumed_from"].endswith("checkpoints/character-step00000005.safetensors")
    assert "fresh optimizer" in d["attempts"][0]["next"]
    assert 'network_weights = "' in (runs / "nostate" / "attempts" / "02" / "train.toml").read_text()


def test_fewer_frames_rung_rebuilds_latent_caches_before_resuming(tmp_path):
    from PIL import Image  # noqa: F401  (make_dataset needs it)

    data = make_dataset(tmp_path / "data", n=2)
    videos = data / "videos"
    videos.mkdir()
    for i in range(2):  # real clips: the simulated cacher decodes them to count frames, as musubi does
        media.video(videos / f"clip{i}.mp4", size="64x64", rate=16, seconds=1.2)
        (videos / f"clip{i}.txt").write_text("a clip")
    runs = tmp_path / "runs"
    r = run_cli(base_args(data, runs, "frames", "--set", "target_frames=[17]", "--set", 'ladder.vram=["fewer_frames"]'),
                KOHYAWAN_REHEARSE_FAULTS="oom@3", KOHYAWAN_REHEARSE_FAULT_STATE=str(tmp_path / "f.json"))
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "frames")
    assert [a["rung"] for a in d["attempts"]] == [None, "fewer_frames"]
    # the rung's attempt trained from cache folders (in the shared store) holding only the fewer frames
    rung_plan = json.loads((runs / "frames" / "attempts" / "02" / "plan.json").read_text())
    caches = sorted(p.name for c in rung_plan["caches"] for p in Path(c["cache_directory"]).glob("*_wan.safetensors"))
    assert caches and all("-017_" not in c for c in caches if c.startswith("clip"))
    assert any("-005_" in c or "-009_" in c for c in caches)


def test_data_parallel_splits_steps_over_the_gpus(data, tmp_path):
    runs = tmp_path / "runs"
    single = run_cli(base_args(data, runs, "one"))
    assert single.returncode == 0, single.stderr
    r = run_cli(base_args(data, runs, "two", "--gpus", "0,1", "--data-parallel"))
    assert r.returncode == 0, r.stderr
    one, two = ledger(runs, "one"), ledger(runs, "two")
    per_epoch = one["total_steps"] // 5  # base_args trains 5 epochs
    assert two["total_steps"] == -(-per_epoch // 2) * 5  # ceil(batches / processes) per epoch, as musubi counts
    argv = (runs / "two" / "commands.sh").read_text()
    assert "--multi_gpu" in argv and "--num_processes 2" in argv
    bad = run_cli(base_args(data, runs, "bad", "--data-parallel"))
    assert bad.returncode == 2 and "give them with --gpus" in bad.stderr


def test_accelerate_arguments_are_in_the_plan_that_ran(data, tmp_path):
    runs = tmp_path / "runs"
    r = run_cli(base_args(data, runs, "acc", "--accelerate-arg", "--num_machines=1"))
    assert r.returncode == 0, r.stderr
    assert "--num_machines=1" in (runs / "acc" / "commands.sh").read_text()
    assert "succeeded" == ledger(runs, "acc")["status"] and ledger(runs, "acc").get("reason") is None


def test_host_ram_ladder_goes_all_the_way_then_names_what_is_needed(data, tmp_path):
    """Killed by the kernel mid-training in every attempt: one step after the other (fewer workers, fp8 weights,
    block swap 20, 10, 0), and only then a stop that says how much host RAM the smallest setting needs."""
    runs = tmp_path / "runs"
    r = run_cli(base_args(data, runs, "walk", "--set", "blocks_to_swap=25"), KOHYAWAN_REHEARSE_FAULTS="host_oom@3")
    assert r.returncode == 1
    d = ledger(runs, "walk")
    assert [(a["outcome"], a["rung"]) for a in d["attempts"]] == [
        ("oom_ram", None), ("oom_ram", "fewer_workers"), ("oom_ram", "fp8_base"), ("oom_ram", "fewer_blocks_to_swap=20"),
        ("oom_ram", "fewer_blocks_to_swap=10"), ("oom_ram", "fewer_blocks_to_swap=0")]
    assert d["attempts"][-1]["changes"]["train.blocks_to_swap"] == 0
    assert d["reason"].startswith("train: out of host RAM and the ladder is exhausted: needs ~")
    assert "GiB host RAM while training (estimate; 64 GiB here) at the lowest-RAM setting the ladder reaches on this GPU " \
           "(max_data_loader_n_workers=1, fp8_base=True, blocks_to_swap=0)" in d["reason"]


def test_killed_while_loading_the_experts_fp8_with_no_swap(tmp_path):
    """WAN 2.2 with both experts in bf16 and 30 blocks swapped loads ~57 GiB into host RAM first: with 20 GiB
    only no block swap at all (the DiTs load straight to the GPU) lowers that peak, and on 48 GiB that fits
    only with fp8 weights, which alone would raise the load: both in one attempt."""
    runs = tmp_path / "runs"
    data = make_dataset(tmp_path / "data")
    args = [a if a != "t2v-1.3B" else "t2v-A14B" for a in base_args(data, runs, "load", "--set", "blocks_to_swap=30",
                                                                    "--gpu-memory", "48", "--start-rung", "base")]
    r = run_cli(args, KOHYAWAN_REHEARSE_RAM_GB="20")
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "load")
    assert [(a["outcome"], a["rung"], a["steps"]) for a in d["attempts"]] == [
        ("oom_ram", None, [0, 0]), ("succeeded", "fp8_base+fewer_blocks_to_swap=0", [0, 20])]
    r = run_cli([a.replace("load", "small") if a == "load" else a for a in args] + ["--gpu-memory", "24"],
                KOHYAWAN_REHEARSE_RAM_GB="20")
    assert r.returncode == 1
    reason = ledger(runs, "small")["reason"]
    assert "while the DiTs load (estimate; 20 GiB here)" in reason
    bigger = re.search(r"or use a GPU with (\d+) GiB or more, where no block swap is needed", reason)
    assert bigger and int(bigger.group(1)) > 24        # the figure itself: test_hostram, from the estimate


def test_the_cpu_allocator_refusing_pinned_memory_turns_it_off_first(data, tmp_path):
    """Then the host-RAM model's steps, one per attempt, until the 1.3B model's peak fits 5 GiB: fewer workers
    and fewer swapped blocks while the steady state is the peak, then no swap, once the DiT's load into host RAM
    is (fp8 is no step: its copy adds to the 16-bit weights while loading)."""
    runs = tmp_path / "runs"
    r = run_cli(base_args(data, runs, "pin", "--set", "blocks_to_swap=25", "--set", "use_pinned_memory_for_block_swap=true",
                          "--start-rung", "base"), KOHYAWAN_REHEARSE_RAM_GB="5")
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "pin")
    assert [(a["outcome"], a["rung"]) for a in d["attempts"]] == [
        ("oom_ram", None), ("oom_ram", "no_pinned_memory"), ("oom_ram", "fewer_workers"),
        ("oom_ram", "fewer_blocks_to_swap=20"), ("succeeded", "fewer_blocks_to_swap=0")]
    assert "DefaultCPUAllocator" in d["attempts"][0]["reason"] and "SIGKILL" in d["attempts"][1]["reason"]
