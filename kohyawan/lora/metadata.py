"""kohyawan's own safetensors metadata keys, and how tools extend a file's metadata.

musubi-tuner records nothing about the task or the expert a LoRA was trained for, so kohyawan adds its
own ``kohyawan.*`` keys (all values are strings, as safetensors requires). Tools that rewrite a file keep
every existing key and add one provenance key saying what they did (a JSON object as a string).

``sshs_model_hash`` / ``sshs_legacy_hash`` are musubi's precomputed hashes over the tensor data (see
``kohyawan.files.stream``); a tool that changes the tensors recomputes them, so they always describe the
file's own weights.

musubi-tuner counts every resumed attempt from zero, so a run's files say only what their last attempt
did. ``absolute_training`` computes, from the run's ledger (``run.json``), what they should say:
``ss_steps`` (absolute step), ``ss_epoch`` (the epoch an uninterrupted run would record at that step),
``ss_max_train_steps`` and ``ss_num_epochs`` (the whole run's), ``ss_output_name`` (the run's name for
the stage, without kohyawan's ``-aNN`` attempt suffix) and ``ss_training_started_at`` (when the stage's
first attempt started). ``ss_training_finished_at`` is already right: the last attempt finished the run.
The trainer's own value of every key it changes is kept as ``kohyawan.trainer_<key>`` (e.g.
``kohyawan.trainer_ss_steps``); the run's final verification and ``export`` write them.
"""

from __future__ import annotations

import calendar
import json
import math
import re
import time
from typing import Any, Mapping

VERSION = "kohyawan.version"
TASK = "kohyawan.task"
EXPERT = "kohyawan.expert"          # "both" | "high" | "low"
PROFILE = "kohyawan.profile"
RUN_ID = "kohyawan.run_id"
DATASET_HASH = "kohyawan.dataset_hash"
DATASET_SIZE = "kohyawan.dataset_size"
REHEARSAL = "kohyawan.rehearsal"    # "true" when written by the simulated trainer
NOTES = "kohyawan.notes"
CONVERTED_FROM = "kohyawan.converted_from"
RESIZED_FROM = "kohyawan.resized_from"
MERGED_FROM = "kohyawan.merged_from"

ALL_KEYS = (VERSION, TASK, EXPERT, PROFILE, RUN_ID, DATASET_HASH, DATASET_SIZE, REHEARSAL, NOTES,
            CONVERTED_FROM, RESIZED_FROM, MERGED_FROM)
EXPERTS = ("both", "high", "low")

# musubi-tuner's keys that a rank change makes stale
SS_NETWORK_DIM = "ss_network_dim"
SS_NETWORK_ALPHA = "ss_network_alpha"

# musubi-tuner's keys that describe only the last attempt of a resumed run, and where their originals go
RUN_KEYS = ("ss_steps", "ss_epoch", "ss_max_train_steps", "ss_num_epochs", "ss_output_name", "ss_training_started_at")
TRAINER_PREFIX = "kohyawan.trainer_"


def extended(metadata: Mapping[str, str], key: str, fact: Mapping[str, Any],
             updates: Mapping[str, Any] | None = None) -> dict[str, str]:
    """A copy of ``metadata`` with ``key`` set to ``fact`` as JSON and ``updates`` applied as strings.

    A file that was already converted/resized/merged keeps its earlier fact nested under "previous", so
    a chain of edits is never lost.
    """
    out = {str(k): str(v) for k, v in metadata.items()}
    if key in out:
        fact = dict(fact, previous=_loads(out[key]))
    out[key] = json.dumps(fact, ensure_ascii=False, sort_keys=True)
    from kohyawan import __version__

    out.setdefault(VERSION, __version__)
    for k, v in (updates or {}).items():
        out[k] = str(v)
    return out


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def number_text(value: float) -> str:
    """A number as musubi writes it into metadata: ints as ints, other values as Python floats."""
    return str(int(value)) if float(value).is_integer() else str(float(value))


def absolute_training(ledger: Mapping[str, Any], checkpoint: Mapping[str, Any],
                      metadata: Mapping[str, str]) -> dict[str, str]:
    """The metadata a run's checkpoint should carry, from the ledger (run.json) and the checkpoint's entry
    in it (absolute ``step``, ``attempt``, ``stage``, ``final``, ``trainer_path``): every ``RUN_KEYS``
    value that differs from the file's, and ``kohyawan.trainer_<key>`` holding what the trainer wrote.
    Pure; calling it again on its own result changes nothing."""
    trainer = {k: metadata[TRAINER_PREFIX + k] if TRAINER_PREFIX + k in metadata else metadata.get(k)
               for k in RUN_KEYS + ("ss_num_batches_per_epoch", "ss_gradient_accumulation_steps")}
    out: dict[str, str] = {}
    for key, value in _run_values(ledger, checkpoint, _steps_per_epoch(trainer)).items():
        if value is None or str(value) == metadata.get(key):
            continue
        out[key] = str(value)
        if trainer[key] is not None:
            out[TRAINER_PREFIX + key] = trainer[key]
    return out


def _run_values(ledger: Mapping[str, Any], checkpoint: Mapping[str, Any], per_epoch: int | None) -> dict[str, Any]:
    stage = checkpoint.get("stage")
    every = list(ledger.get("attempts") or [])
    attempts = [a for a in every if a.get("stage") == stage] or every
    record = next((r for r in ledger.get("stages") or [] if r.get("name") == stage), {})
    total = record.get("total_steps") or ledger.get("total_steps")
    step = checkpoint.get("step")
    values: dict[str, Any] = {"ss_steps": step, "ss_max_train_steps": total}
    if per_epoch:
        values["ss_num_epochs"] = math.ceil(total / per_epoch) if total else None
        values["ss_epoch"] = _epoch(step, per_epoch, checkpoint) if step is not None else None
    mine = next((a for a in attempts if a.get("n") == checkpoint.get("attempt")), {})
    if mine.get("output_name"):
        values["ss_output_name"] = re.sub(r"-a\d{2}$", "", str(mine["output_name"]))
    if attempts and attempts[0].get("started"):
        started = calendar.timegm(time.strptime(attempts[0]["started"], "%Y-%m-%dT%H:%M:%SZ"))
        values["ss_training_started_at"] = str(float(started))
    return values


def _steps_per_epoch(trainer: Mapping[str, str | None]) -> int | None:
    """Optimizer steps per epoch, as musubi computes them from what it records."""
    try:
        batches = int(trainer["ss_num_batches_per_epoch"] or "")
        accumulation = int(trainer["ss_gradient_accumulation_steps"] or "1")
    except ValueError:
        return None
    return math.ceil(batches / accumulation) if batches > 0 and accumulation > 0 else None


def _epoch(step: int, per_epoch: int, checkpoint: Mapping[str, Any]) -> int:
    """``ss_epoch`` as an uninterrupted run writes it: the epoch count at the final save, the finished epoch
    in an epoch file, the 0-based epoch in progress in a step file."""
    if checkpoint.get("final"):
        return math.ceil(step / per_epoch)
    if re.search(r"-\d{6}\.safetensors$", str(checkpoint.get("trainer_path") or checkpoint.get("path") or "")):
        return step // per_epoch
    return max(step - 1, 0) // per_epoch
