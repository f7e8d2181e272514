import itertools
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import golden
from conftest import make_dataset, make_models
from kohyawan.files import toml as tomllib  # stdlib tomllib, or tomli on Python 3.10
from kohyawan.config import profiles, render
from kohyawan.cli import cli
from kohyawan.config.spec import Models
from kohyawan.trainer import musubi

PROFILES = ("character", "style", "motion", "domain")
VARIANTS = (None, "conservative", "standard", "aggressive")
MODES = [("t2v-A14B", "both"), ("t2v-A14B", "high"), ("t2v-A14B", "low"), ("t2v-A14B", "sequential"),
         ("i2v-A14B", "both")]


def _plan(tmp, profile="character", variant=None, task="t2v-A14B", expert="both", sets=(), trainer_dir=None,
          data=None, models=None):
    data = data or make_dataset(tmp / "data", images=3, videos=2)
    models = models or make_models(tmp / "models", task)
    spec = profiles.resolve(profile, variant=variant, task=task, expert=expert, dataset_dir=data,
                            models=Models(**models), sets=sets)
    return render.build_plan(spec, tmp / "out", trainer_dir=trainer_dir)


def _normalised(plan, tmp):
    return {name: text.replace(str(tmp), "<TMP>") for name, text in plan.files.items()}


@pytest.mark.parametrize("case,kwargs", [
    ("character_t2v_both", dict(profile="character")),
    ("style_aggressive_t2v_sequential", dict(profile="style", variant="aggressive", expert="sequential")),
    ("motion_t2v_high", dict(profile="motion", expert="high")),
    ("domain_t2v_low_trainer_dir", dict(profile="domain", expert="low", trainer_dir=Path("/opt/musubi-tuner"))),
    ("character_i2v_both", dict(profile="character", task="i2v-A14B")),
])
def test_golden_files(tmp_path, case, kwargs):
    plan = _plan(tmp_path, **kwargs)
    for name, text in _normalised(plan, tmp_path).items():
        golden.check(f"render/{case}/{name}", text)


def _flatten(text):
    flat = {}
    for section in tomllib.loads(text).values():
        flat.update(section)
    return flat


@pytest.mark.parametrize("profile,variant,mode", list(itertools.product(PROFILES, VARIANTS, MODES)))
def test_invariants_for_every_profile_variant_and_mode(tmp_path, profile, variant, mode):
    task, expert = mode
    plan = _plan(tmp_path, profile, variant, task, expert)
    out = str(tmp_path / "out")
    table = musubi.options()
    train_files = [n for n in plan.files if n.startswith("train")]
    assert len(train_files) == (2 if expert == "sequential" else 1)
    output_names = set()
    for name in train_files:
        values = _flatten(plan.files[name])
        unknown = set(values) - set(table)
        assert not unknown, f"{name} has keys the trainer does not know: {unknown}"
        for key, value in values.items():
            assert musubi.check_train_value(key, value) == value
        assert sum(bool(values.get(a)) for a in musubi.ATTENTION_FLAGS) == 1
        assert values["optimizer_type"] and values["save_precision"] == "bf16"
        assert values["output_dir"].startswith(out + os.sep) and values["dataset_config"].startswith(out + os.sep)
        assert isinstance(values["lr_warmup_steps"], int)
        output_names.add(values["output_name"])
        if expert in ("high", "low", "sequential"):
            assert values["preserve_distribution_shape"] is True
            boundary = musubi.TIMESTEP_BOUNDARY[task]
            expected = (boundary, 1000) if "high" in name else (0, boundary)
            assert (values["min_timestep"], values["max_timestep"]) == expected
            assert "dit_high_noise" not in values
        else:
            assert values["dit_high_noise"].endswith("high_noise_14B_fp16.safetensors")
    assert len(output_names) == len(train_files)
    dataset = tomllib.loads(plan.files["dataset.toml"])
    caches = [d["cache_directory"] for d in dataset["datasets"]]
    assert len(set(caches)) == len(caches) and all(c.startswith(out + os.sep) for c in caches)
    for d in dataset["datasets"]:
        for f in d.get("target_frames", []):
            assert (f - 1) % 4 == 0
    assert dataset["general"]["resolution"][0] % 16 == 0
    again = _plan(tmp_path, profile, variant, task, expert)
    assert again.files == plan.files  # rendering twice gives the same bytes


def test_step_count_and_warmup(tmp_path):
    data = make_dataset(tmp_path / "data", images=40, videos=0)
    plan = _plan(tmp_path, "character", data=data, sets=["num_repeats=2"])
    assert plan.steps.total_steps == 40 * 2 * 15
    assert plan.steps.warmup_steps == round(0.05 * 1200)
    assert _flatten(plan.files["train.toml"])["lr_warmup_steps"] == 60
    assert plan.document["steps"]["total_steps"] == 1200


def test_step_count_uses_clip_lengths_from_the_prepare_report(tmp_path):
    data = make_dataset(tmp_path / "data", images=0, videos=3)
    # One source gave all three clips; each clip's own length is in "clips".
    clips = [{"output": f"videos/item{i:03d}.mp4", "start": 0, "frames": f} for i, f in enumerate((17, 25, 13))]
    report = {"version": 1, "items": [{"outputs": [c["output"] for c in clips], "frames": 60, "clips": clips}]}
    (data / "report.json").write_text(json.dumps(report))
    plan = _plan(tmp_path, "character", data=data, sets=["target_frames=[17, 25]"])
    assert plan.steps.items == 3 and plan.steps.exact  # head: 17 -> one item, 25 -> two, 13 -> none
    assert plan.spec.dataset["frame_extraction"] == "head"  # implied by setting target_frames
    plan = _plan(tmp_path, "character", data=data)
    assert plan.steps.items == 3 and plan.steps.exact  # full (default): each clip once


HOSTILE = ["with space", "quote'single", 'quote"double', "$(touch pwned)", "back\\slash", "ünïcødé 名前", "semi;colon"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_paths_everywhere(tmp_path, name):
    root = tmp_path / name
    data = make_dataset(root / "data", images=2, videos=1)
    models = make_models(root / "models")
    trainer = root / "musubi tuner"
    (trainer / "src" / "musubi_tuner").mkdir(parents=True)
    spec = profiles.resolve("character", dataset_dir=data, models=Models(**models), expert="sequential")
    plan = render.build_plan(spec, root / "out", trainer_dir=trainer, python=sys.executable)
    render.write_plan(plan)
    out = root / "out"
    dataset = tomllib.loads((out / "dataset.toml").read_text())
    assert [d.get("image_directory") or d.get("video_directory") for d in dataset["datasets"]] == \
        [str(data / "images"), str(data / "videos")]
    assert _flatten((out / "train_low.toml").read_text())["output_dir"] == str(out / "output")
    assert _flatten((out / "train_high.toml").read_text())["dit"] == str(models["dit_high_noise"])
    # Run commands.sh with a python that records its argv: the shell must see exactly plan.json's argv.
    recorder = tmp_path / "record.py"
    log = tmp_path / "argv.jsonl"
    recorder.write_text(f"import json, sys\nopen({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    env = dict(os.environ, PYTHON=f"{sys.executable}")
    wrapper = tmp_path / "py"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {recorder} \"$@\"\n")
    wrapper.chmod(0o755)
    env["PYTHON"] = str(wrapper)
    subprocess.run(["bash", str(out / "commands.sh")], check=True, env=env, cwd=tmp_path)
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    expected = [s["argv"][1:] for s in json.loads((out / "plan.json").read_text())["stages"]]
    assert seen == expected
    assert not (tmp_path / "pwned").exists() and not (trainer / "pwned").exists()
    assert os.stat(out / "commands.sh").st_mode & stat.S_IXUSR


def test_nothing_written_on_bad_input(tmp_path):
    data = make_dataset(tmp_path / "data")
    models = make_models(tmp_path / "models")
    runner = CliRunner()
    base = ["config", "render", "--profile", "character", "--dataset", str(data), "--dit", str(models["dit"]),
            "--vae", str(models["vae"]), "--t5", str(models["t5"]), "--out", str(tmp_path / "out")]
    cases = [
        (["--set", "learnig_rate=1"], "unknown key 'learnig_rate'; did you mean 'learning_rate'?"),
        (["--set", "network_dim=\"big\""], "'network_dim' must be an integer"),
        (["--set", "blocks_to_swap=40"], "blocks_to_swap must be between 0 and 39 for a 14B model, got 40"),
        (["--set", "offload_inactive_dit=true", "--set", "blocks_to_swap=10",
          "--dit-high-noise", str(models["dit_high_noise"])], "offload_inactive_dit cannot be combined with blocks_to_swap"),
        (["--set", "sdpa=false"], "exactly one attention flag must be on"),
        (["--set", "xformers=true"], "exactly one attention flag must be on"),
        (["--set", "optimizer_type=\"\""], "optimizer_type must be set"),
        ([], "--dit-high-noise is required: the high-noise DiT (both experts train, so both DiT files are needed)"),
        (["--dit-high-noise", str(tmp_path / "nope.safetensors")], "--dit-high-noise: file not found"),
        (["--expert", "high", "--task", "t2v-14B"], "--expert high is for the WAN 2.2 two-expert tasks"),
        (["--set", "fp8_scaled=true"], "fp8_scaled needs fp8_base"),
    ]
    for extra, message in cases:
        result = runner.invoke(cli, base + extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
        assert result.output.count("\n") == 1 and result.output.startswith("error: ")
        assert not (tmp_path / "out").exists()


def test_render_cli_writes_and_reports(tmp_path):
    data = make_dataset(tmp_path / "data", images=4)
    models = make_models(tmp_path / "models")
    result = CliRunner().invoke(cli, [
        "config", "render", "--profile", "style", "--dataset", str(data), "--dit", str(models["dit"]),
        "--dit-high-noise", str(models["dit_high_noise"]), "--vae", str(models["vae"]), "--t5", str(models["t5"]),
        "--out", str(tmp_path / "cfg")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "cfg").iterdir()) == ["commands.sh", "dataset.toml", "plan.json", "train.toml"]
    assert "4 items at 512x512, 4 steps per epoch, 20 epochs: 80 steps per training run, warm-up 4." in result.output
    doc = json.loads((tmp_path / "cfg" / "plan.json").read_text())
    assert doc["version"] == 1 and doc["task"] == "t2v-A14B" and doc["expert"] == "both"
    assert [s["name"] for s in doc["stages"]] == ["cache_latents", "cache_text_encoder", "train"]
    sources = {v["key"]: v["source"] for v in doc["values"]}
    assert sources["train.network_dim"] == "profile:style" and sources["train.optimizer_type"] == "base"


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    make_dataset(tmp_path / "data")
    make_models(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    models = {k: Path("models") / v.name for k, v in make_models(Path("models")).items()}
    spec = profiles.resolve("character", dataset_dir=Path("data"), models=Models(**models))
    plan = render.build_plan(spec, Path("out"))
    values = _flatten(plan.files["train.toml"])
    for key in ("dit", "dit_high_noise", "vae", "t5", "output_dir", "dataset_config"):
        assert Path(values[key]).is_absolute() and values[key].startswith(str(tmp_path)), key
    for stage in plan.stages[:2]:
        assert all(Path(a).is_absolute() for a in stage.argv if a.endswith(".safetensors") or a.endswith(".toml"))
