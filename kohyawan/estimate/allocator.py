"""The trainer's CUDA caching-allocator setting: what kohyawan starts it with and whether the memory model's
allocator reserve is the one for expandable segments (pure; see docs/architecture.md).

torch reads ``PYTORCH_CUDA_ALLOC_CONF`` (comma-separated ``key:value`` pairs) when the trainer process
starts. ``expandable_segments:True`` lets the caching allocator grow segments in place instead of keeping
many fixed-size ones, which shrinks the memory it reserves above what tensors use (fragmentation). kohyawan
starts the trainer with it unless the user set the variable (then the user's value is used as it is).
"""

from __future__ import annotations

from typing import Mapping

VAR = "PYTORCH_CUDA_ALLOC_CONF"
EXPANDABLE = "expandable_segments:True"


def trainer_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What to add to the trainer's environment: expandable segments, unless the user set the variable."""
    return {} if VAR in environ else {VAR: EXPANDABLE}


def trainer_conf(environ: Mapping[str, str]) -> str:
    """The value the trainer runs with (for run.json and the estimate)."""
    return environ.get(VAR, EXPANDABLE)


def expandable(conf: str | None) -> bool:
    """Whether an allocator setting turns expandable segments on (the last mention wins, as in torch)."""
    on = False
    for item in (conf or "").split(","):
        key, _, value = item.strip().partition(":")
        if key.strip() == "expandable_segments":
            on = value.strip().lower() == "true"
    return on
