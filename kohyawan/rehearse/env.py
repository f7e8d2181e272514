"""Every knob of the simulated trainer, read from the environment (so it crosses ``accelerate launch``).

KOHYAWAN_REHEARSE_GPU_GB      virtual GPU memory in GB (default 24)
KOHYAWAN_REHEARSE_RAM_GB      virtual host RAM in GB (default 64): the trainer is killed (SIGKILL; with pinned
                              block swap, the CPU allocator's error) while loading when kohyawan's host-RAM model
                              needs more
KOHYAWAN_REHEARSE_VRAM_SCALE  the simulated trainer needs this many times the VRAM kohyawan's memory model
                              predicts (default 1: exactly the model), to rehearse a GPU the estimate is off on
KOHYAWAN_REHEARSE_STEP_S      seconds per training step (default 0.2)
KOHYAWAN_REHEARSE_STARTUP_S   seconds of simulated model loading (default 1.0)
KOHYAWAN_REHEARSE_CACHE_S     seconds per cached item (default 0.05)
KOHYAWAN_REHEARSE_RANK        largest LoRA rank actually written (default 4; the requested rank is in metadata)
KOHYAWAN_REHEARSE_FAULTS      comma list of KIND@STEP: oom, host_oom, stall, nan, spike, crash
                              (STEP is the trainer's own step counter, which restarts at 0 on resume)
KOHYAWAN_REHEARSE_FAULT_STATE a JSON file: each fault listed there fires once across processes
                              (unset: a fault fires in every attempt)
KOHYAWAN_REHEARSE_LR_LOG      a file: one JSON line per step with the learning rate used
KOHYAWAN_REHEARSE_CACHE_LOG   a file: the cache scripts append one JSON line per start, item encoded and end
KOHYAWAN_REHEARSE_CACHE_KILL  N: a cache script cuts its N-th written file in half and kills itself (SIGKILL)
KOHYAWAN_REHEARSE_CACHE_SKIP  N: the latent cacher leaves its N-th item out and still succeeds (as musubi does
                              with a clip shorter than every target frame count)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

FAULT_KINDS = ("oom", "host_oom", "stall", "nan", "spike", "crash")


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        return default


def gpu_gb() -> float:
    return _float("KOHYAWAN_REHEARSE_GPU_GB", 24.0)


def ram_gb() -> float:
    return _float("KOHYAWAN_REHEARSE_RAM_GB", 64.0)


def vram_scale() -> float:
    return _float("KOHYAWAN_REHEARSE_VRAM_SCALE", 1.0)


def step_s() -> float:
    return _float("KOHYAWAN_REHEARSE_STEP_S", 0.2)


def startup_s() -> float:
    return _float("KOHYAWAN_REHEARSE_STARTUP_S", 1.0)


def cache_skip() -> int:
    return int(os.environ.get("KOHYAWAN_REHEARSE_CACHE_SKIP", "0") or 0)


def cache_s() -> float:
    return _float("KOHYAWAN_REHEARSE_CACHE_S", 0.05)


def rank_cap() -> int:
    return max(1, int(_float("KOHYAWAN_REHEARSE_RANK", 4)))


@dataclass
class Faults:
    planned: dict[int, str]
    state_file: str | None

    def at(self, step: int) -> str | None:
        kind = self.planned.get(step)
        if kind is None:
            return None
        if self.state_file:
            key = f"{kind}@{step}"
            try:
                with open(self.state_file) as f:
                    fired = json.load(f)
            except (OSError, ValueError):
                fired = []
            if key in fired:
                return None
            fired.append(key)
            tmp = self.state_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(fired, f)
            os.replace(tmp, self.state_file)
        return kind


def faults() -> Faults:
    planned = {}
    for item in os.environ.get("KOHYAWAN_REHEARSE_FAULTS", "").split(","):
        kind, _, step = item.strip().partition("@")
        if kind in FAULT_KINDS and step.isdigit():
            planned[int(step)] = kind
    return Faults(planned, os.environ.get("KOHYAWAN_REHEARSE_FAULT_STATE") or None)
