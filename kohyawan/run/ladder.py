"""The fallback ladder: from an attempt's outcome to the next attempt, or a reasoned stop (pure).

Rungs come from ``kohyawan.run.rungs`` (vram_rungs / ram_rungs for the spec); anything with ``name``,
``changes``, ``needs_recache`` and ``keeps_state`` will do. Rungs are cumulative: every attempt runs
with all rungs taken so far, applied in order.
See docs/architecture.md ("A run").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

RANK_KEYS = ("train.network_dim", "network_dim")
HALF_LR = "half_lr"
RAM_SWAP_STEP = "fewer_blocks_to_swap="   # host-RAM rungs that lower block swap (``kohyawan.run.rungs``)
JOINED = "+"     # several rungs taken in one attempt are named a+b (``kohyawan.run.rungs.JOIN``)


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


@dataclass(frozen=True)
class Ended:
    """What ``decide`` knows about the attempt that ended and the ones before it."""
    outcome: str
    failure_line: str | None
    vram: tuple[RungLike, ...]
    ram: tuple[RungLike, ...]
    applied: tuple[str, ...]
    lr_scale: float
    attempts_made: int
    max_attempts: int
    saved: Saved | None
    good_saved: Saved | None
    previous: tuple[str, ...]
    ram_exhausted: str = ""

    def stop(self, reason: str) -> Next:
        return Next("stop", reason, self.applied, lr_scale=self.lr_scale)


def decide(outcome: str, *, failure_line: str = "", vram: Sequence[RungLike] = (), ram: Sequence[RungLike] = (),
           applied: Sequence[str] = (), lr_scale: float = 1.0, attempts_made: int = 1, max_attempts: int = 6,
           saved: Saved | None = None, good_saved: Saved | None = None, previous: Sequence[str] = (),
           ram_exhausted: str = "") -> Next:
    """The next move after an attempt ended with ``outcome``.

    ``saved``: the latest usable save; ``good_saved``: the latest one from before a loss spike / NaN
    began; ``previous``: outcomes of the earlier attempts (oldest first); ``ram`` the host-RAM rungs worth
    trying now and ``ram_exhausted`` what would be needed once there are none (``kohyawan.run.hostram``).
    """
    e = Ended(outcome, failure_line, tuple(vram), tuple(ram), tuple(applied), lr_scale, attempts_made, max_attempts,
              saved, good_saved, tuple(previous), ram_exhausted)
    if outcome in _FINAL:  # never retried, whatever the budget
        return _FINAL[outcome](e)
    if attempts_made >= max_attempts:
        return e.stop(f"retry budget exhausted after {attempts_made} attempts (last: {outcome}); "
                      f"rungs tried: {', '.join(e.applied) or 'none'}")
    if outcome in _RETRIED:
        return _RETRIED[outcome](e)
    return e.stop(f"unhandled outcome {outcome}")


def _succeeded(e: Ended) -> Next:
    return e.stop("training finished")


def _interrupted(e: Ended) -> Next:
    if e.saved is None or e.saved.step <= 0:
        return e.stop("stopped by the user; nothing was saved yet, so 'runs resume' starts again from step 0")
    return e.stop(f"stopped by the user; 'runs resume' continues from the save at step {e.saved.step}")


def _crashed(e: Ended) -> Next:
    return e.stop(f"the trainer failed with an error that a setting change will not fix: {e.failure_line}"
                  if e.failure_line else "the trainer failed; not retried")


def _swap_lowered_for_ram(applied: Sequence[str]) -> bool:
    return any(part.startswith(RAM_SWAP_STEP) for name in applied for part in name.split(JOINED))


def _raises_swap(rung: RungLike) -> bool:
    return "train.blocks_to_swap" in rung.changes and rung.name.startswith("blocks_to_swap=")


def _out_of_memory(e: Ended) -> Next:
    """The next rung of the VRAM or the host-RAM ladder, resumed from where its changes allow. Once block swap
    was lowered for host RAM, a VRAM rung that swaps deeper again is skipped: it would run out of host RAM."""
    vram = e.outcome == "oom_vram"
    pool = e.vram if vram else e.ram
    if vram and _swap_lowered_for_ram(e.applied):
        pool = tuple(r for r in pool if not _raises_swap(r))
    rung = next((r for r in pool if r.name not in e.applied), None)
    if rung is None:
        return e.stop(_exhausted(e, pool))
    action, start, state, weights, how = start_from(e.saved, rung)
    return Next(action, f"{'CUDA' if vram else 'host'} out of memory: next rung {rung.name}; {how}",
                e.applied + (rung.name,), rung.name, start, state, weights, e.lr_scale, bool(rung.needs_recache))


def _exhausted(e: Ended, pool: Sequence[RungLike]) -> str:
    in_effect = ", ".join(e.applied) or "none"
    if e.outcome == "oom_vram":
        return (f"out of VRAM and the ladder is exhausted; tried: {', '.join(r.name for r in pool) or 'nothing'} "
                f"(in effect: {in_effect})")
    return ("out of host RAM and the ladder is exhausted" + (f": {e.ram_exhausted}" if e.ram_exhausted else "")
            + f" (rungs in effect: {in_effect})")


def _bad_loss(e: Ended) -> Next:
    """A loss spike or NaN: half the learning rate from the last save before it began, twice at most."""
    what = "the loss spiked" if e.outcome == "loss_spike" else "the loss became NaN/inf"
    if e.previous.count("loss_spike") + e.previous.count("nan") >= 2:
        return e.stop(f"{what} again after halving the learning rate twice")
    action, start, state, weights, how = start_from(e.good_saved, None)
    return Next(action, f"{what}: halving the learning rate; {how} (the last save before it began)",
                e.applied + (HALF_LR,), HALF_LR, start, state, weights, e.lr_scale * 0.5, False)


def _stalled(e: Ended) -> Next:
    if e.previous and e.previous[-1] == "stall":
        return e.stop("the trainer stalled twice in a row; not retried again")
    action, start, state, weights, how = start_from(e.saved, None)
    return Next(action, f"the trainer stalled: one more try with the same settings; {how}", e.applied, None,
                start, state, weights, e.lr_scale, False)


_FINAL = {"succeeded": _succeeded, "interrupted": _interrupted, "crashed": _crashed}
_RETRIED = {"oom_vram": _out_of_memory, "oom_ram": _out_of_memory, "loss_spike": _bad_loss, "nan": _bad_loss,
            "stall": _stalled}
