"""The trainer's CUDA caching-allocator setting: what kohyawan starts it with and whether the memory model's
allocator reserve is the one for expandable segments (pure; see docs/architecture.md).

torch reads ``PYTORCH_CUDA_ALLOC_CONF`` (comma-separated ``key:value`` pairs) when the trainer process
starts. ``expandable_segments:True`` lets the caching allocator grow segments in place instead of keeping
many fixed-size ones, which shrinks the memory it reserves above what tensors use (fragmentation). kohyawan
starts the trainer with it unless the user set the variable, or torch's newer name for it,
``PYTORCH_ALLOC_CONF``, which torch reads first (then the user's value is used as it is).
"""

from __future__ import annotations

from typing import Mapping

VAR = "PYTORCH_CUDA_ALLOC_CONF"
NEW_VAR = "PYTORCH_ALLOC_CONF"     # torch's newer name for it, read first
EXPANDABLE = "expandable_segments:True"


def in_effect(environ: Mapping[str, str]) -> str | None:
    """The setting a torch process started with ``environ`` uses (None: torch's default)."""
    return environ.get(NEW_VAR, environ.get(VAR))


def conf(environ: Mapping[str, str]) -> tuple[str, str]:
    """(the setting the trainer runs with when kohyawan starts it from ``environ``, where it comes from:
    "kohyawan" or the user's variable)."""
    for var in (NEW_VAR, VAR):
        if var in environ:
            return environ[var], var
    return EXPANDABLE, "kohyawan"


def trainer_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What to add to the trainer's environment: expandable segments, unless the user set either variable."""
    return {VAR: EXPANDABLE} if conf(environ)[1] == "kohyawan" else {}


def expandable(conf: str | None) -> bool:
    """Whether an allocator setting turns expandable segments on (the last mention wins, as in torch)."""
    on = False
    for item in (conf or "").split(","):
        key, _, value = item.strip().partition(":")
        if key.strip() == "expandable_segments":
            on = value.strip().lower() == "true"
    return on
