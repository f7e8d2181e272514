"""The simulated trainer behaves like musubi-tuner where kohyawan depends on it."""

import json
import subprocess
import sys

import pytest

from kohyawan.rehearse.standin import trainer_dir
from kohyawan.rehearse.args import build_parser, parse
from runtime_helpers import env, make_dataset

TRAIN = str(trainer_dir() / "src" / "musubi_tuner" / "wan_train_network.py")


def test_config_file_is_flattened_unchecked_and_overridden_by_the_command_line(tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text('top = 1\n[a]\nlearning_rate = "not a number"\nnetwork_dim = 8\n[b.c]\nmystery = true\n'
                   '[b]\nmax_train_steps = 50\n')
    args = parse("wan_train_network", ["--config_file", str(tmp_path / "t"), "--network_dim", "16"])
    assert args.learning_rate == "not a number"       # no type check on file values
    assert args.network_dim == 16                      # the command line wins
    assert args.max_train_steps == 50 and args.top == 1
    assert args.config_file == str(tmp_path / "t")     # extension dropped, as musubi does
    assert args.optimizer_type == ""                   # defaults still apply


def test_missing_config_file_exits_1(tmp_path):
    r = subprocess.run([sys.executable, TRAIN, "--config_file", str(tmp_path / "nope.toml")], env=env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "nope.toml not found." in r.stderr


def test_parser_has_the_trainers_surface():
    parser = build_parser("wan_train_network")
    dests = {a.dest for a in parser._actions}
    table = json.loads((trainer_dir().parent.parent / "trainer" / "options" / "wan_train_network.json").read_text())
    assert {o["dest"] for o in table["options"]} <= dests
    with pytest.raises(SystemExit):
        parser.parse_args(["--task", "t2v-5B"])           # choices are enforced on the command line
    r = subprocess.run([sys.executable, TRAIN, "--no_such_option", "1"], env=env(), capture_output=True, text=True)
    assert r.returncode == 2 and "wan_train_network.py: error: unrecognized arguments: --no_such_option 1" in r.stderr


def _dataset_toml(tmp_path):
    data = make_dataset(tmp_path / "data", n=2)
    for name in ("v", "t"):
        (tmp_path / name).write_bytes(b"stand-in")
    toml = tmp_path / "dataset.toml"
    toml.write_text(f'[general]\nresolution = [64, 64]\ncaption_extension = ".txt"\nbatch_size = 1\n\n'
                    f'[[datasets]]\nimage_directory = "{data / "images"}"\ncache_directory = "{tmp_path / "cache"}"\n')
    return toml


def _train(tmp_path, toml, *extra, **env_extra):
    (tmp_path / "dit.safetensors").write_bytes(b"x")
    argv = [sys.executable, TRAIN, "--task", "t2v-1.3B", "--dit", str(tmp_path / "dit.safetensors"),
            "--dataset_config", str(toml), "--sdpa", "--optimizer_type", "adamw", "--network_module",
            "networks.lora_wan", "--network_dim", "4", "--output_dir", str(tmp_path / "out"), "--output_name", "x",
            "--save_every_n_steps", "2", "--save_state", "--save_precision", "bf16", *extra]
    return subprocess.run(argv, env=env(**env_extra), capture_output=True, text=True, timeout=120)


def test_training_without_caches_fails_like_musubi(tmp_path):
    r = _train(tmp_path, _dataset_toml(tmp_path), "--max_train_steps", "2")
    assert r.returncode == 1 and "ValueError: No training items found in the dataset." in r.stderr


def test_caches_names_resume_and_rank_mismatch(tmp_path):
    toml = _dataset_toml(tmp_path)
    for script, extra in (("wan_cache_latents.py", ["--vae", str(tmp_path / "v")]),
                          ("wan_cache_text_encoder_outputs.py", ["--t5", str(tmp_path / "t")])):
        r = subprocess.run([sys.executable, str(trainer_dir() / script), "--dataset_config", str(toml), *extra],
                           env=env(), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.safetensors")) == [
        "img 0_0064x0064_wan.safetensors", "img 0_wan_te.safetensors",
        "img 1_0064x0064_wan.safetensors", "img 1_wan_te.safetensors"]
    r = _train(tmp_path, toml, "--max_train_steps", "4")
    assert r.returncode == 0, r.stderr
    state = tmp_path / "out" / "x-step00000002-state"
    assert sorted(p.name for p in state.iterdir()) == ["model.safetensors", "optimizer.bin", "random_states_0.pkl",
                                                       "sampler.bin", "scheduler.bin"]
    assert "NO TRAINING HAPPENS" in r.stderr
    r = _train(tmp_path, toml, "--max_train_steps", "4", "--resume", str(state), "--output_name", "y")
    assert r.returncode == 0, r.stderr
    assert "Could not load random states" in r.stderr and "total optimization steps / 学習ステップ数: 4" in r.stdout
    assert (tmp_path / "out" / "y-step00000002.safetensors").is_file()   # numbering restarts
    r = _train(tmp_path, toml, "--max_train_steps", "4", "--resume", str(state), "--network_dim", "8")
    assert r.returncode == 1 and "size mismatch" in r.stderr
    r = _train(tmp_path, toml, "--max_train_steps", "4", "--resume", str(tmp_path / "nope-state"))
    assert r.returncode == 1 and "Tried to find" in r.stderr and "but folder does not exist" in r.stderr
    r = _train(tmp_path, toml, "--max_train_epochs", "3", "--max_train_steps", "1")
    assert "override steps. steps for 3 epochs" in r.stdout and "学習ステップ数: 6" in r.stdout


def test_memory_model_oom_text_and_host_oom(tmp_path):
    toml = _dataset_toml(tmp_path)
    for script, extra in (("wan_cache_latents.py", ["--vae", str(tmp_path / "v")]),
                          ("wan_cache_text_encoder_outputs.py", ["--t5", str(tmp_path / "t")])):
        subprocess.run([sys.executable, str(trainer_dir() / script), "--dataset_config", str(toml), *extra],
                       env=env(), check=True, capture_output=True, timeout=60)
    r = _train(tmp_path, toml, "--max_train_steps", "2", KOHYAWAN_REHEARSE_GPU_GB="2.5")
    assert r.returncode == 1
    assert "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate" in r.stderr
    assert "GPU 0 has a total capacity of 2.50 GiB" in r.stderr
    r = _train(tmp_path, toml, "--max_train_steps", "2", "--fp8_base", KOHYAWAN_REHEARSE_GPU_GB="2.5")
    assert r.returncode == 0, r.stderr
    r = _train(tmp_path, toml, "--max_train_steps", "2", "--blocks_to_swap", "20", KOHYAWAN_REHEARSE_RAM_GB="4")
    assert r.returncode == -9
    r = _train(tmp_path, toml, "--max_train_steps", "2", "--blocks_to_swap", "20", "--use_pinned_memory_for_block_swap",
               KOHYAWAN_REHEARSE_RAM_GB="4")
    assert r.returncode == 1 and "DefaultCPUAllocator: can't allocate memory" in r.stderr


def test_accelerate_stand_in_wraps_failures_like_accelerate(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kohyawan.rehearse.accelerate", "launch", "--mixed_precision", "bf16",
                        TRAIN, "--no_such_option"], env=env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "subprocess.CalledProcessError: Command" in r.stderr and "returned non-zero exit status 2." in r.stderr


def test_plain_resume_bends_a_decaying_schedule_like_musubi(tmp_path):
    """Without kohyawan's scheduler the simulated trainer reproduces the trap the runner designs around."""
    toml = _dataset_toml(tmp_path)
    for script, extra in (("wan_cache_latents.py", ["--vae", str(tmp_path / "v")]),
                          ("wan_cache_text_encoder_outputs.py", ["--t5", str(tmp_path / "t")])):
        subprocess.run([sys.executable, str(trainer_dir() / script), "--dataset_config", str(toml), *extra],
                       env=env(), check=True, capture_output=True, timeout=60)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    sched = ("--lr_scheduler", "cosine", "--learning_rate", "1e-3")
    assert _train(tmp_path, toml, "--max_train_steps", "8", *sched, KOHYAWAN_REHEARSE_LR_LOG=str(a)).returncode == 0
    state = str(tmp_path / "out" / "x-step00000004-state")
    r = _train(tmp_path, toml, "--max_train_steps", "4", "--resume", state, "--output_name", "y", *sched,
               KOHYAWAN_REHEARSE_LR_LOG=str(b))
    assert r.returncode == 0, r.stderr
    straight = [json.loads(x)["lr"] for x in a.read_text().splitlines()]
    resumed = [json.loads(x)["lr"] for x in b.read_text().splitlines()]
    assert resumed != pytest.approx(straight[4:])


def _ladder_case(tmp_path):
    """The GPU check's ladder case: two 81-frame square clips trained whole up to 25 frames at 512x512."""
    import media

    for i in range(2):
        media.video(tmp_path / "clips" / f"c{i}.mp4", size="64x64", rate=16, seconds=81 / 16)
        (tmp_path / "clips" / f"c{i}.txt").write_text("a test pattern")
    toml = tmp_path / "dataset.toml"
    toml.write_text(f'[general]\nresolution = [512, 512]\ncaption_extension = ".txt"\nbatch_size = 1\n'
                    f'enable_bucket = true\nbucket_no_upscale = true\n\n[[datasets]]\n'
                    f'video_directory = "{tmp_path / "clips"}"\ncache_directory = "{tmp_path / "cache"}"\n'
                    f'frame_extraction = "full"\nmax_frames = 25\n')
    for name in ("v", "t", "dit.safetensors"):
        (tmp_path / name).write_bytes(b"stand-in")
    for script, extra in (("wan_cache_latents.py", ["--vae", str(tmp_path / "v")]),
                          ("wan_cache_text_encoder_outputs.py", ["--t5", str(tmp_path / "t")])):
        subprocess.run([sys.executable, str(trainer_dir() / script), "--dataset_config", str(toml), *extra],
                       env=env(), check=True, capture_output=True, timeout=60)
    assert sorted(p.name for p in (tmp_path / "cache").glob("*-025_0512x0512_wan.safetensors")) == [
        "c0_00000-025_0512x0512_wan.safetensors", "c1_00000-025_0512x0512_wan.safetensors"]

    def train(*extra, out="x"):
        argv = [sys.executable, TRAIN, "--task", "t2v-A14B", "--dit", str(tmp_path / "dit.safetensors"),
                "--dataset_config", str(toml), "--sdpa", "--optimizer_type", "adamw", "--network_module",
                "networks.lora_wan", "--network_dim", "64", "--gradient_checkpointing", "--output_dir",
                str(tmp_path / "out"), "--output_name", out, "--max_train_steps", "2", "--save_every_n_steps", "1",
                "--save_state", "--save_precision", "bf16", *extra]
        return subprocess.run(argv, env=env(KOHYAWAN_REHEARSE_GPU_GB="23.5"), capture_output=True, text=True,
                              timeout=120)
    return train


def test_ladder_case_on_a_23_5_gib_gpu_runs_out_of_memory_where_the_real_one_did(tmp_path):
    """shared/gpu-check: fp16 OOM while loading, fp8 OOM in step 1, blocks_to_swap=10 finishes step 1, saves and
    runs out of memory in step 2, blocks_to_swap=20 resumes the saved state and finishes."""
    train = _ladder_case(tmp_path)
    fp8 = ("--fp8_base", "--fp8_scaled")
    r = train(out="base")
    assert r.returncode == 1 and "OutOfMemoryError" in r.stderr and "running training" not in r.stdout
    r = train(*fp8, out="fp8")
    assert r.returncode == 1 and "OutOfMemoryError" in r.stderr and " 0/2 " in r.stderr
    assert not list((tmp_path / "out").glob("fp8-step*"))
    r = train(*fp8, "--blocks_to_swap", "10", out="swap10")
    assert r.returncode == 1 and "OutOfMemoryError" in r.stderr
    assert (tmp_path / "out" / "swap10-step00000001.safetensors").is_file()
    assert not (tmp_path / "out" / "swap10-step00000002.safetensors").exists()
    state = str(tmp_path / "out" / "swap10-step00000001-state")
    r = train(*fp8, "--blocks_to_swap", "10", "--resume", state, out="again")   # the state comes with it
    assert r.returncode == 1 and not list((tmp_path / "out").glob("again-step*"))
    r = train(*fp8, "--blocks_to_swap", "20", "--resume", state, out="swap20")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "swap20.safetensors").is_file()
