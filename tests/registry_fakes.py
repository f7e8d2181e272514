"""Tiny LoRA files in musubi-tuner's exact key format, and run folders around them, for registry tests.

``write_lora`` is ``kohyawan.lora.fabricate.write_lora`` (real key names and shapes per task, tiny rank)
with the metadata a musubi-tuner save carries.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

def write_lora(path, *, task="t2v-1.3B", rank=1, dtype="bf16", metadata=None, seed=0):
    pytest.importorskip("torch")  # the LoRA fabricator writes through torch
    from kohyawan.lora.fabricate import write_lora as real

    meta = {"ss_network_dim": str(rank), "ss_network_alpha": str(rank), "modelspec.architecture": "wan2.1/lora"}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return real(Path(path), task=task, rank=rank, alpha=float(rank), dtype=dtype, metadata=meta, seed=seed)


def make_run(folder, *, steps=range(100, 1001, 100), total=1000, final=True, task="t2v-1.3B",
             experts=("both",), run_id=None, train=None, dataset_hash=None, items=12, status="succeeded",
             dataset_dir=None, rehearsal=False):
    """A run folder shaped like the runner's (kohyawan.run.ledger / render.plan_document): run.json with
    checkpoints (absolute step, stage, final flag) hard-linked under checkpoints/, ``final`` with one output
    per train stage, and plan.json with the resolved ``values``. One tiny LoRA per checkpoint and stage."""
    folder = Path(folder)
    out = folder / "checkpoints"
    run_id = run_id or folder.name
    train = train if train is not None else {"network_dim": 1, "network_alpha": 1, "learning_rate": 2e-4,
                                             "optimizer_type": "adamw8bit", "dit": "/models/dit.safetensors"}
    run_expert = "sequential" if set(experts) == {"high", "low"} else experts[0]
    cks, outputs = [], []
    for expert in experts:
        stage = "train" if len(experts) == 1 else f"train_{expert}"
        name = f"{run_id}" if stage == "train" else f"{run_id}_{expert}"
        for s in steps:
            p = write_lora(out / f"{name}-step{s:08d}.safetensors", task=task, seed=s, metadata={"ss_steps": s})
            cks.append({"path": str(p), "step": s, "epoch": None, "attempt": 1, "bytes": p.stat().st_size,
                        "sha256": "", "stage": stage, "trainer_path": "/elsewhere/x.safetensors", "final": False})
        if final:
            p = write_lora(out / f"{name}.safetensors", task=task, seed=99999, metadata={"ss_steps": total})
            cks.append({"path": str(p), "step": total, "epoch": 10, "attempt": 1, "bytes": p.stat().st_size,
                        "sha256": "", "stage": stage, "final": True})
            outputs.append({"stage": stage, "path": str(p), "step": total, "bytes": p.stat().st_size,
                            "sha256": "", "rehearsal": rehearsal})
    run = {"version": 1, "id": run_id, "status": status, "profile": "character", "task": task,
           "total_steps": total, "attempts": [{"n": 1}], "checkpoints": cks,
           "final": {**outputs[-1], "outputs": outputs} if outputs else None,
           "variant": "standard", "expert": run_expert, "rehearsal": rehearsal,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if dataset_hash:
        run["dataset_hash"] = dataset_hash
    values = [{"key": f"train.{k}", "value": v, "source": "profile:character"} for k, v in sorted(train.items())]
    values += [{"key": f"dataset.{k}", "value": v, "source": "profile:character"} for k, v in
               (("num_repeats", 1), ("resolution", [256, 256]), ("target_frames", [1, 17]))]
    values += [{"key": "watchdog.stall_minutes", "value": 10, "source": "base"}]
    plan = {"version": 1, "profile": "character", "variant": "standard", "task": task, "expert": run_expert,
            "dataset": str(dataset_dir or folder / "no-dataset"), "values": values,
            "steps": {"items": items, "batches_per_epoch": items, "epochs": 10, "total_steps": total}}
    (folder / "run.json").write_text(json.dumps(run))
    (folder / "plan.json").write_text(json.dumps(plan))
    return folder


def header(path):
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))
