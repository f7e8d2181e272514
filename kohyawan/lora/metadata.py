"""kohyawan's own safetensors metadata keys, and how tools extend a file's metadata.

musubi-tuner records nothing about the task or the expert a LoRA was trained for, so kohyawan adds its
own ``kohyawan.*`` keys (all values are strings, as safetensors requires). Tools that rewrite a file keep
every existing key and add one provenance key saying what they did (a JSON object as a string).

``sshs_model_hash`` / ``sshs_legacy_hash`` are musubi's precomputed hashes over the tensor data (see
``io.write_stream``); a tool that changes the tensors recomputes them, so they always describe the file's
own weights.
"""

from __future__ import annotations

import json
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
