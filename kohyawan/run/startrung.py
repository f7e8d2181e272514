"""Where a training stage starts on the fallback ladder with ``--start-rung auto``: the first position that
``kohyawan estimate`` says fits the GPU the trainer uses with the profile's safety margin, learning from
earlier runs and calibrations on the same GPU. The GPU is the one the run recorded in run.json when it
started watching it (``Run.watch_gpus``: the first GPU the trainer sees, or a rehearsal's virtual one).
See docs/architecture.md ("A run").
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from kohyawan.estimate import allocator
from kohyawan.estimate.observations import load_observations
from kohyawan.estimate.plan import DEFAULT_MARGIN_GIB, ladder_estimates
from kohyawan.run import rungs as rungs_mod
from kohyawan.run.ladder import RungLike


def estimate_kwargs(opts, data: dict) -> dict[str, Any]:
    """What the estimate needs to speak for this run: what was learnt on its GPU (runs and calibrations in
    the runs folder) and whether the trainer runs with expandable segments."""
    gpu_name = (data.get("gpu") or {}).get("name")
    return {"observations": load_observations(opts.runs_dir) if gpu_name else [], "gpu_name": gpu_name,
            # the estimate's allocator reserve follows the trainer's setting
            "expandable_segments": allocator.expandable(data.get("alloc_conf"))}


def planned_gib(opts, data: dict) -> float | None:
    """The GPU memory the run plans for: the GPU's (NVML, or a rehearsal's virtual one), or less when the user
    gave ``--gpu-memory`` for a real run (a GPU shared with another program); recorded as ``gpu_budget_gib``."""
    gib = (data.get("gpu") or {}).get("total_gib")
    budget = None if opts.rehearse else opts.gpu_memory_gb
    if budget:
        data["gpu_budget_gib"] = min(float(gib), float(budget)) if gib else float(budget)
        return data["gpu_budget_gib"]
    return gib


def margin_of(spec) -> float:
    return float(spec.extra.get("watchdog", {}).get("vram_margin_gb", DEFAULT_MARGIN_GIB))


def estimated_start(base, vram: Sequence[RungLike], opts, data: dict, say: Callable[[str], None]) -> list[str]:
    """The rungs to start with (none when the GPU's size is unknown); records in run.json's ``data`` what
    the estimate said, and says what it learnt from earlier runs on this GPU up to the start position."""
    gib = planned_gib(opts, data)
    if gib is None:
        say("estimate: GPU size unknown, starting at the profile's settings")
        return []
    margin = margin_of(base)
    ladder = ladder_estimates(base, vram, rungs_mod.apply, vram_gib=gib, margin_gib=margin,
                              **estimate_kwargs(opts, data))
    index = ladder.first_fit
    est = ladder.estimates[index]          # -1: nothing fits, the last rung's estimate
    learnt: dict[str, list[str]] = {}
    for e in ladder.estimates[:index + 1 if index >= 0 else None]:
        for note in e.corrections.notes:
            learnt.setdefault(note, []).append(e.label)
    data["estimate"] = {"gpu_gib": gib, "margin_gib": margin, "start_index": index,
                        "predicted_peak_gib": round(est.vram_gib, 2), "corrections": list(learnt)}
    for note, labels in learnt.items():
        say(f"estimate: learnt from earlier runs on this GPU: {note} (for {', '.join(labels)})")
    say(start_message(index, ladder.rungs[index - 1].name if index > 0 else None, est.vram_gib, gib))
    return start_rungs(index, vram)


def start_rungs(index: int, vram: Sequence[RungLike]) -> list[str]:
    """The rungs before ladder position ``index`` (0: the profile's settings; -1: nothing fits, so start
    at the profile's settings and climb)."""
    return [r.name for r in vram[:index]] if index > 0 else []


def start_message(index: int, rung: str | None, peak_gib: float, gib: float) -> str:
    if index == 0:
        return f"estimate: the profile's settings fit {gib:g} GiB (predicted peak {peak_gib:.1f} GiB)"
    if index < 0:
        return (f"estimate: nothing on the ladder fits {gib:g} GiB (last rung {peak_gib:.1f} GiB); "
                f"starting at the profile's settings and climbing")
    return (f"estimate: starting at rung {rung} (predicted peak {peak_gib:.1f} GiB of "
            f"{gib:g}); --start-rung base starts at the profile's settings")
