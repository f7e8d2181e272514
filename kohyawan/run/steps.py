"""The attempt loop's decisions, pure: they read and change run.json's stage records (plain dicts) and
return values; they start nothing and touch no file. ``kohyawan.run.training`` does what they decide.

A training stage's record (``stages[]`` in run.json) holds the rungs in effect, the LR scale, the resume
points saved so far (``saves``: absolute step, state folder, LoRA file) and, once done, the final LoRA.
See docs/architecture.md ("A run") for the loop these steps make up.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from kohyawan.run import ladder
from kohyawan.run.ladder import Next, Saved
from kohyawan.run.runview import brief
from kohyawan.trainer.musubi_log import classify_failure


class Stop(Exception):
    """The run stops here: ``status`` ("failed" | "stopped") and the reason run.json records."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


# --- stage records -----------------------------------------------------------------------------------
def stage_record(data: dict, name: str) -> dict:
    """The record of stage ``name`` in run.json's data, added as "pending" when it has none yet."""
    for rec in data.setdefault("stages", []):
        if rec["name"] == name:
            return rec
    rec = {"name": name, "status": "pending"}
    data["stages"].append(rec)
    return rec


def inherited_rungs(stages: Sequence[Mapping], rec: Mapping, known: Iterable[str]) -> tuple[str | None, list[str]]:
    """A second expert has the first one's size: it starts with the rungs the last finished training stage
    needed (those still on this ladder). Returns (that stage's name, the rungs), or (None, [])."""
    earlier = [r for r in stages if r["name"].startswith("train") and r is not rec and r.get("status") == "done"]
    if not earlier:
        return None, []
    known = set(known)
    return earlier[-1]["name"], [n for n in earlier[-1].get("rungs", []) if n in known]


def open_record(rec: dict) -> None:
    """A stage about to train: the fields every attempt reads, and "running"."""
    rec.setdefault("lr_scale", 1.0)
    rec.setdefault("saves", [])
    rec["status"] = "running"


def saves_of(rec: Mapping) -> list[Saved]:
    return [Saved(**s) for s in rec["saves"]]


def record_save(saves: list[dict], saved: Saved) -> None:
    """Put a new resume point on the books: the LoRA of a step and the state of the same step arrive one
    after the other (in either order) and make one entry."""
    for entry in saves:
        if entry["step"] == saved.step:
            entry.update({k: v for k, v in saved.__dict__.items() if v is not None})
            return
    saves.append(dict(saved.__dict__))


# --- resume points -------------------------------------------------------------------------------------
def _newest_key(s: Saved) -> tuple[int, bool]:
    return s.step, s.state_dir is not None  # at one step a full state beats the LoRA alone


def latest(saves: Iterable[Saved]) -> Saved | None:
    return max(saves, key=_newest_key, default=None)


def first_move(saves: Sequence[Saved], rungs: Sequence[str], lr_scale: float) -> Next:
    """The first attempt of this kohyawan process: from the newest save (a resumed run), else step 0."""
    newest = latest(saves)
    action, start, state, weights, how = ladder.start_from(newest, None)
    return Next(action, how if newest else "first attempt", tuple(rungs), None, start, state, weights, lr_scale)


def bad_from(outcome: str, bad_loss: tuple[int, float] | None, absolute: int,
             watchdog: Mapping[str, Any]) -> int | None:
    """The first step whose save is not trusted after a NaN or a loss spike (None after anything else):
    the NaN's step, or the start of the spike (patience steps back, and half the window before that)."""
    if outcome == "nan":
        return bad_loss[0] if bad_loss else None
    if outcome == "loss_spike":
        return absolute - int(watchdog["loss_spike_patience"]) - int(watchdog["loss_spike_window"]) // 2
    return None


def resume_points(saves: Iterable[Saved], bad_from_step: int | None) -> tuple[Saved | None, Saved | None]:
    """(the newest usable save, the newest one from before ``bad_from_step``) for ``ladder.decide``."""
    usable = [s for s in saves if s.state_dir or s.weights]
    good = [s for s in usable if bad_from_step is None or s.step < bad_from_step]
    return latest(usable), latest(good)


# --- one attempt -------------------------------------------------------------------------------------
def cache_checks(stages: Iterable[Any], nxt: Next, keyed: bool = False) -> list[tuple[Any, bool]]:
    """Before every attempt each caching stage is checked against this attempt's dataset config (a rung may
    change frames or resolution): (stage, forced). In the cache store (``keyed``) such a rung's latents have
    a folder of their own, found complete or filled by the check, so nothing is forced (going back to an
    earlier setting finds its folder again); a run folder's own caches are forced by a rung that needs it."""
    return [(st, nxt.recache and st.name == "cache_latents" and not keyed)
            for st in stages if st.name.startswith("cache")]


def attempt_overrides(output_name: str, total: int, nxt: Next) -> dict[str, Any]:
    """What an attempt's training config changes: a fresh output name, the steps that remain, where it resumes."""
    overrides: dict[str, Any] = {"output_name": output_name, "max_train_steps": total - nxt.start_step}
    if nxt.resume_state:
        overrides["resume"] = nxt.resume_state
    if nxt.network_weights:
        overrides["network_weights"] = nxt.network_weights
    return overrides


def attempt_outcome(*, stopped_for: str | None, stop_reason: str | None, exit_code: int | None,
                    tail: Sequence[str], model_saved: bool, reached: int, total: int) -> tuple[str, str, bool]:
    """(outcome, reason, the trainer finished) of an attempt: kohyawan's own stop first, then a finished
    trainer (which must have reached the last step), then the trainer's failure as its log tells it."""
    finished = stopped_for is None and exit_code == 0 and model_saved
    if stopped_for:
        return stopped_for, stop_reason, finished
    if finished and reached != total:
        return "crashed", f"the trainer stopped at step {reached}, expected {total}", finished
    if finished:
        return "succeeded", f"trained to step {reached}", finished
    if exit_code == 0:
        return "crashed", "the trainer exited without saving the model", finished
    failure = classify_failure(tail, exit_code)
    return failure.outcome, failure.line, finished


def checkpoint_epoch(step: int, steps_per_epoch: int | None, kind: str) -> int | None:
    """The epoch of a checkpoint saved at absolute ``step``, counted as musubi-tuner counts ``ss_epoch`` in an
    uninterrupted run: the epochs finished before the one a step checkpoint (``kind`` "step") falls in, those
    finished at an epoch checkpoint ("epoch"), all of them for the final one ("final"). None when the
    steps per epoch are unknown."""
    if not steps_per_epoch:
        return None
    if kind == "step":
        return (step - 1) // steps_per_epoch
    if kind == "epoch":
        return step // steps_per_epoch
    return -(-step // steps_per_epoch)


def earlier_outcomes(attempts: Sequence[Mapping], stage: str) -> list[str]:
    """Outcomes of this stage's attempts before the last one, oldest first."""
    return [a["outcome"] for a in attempts if a.get("stage") == stage][:-1]


def rung_changes(applied: Sequence[ladder.RungLike], lr_scale: float = 1.0) -> dict:
    """Every setting the rungs the attempt runs with change, in order (the LR halvings as ``lr_scale``), for the
    attempt's record."""
    changes: dict[str, Any] = {}
    for rung in applied:
        changes.update(rung.changes)
    if lr_scale != 1.0:
        changes["lr_scale"] = lr_scale
    return changes


# --- after an attempt ----------------------------------------------------------------------------------
def stop_status(outcome: str) -> str:
    return "stopped" if outcome == "interrupted" else "failed"


def ladder_messages(attempt: int, outcome: str, reason: str | None, nxt: Next) -> tuple[str, str]:
    """(the console line, the webhook text) when the ladder moves on after an attempt."""
    return (f"attempt {attempt} ended: {outcome} ({brief(reason)}); {brief(nxt.reason)}",
            f"{outcome}: {reason}. Next: {nxt.reason}")
