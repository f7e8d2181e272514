"""The fallback ladder: from an attempt's outcome to the next attempt, or a reasoned stop (pure).

Rungs come from ``kohyawan.run.rungs`` (vram_rungs / ram_rungs for the spec); anything with ``name``,
``changes``, ``needs_recache`` and ``keeps_state`` will do. Rungs are cumulative: every attempt runs
with all rungs taken so far, applied in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

RANK_KEYS = ("train.network_dim", "network_dim")
HALF_LR = "half_lr"


class RungLike(Protocol):
    name: str
    changes: Mapping[str, Any]
    needs_recache: bool
    keeps_state: bool


@dataclass(frozen=True)
class Saved:
    """A point a new attempt can start from (absolute step)."""
    step: int
    state_dir: str | None = None   # accelerate state folder (weights + optimizer + scheduler)
    weights: str | None = None     # the LoRA file saved at the same step


@dataclass(frozen=True)
class Next:
    action: str                    # "resume" | "restart" | "stop"
    reason: str
    rungs: tuple[str, ...] = ()    # every rung in effect for the next attempt, in order
    new_rung: str | None = None
    start_step: int = 0            # absolute step the next attempt starts from
    resume_state: str | None = None
    network_weights: str | None = None
    lr_scale: float = 1.0
    recache: bool = False


def _changes_rank(rung: RungLike) -> bool:
    return any(k in rung.changes for k in RANK_KEYS)


def start_from(saved: Saved | None, rung: RungLike | None) -> tuple[str, int, str | None, str | None, str]:
    """(action, start step, state dir, weights file, how) for a move to ``rung`` (None: same settings)."""
    if rung is not None and _changes_rank(rung):
        return "restart", 0, None, None, ("the network rank changes, so neither the saved state nor the LoRA "
                                          "weights can be loaded: restarting from step 0")
    if saved is None or saved.step <= 0:
        return "restart", 0, None, None, "nothing was saved yet: restarting from step 0"
    if (rung is None or rung.keeps_state) and saved.state_dir:
        return "resume", saved.step, saved.state_dir, None, f"resuming the saved state at step {saved.step}"
    if saved.weights:
        why = "its optimizer state cannot be loaded" if rung is not None and not rung.keeps_state else "no state was saved"
        return "resume", saved.step, None, saved.weights, (f"continuing from the LoRA weights of step {saved.step} "
                                                           f"with a fresh optimizer ({why})")
    return "restart", 0, None, None, "no usable checkpoint: restarting from step 0"


def decide(outcome: str, *, failure_line: str = "", vram: Sequence[RungLike] = (), ram: Sequence[RungLike] = (),
           applied: Sequence[str] = (), lr_scale: float = 1.0, attempts_made: int = 1, max_attempts: int = 6,
           saved: Saved | None = None, good_saved: Saved | None = None, previous: Sequence[str] = ()) -> Next:
    """The next move after an attempt ended with ``outcome``.

    ``saved``: the latest usable save; ``good_saved``: the latest one from before a loss spike / NaN
    began; ``previous``: outcomes of the earlier attempts (oldest first).
    """
    applied = tuple(applied)
    if outcome == "succeeded":
        return Next("stop", "training finished", applied, lr_scale=lr_scale)
    if outcome == "interrupted":
        if saved is None or saved.step <= 0:
            return Next("stop", "stopped by the user; nothing was saved yet, so 'runs resume' starts again from step 0",
                        applied, lr_scale=lr_scale)
        return Next("stop", f"stopped by the user; 'runs resume' continues from the save at step {saved.step}",
                    applied, lr_scale=lr_scale)
    if outcome == "crashed":
        return Next("stop", f"the trainer failed with an error that a setting change will not fix: {failure_line}"
                    if failure_line else "the trainer failed; not retried", applied, lr_scale=lr_scale)
    if attempts_made >= max_attempts:
        return Next("stop", f"retry budget exhausted after {attempts_made} attempts (last: {outcome}); "
                    f"rungs tried: {', '.join(applied) or 'none'}", applied, lr_scale=lr_scale)
    if outcome in ("oom_vram", "oom_ram"):
        pool = vram if outcome == "oom_vram" else ram
        rung = next((r for r in pool if r.name not in applied), None)
        if rung is None:
            kind = "VRAM" if outcome == "oom_vram" else "host RAM"
            tried = [r.name for r in pool]
            return Next("stop", f"out of {kind} and the ladder is exhausted; tried: {', '.join(tried) or 'nothing'} "
                        f"(in effect: {', '.join(applied) or 'none'})", applied, lr_scale=lr_scale)
        action, start, state, weights, how = start_from(saved, rung)
        return Next(action, f"{'CUDA' if outcome == 'oom_vram' else 'host'} out of memory: next rung {rung.name}; {how}",
                    applied + (rung.name,), rung.name, start, state, weights, lr_scale, bool(rung.needs_recache))
    if outcome in ("loss_spike", "nan"):
        what = "the loss spiked" if outcome == "loss_spike" else "the loss became NaN/inf"
        if previous.count("loss_spike") + previous.count("nan") >= 2:
            return Next("stop", f"{what} again after halving the learning rate twice", applied, lr_scale=lr_scale)
        action, start, state, weights, how = start_from(good_saved, None)
        return Next(action, f"{what}: halving the learning rate; {how} (the last save before it began)",
                    applied + (HALF_LR,), HALF_LR, start, state, weights, lr_scale * 0.5, False)
    if outcome == "stall":
        if previous and previous[-1] == "stall":
            return Next("stop", "the trainer stalled twice in a row; not retried again", applied, lr_scale=lr_scale)
        action, start, state, weights, how = start_from(saved, None)
        return Next(action, f"the trainer stalled: one more try with the same settings; {how}", applied, None,
                    start, state, weights, lr_scale, False)
    return Next("stop", f"unhandled outcome {outcome}", applied, lr_scale=lr_scale)
