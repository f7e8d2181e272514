"""A resumed run's LoRA files carry the whole run's ss_* values, the trainer's own kept beside them."""

import calendar
import hashlib
import json
import sys
import time

import pytest

from kohyawan.lora import metadata as M
from kohyawan.lora.io import read_metadata

LEDGER = {  # two attempts of one stage: an OOM at step 7, resumed from the state saved at step 5
    "total_steps": 20,
    "stages": [{"name": "train", "total_steps": 20}],
    "attempts": [
        {"n": 1, "stage": "train", "steps": [0, 6], "started": "2026-12-04T16:10:42Z", "output_name": "character-a01"},
        {"n": 2, "stage": "train", "steps": [5, 20], "started": "2026-12-04T16:10:43Z", "output_name": "character-a02"},
    ],
}
TRAINER = {"ss_steps": "15", "ss_epoch": "4", "ss_num_epochs": "4", "ss_max_train_steps": "15",
           "ss_output_name": "character-a02", "ss_training_started_at": "1796400644.139064",
           "ss_training_finished_at": "1796400645.08", "ss_num_batches_per_epoch": "4",
           "ss_gradient_accumulation_steps": "1", "ss_network_dim": "1"}
STARTED = str(float(calendar.timegm(time.strptime("2026-12-04T16:10:42Z", "%Y-%m-%dT%H:%M:%SZ"))))


def test_the_final_file_of_a_resumed_run_gets_absolute_values_and_keeps_the_trainers():
    final = {"path": "c/character.safetensors", "step": 20, "attempt": 2, "stage": "train", "final": True}
    got = M.absolute_training(LEDGER, final, TRAINER)
    assert got == {
        "ss_steps": "20", "kohyawan.trainer_ss_steps": "15",
        "ss_epoch": "5", "kohyawan.trainer_ss_epoch": "4",
        "ss_num_epochs": "5", "kohyawan.trainer_ss_num_epochs": "4",
        "ss_max_train_steps": "20", "kohyawan.trainer_ss_max_train_steps": "15",
        "ss_output_name": "character", "kohyawan.trainer_ss_output_name": "character-a02",
        "ss_training_started_at": STARTED, "kohyawan.trainer_ss_training_started_at": "1796400644.139064",
    }
    # stamping again changes nothing, and the trainer's values survive a second pass
    assert M.absolute_training(LEDGER, final, {**TRAINER, **got}) == {}


def test_step_and_epoch_files_get_the_epoch_an_uninterrupted_run_writes():
    step = {"path": "c/character-step00000015.safetensors", "trainer_path": "o/character-a02-step00000010.safetensors",
            "step": 15, "attempt": 2, "stage": "train", "final": False}
    got = M.absolute_training(LEDGER, step, {**TRAINER, "ss_steps": "10", "ss_epoch": "2"})
    assert (got["ss_steps"], got["ss_epoch"]) == ("15", "3")  # step 15 runs in epoch index 3 (steps 13-16)
    epoch = {**step, "trainer_path": "o/character-a02-000002.safetensors", "step": 12}
    got = M.absolute_training(LEDGER, epoch, {**TRAINER, "ss_steps": "7", "ss_epoch": "2"})
    assert (got["ss_steps"], got["ss_epoch"]) == ("12", "3")  # the end of epoch 3


def test_without_the_trainers_epoch_facts_the_epoch_is_left_alone():
    final = {"path": "c/x.safetensors", "step": 20, "attempt": 2, "stage": "train", "final": True}
    bare = {k: v for k, v in TRAINER.items() if k not in ("ss_num_batches_per_epoch",)}
    got = M.absolute_training(LEDGER, final, bare)
    assert got["ss_steps"] == "20" and "ss_epoch" not in got and "ss_num_epochs" not in got


@pytest.mark.slow
def test_a_resumed_rehearsal_run_and_its_export_carry_the_absolute_step_and_epoch(tmp_path):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from runtime_helpers import base_args, ledger, make_dataset, run_cli

    runs = tmp_path / "runs"
    r = run_cli(base_args(make_dataset(tmp_path / "data"), runs, "oom"), KOHYAWAN_REHEARSE_FAULTS="oom@7",
                KOHYAWAN_REHEARSE_FAULT_STATE=str(tmp_path / "faults.json"))
    assert r.returncode == 0, r.stderr
    d = ledger(runs, "oom")
    assert [a["steps"] for a in d["attempts"]] == [[0, 6], [5, 20]]
    final = runs / "oom" / "checkpoints" / "character.safetensors"
    meta = read_metadata(final)
    assert (meta["ss_steps"], meta["ss_epoch"], meta["ss_output_name"]) == ("20", "5", "character")
    assert (meta["kohyawan.trainer_ss_steps"], meta["kohyawan.trainer_ss_epoch"]) == ("15", "4")
    # the ledger describes the file as it now is; the trainer's own output keeps its header
    assert d["final"]["sha256"] == hashlib.sha256(final.read_bytes()).hexdigest() == d["checkpoints"][-1]["sha256"]
    assert read_metadata(runs / "oom" / "output" / "character-a02.safetensors")["ss_steps"] == "15"

    from click.testing import CliRunner

    from kohyawan.cli import cli

    for checkpoint, want in (("final", ("20", "5", "15")), ("15", ("15", "3", "10"))):
        out = CliRunner().invoke(cli, ["export", str(runs / "oom"), "--name", f"c{checkpoint}", "--kind", "character",
                                       "--registry", str(tmp_path / "reg"), "--checkpoint", checkpoint,
                                       "--dtype", "bf16", "--json"])
        assert out.exit_code == 0, out.output
        exported = json.loads(out.stdout)["files"][0]["abs_path"]
        m = read_metadata(exported)
        assert (m["ss_steps"], m["ss_epoch"], m["kohyawan.trainer_ss_steps"]) == want, checkpoint
        assert m["ss_output_name"] == "character" and m["ss_max_train_steps"] == "20"
