"""checkpoints on a hand-made musubi-tuner output folder and on a kohyawan run folder."""

import json
import subprocess
import sys

import pytest

from kohyawan.run.checkpoints import list_checkpoints
from kohyawan.errors import BadInput
from kohyawan.lora.fabricate import write_lora

TASK = "t2v-1.3B"


def _ckpt(folder, name, step=None, epoch=None, total=10, **kw):
    pytest.importorskip("torch")  # the LoRA fabricator writes through torch
    meta = {"ss_max_train_steps": str(total)}
    if step is not None:
        meta["ss_steps"] = str(step)
    if epoch is not None:
        meta["ss_epoch"] = str(epoch)
    return write_lora(folder / name, task=TASK, rank=2, blocks=kw.pop("blocks", range(30)), metadata=meta, **kw)


def test_hand_made_musubi_folder(tmp_path):
    out = tmp_path / "output dir"
    out.mkdir()
    _ckpt(out, "sarah-step00000002.safetensors", step=2, zero=True)   # untrained: lora_up still zero
    _ckpt(out, "sarah-step00000006.safetensors", step=6)
    _ckpt(out, "sarah-step00000008.safetensors", step=8, blocks=[0, 1])  # partial file
    _ckpt(out, "sarah-000001.safetensors", step=5, epoch=1)
    _ckpt(out, "sarah.safetensors", step=10, epoch=2)
    (out / "sarah-step00000006-state").mkdir()
    (out / "sarah-step00000006-state" / "model.safetensors").write_bytes(b"not a lora")
    items = list_checkpoints(out)
    assert [(c.path.rsplit("/", 1)[1], c.step, c.epoch, c.final) for c in items] == [
        ("sarah-step00000002.safetensors", 2, None, False),
        ("sarah-000001.safetensors", 5, 1, False),
        ("sarah-step00000006.safetensors", 6, None, False),
        ("sarah-step00000008.safetensors", 8, None, False),
        ("sarah.safetensors", 10, 2, True),
    ]
    by_step = {c.step: c for c in items}
    assert [c.step for c in items if c.candidate] == [6, 8]
    assert by_step[6].progress == 0.6
    assert by_step[2].flags == ["no visible effect (update is zero)"]
    assert by_step[2].effect["zero_modules"] == 300
    assert by_step[6].flags == [] and by_step[6].effect["max_rms"] > 1e-5
    assert by_step[8].flags[0].startswith("size does not match rank: 0.4 MB, a full rank-2 bf16 LoRA for wan-1.3B is 5.5 MB")
    assert all(c.rank == 2 and c.dtype == "bf16" and len(c.sha256) == 64 and c.attempt is None for c in items)
    assert by_step[6].loss is None


def test_kohyawan_run_folder_with_ledger_and_metrics(tmp_path):
    run = tmp_path / "run"
    (run / "a1").mkdir(parents=True)
    (run / "a2").mkdir()
    _ckpt(run / "a1", "sarah_high-step00000004.safetensors", step=4, total=20)
    # attempt 2 resumed: musubi restarted its counter, the ledger holds absolute steps
    _ckpt(run / "a2", "sarah_high-step00000004.safetensors", step=4, total=16)
    _ckpt(run / "a2", "sarah_high.safetensors", step=16, total=16)
    ledger = {"version": 1, "id": "run", "status": "succeeded", "total_steps": 20, "checkpoints": [
        {"path": "a1/sarah_high-step00000004.safetensors", "step": 4, "epoch": None, "attempt": 1},
        {"path": str(run / "a2" / "sarah_high-step00000004.safetensors"), "step": 14, "epoch": None, "attempt": 2},
        {"path": "a2/sarah_high.safetensors", "step": 20, "epoch": 2, "attempt": 2},
        {"path": "a2/gone_high.safetensors", "step": 16, "epoch": None, "attempt": 2},
    ]}
    (run / "run.json").write_text(json.dumps(ledger))
    lines = [json.dumps({"step": s, "loss": 1.0 - 0.04 * s, "attempt": 1 + (s > 4)}) for s in range(1, 21)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"step\": 21, \"lo")  # half-written last line
    items = list_checkpoints(run)
    got = [(c.step, c.attempt, c.candidate, c.expert, c.loss, c.loss_trend, c.flags) for c in items]
    assert got == [
        (4, 1, False, "high", 0.9, None, []),
        (14, 2, True, "high", 0.62, "falling", []),
        (16, 2, False, "high", None, None, ["missing"]),
        (20, 2, False, "high", 0.3, "falling", []),
    ]


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(BadInput, match="no LoRA checkpoints found"):
        list_checkpoints(tmp_path)
    with pytest.raises(BadInput, match="not a folder"):
        list_checkpoints(tmp_path / "nope")


def test_ledger_sha256_mismatch_is_flagged(tmp_path):
    path = _ckpt(tmp_path, "x-step00000007.safetensors", step=7)
    ledger = {"version": 1, "total_steps": 10, "checkpoints": [
        {"path": path.name, "step": 7, "epoch": None, "attempt": 1, "sha256": "0" * 64}]}
    (tmp_path / "run.json").write_text(json.dumps(ledger))
    (item,) = list_checkpoints(tmp_path, effect=False)
    assert item.flags == ["sha256 differs from run.json: the file changed or is corrupted"]
    assert item.effect is None and item.candidate


def test_without_torch_checkpoints_are_listed_and_the_effect_is_flagged_unmeasured(tmp_path):
    # torch is an optional extra (pip install '.[torch]'); the README's quickstart runs without it
    _ckpt(tmp_path, "sarah.safetensors", step=10)
    blocked = ("import sys, runpy; sys.modules['torch'] = None; "
               "sys.argv = ['kohyawan', 'checkpoints', '--json', sys.argv[1]]; runpy.run_module('kohyawan', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", blocked, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    (item,) = json.loads(done.stdout)
    assert item["effect"] is None
    assert item["flags"] == ["effect not measured: torch is not installed (pip install 'kohyawan[torch]')"]
