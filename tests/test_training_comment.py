"""The task and expert ride in the training comment musubi-tuner writes into every checkpoint (issue 15,
item 8): rendered for every training run, the user's own comment kept, read back by lora inspect."""

import pytest

from conftest import make_dataset, make_models
from kohyawan.config import profiles, render
from kohyawan.config.spec import Models
from kohyawan.files import toml as tomllib  # stdlib tomllib, or tomli on Python 3.10
from kohyawan.lora.fabricate import write_lora
from kohyawan.lora.inspect import read_info
from kohyawan.trainer import comment


def _plan(tmp_path, expert="sequential", sets=()):
    spec = profiles.resolve("character", task="t2v-A14B", expert=expert, dataset_dir=make_dataset(tmp_path / "d"),
                            models=Models(**make_models(tmp_path / "m")), sets=sets)
    return render.build_plan(spec, tmp_path / "out")


def test_every_training_config_names_its_task_and_expert_and_keeps_the_users_comment(tmp_path):
    plan = _plan(tmp_path, sets=('training_comment="sarah, second try | take 2"',))
    for name, expert in (("train_high.toml", "high"), ("train_low.toml", "low")):
        text = tomllib.loads(plan.files[name])["network"]["training_comment"]
        assert text.startswith("sarah, second try | take 2 | kohyawan ")
        assert comment.facts({comment.METADATA_KEY: text}) == {
            "version": text.split("kohyawan ")[1].split(";")[0], "task": "t2v-A14B", "expert": expert,
            "profile": "character"}


def test_inspect_reads_task_and_expert_from_the_trainers_comment(tmp_path):
    pytest.importorskip("torch")  # the LoRA fabricator writes through torch
    text = comment.training_comment("9.9", task="i2v-A14B", expert="low", profile="style", variant="aggressive")
    path = write_lora(tmp_path / "x.safetensors", task="i2v-A14B", rank=2, blocks=range(2),
                      metadata={comment.METADATA_KEY: text})
    info = read_info(path)
    assert (info.task, info.expert) == ("i2v-A14B", "low")
    assert comment.facts({comment.METADATA_KEY: "just my words"}) == {}


def test_no_metadata_warns_that_checkpoints_will_not_record_the_task(tmp_path):
    plan = _plan(tmp_path, expert="both", sets=("no_metadata=true",))
    assert any("will not record the task and expert" in w for w in plan.warnings)


def test_export_of_a_bare_checkpoint_finds_the_task_in_the_trainers_comment(tmp_path, kohyawan_argv):
    pytest.importorskip("torch")  # the LoRA fabricator writes through torch
    import subprocess

    text = comment.training_comment("9.9", task="t2v-1.3B", expert="both", profile="character")
    path = write_lora(tmp_path / "sarah-step00000010.safetensors", task="t2v-1.3B", rank=2, blocks=range(30),
                      metadata={comment.METADATA_KEY: text, "ss_steps": "10"})
    r = subprocess.run([*kohyawan_argv, "export", str(path), "--name", "sarah", "--kind", "character", "--client",
                        "c", "--registry", str(tmp_path / "reg")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "task t2v-1.3B" in r.stdout + r.stderr
