"""The host-RAM ladder's judgement (pure): which of the RAM rungs are worth an attempt after the kernel (or
torch's CPU allocator) refused the trainer host memory, and what would be needed once none is.

The candidates are ``rungs.ram_rungs`` of the settings in effect (no pinned memory, fewer data-loader
workers, fp8 weights, then block swap down the grid to 0). The estimate's host-RAM model
(``kohyawan.estimate.memory.host_ram``) judges them for the phase that failed. A trainer killed before its
first step died loading the DiTs: with block swap musubi loads the experts into host RAM first, the one
loading with its 16-bit tensors and, with fp8, the copy made from them (measured), so only no swap at all,
which loads them straight to the GPU, lowers that peak. One killed later died in the steady state, where
every swapped block, worker and pinned buffer counts.

A step is kept when the model says it lowers that phase's need and its VRAM estimate still fits the GPU
with the margin (fewer swapped blocks cost VRAM). A step that lowers it but fits the GPU only with VRAM
savers passed over before it (fp8 weights) is taken together with them, as one step named ``a+b``
(``rungs.combined``). One exception: when torch's CPU allocator refused memory while block swap pins it,
turning pinned memory off is kept whatever the model says (the model counts pinned transfers as the cheaper
kind; what fails there is the limit on page-locked memory, which it does not know). When nothing is left,
``exhausted`` names where the ladder ended, the host RAM needed there and the GPU that would need no block
swap. See docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from kohyawan.run import rungs as rungs_mod

MIN_SAVING_GIB = 0.05   # a step the model says frees less than this is not worth a model load
PINNED = "train.use_pinned_memory_for_block_swap"
WATCHED = (PINNED, "train.max_data_loader_n_workers", "train.fp8_base",
           "train.blocks_to_swap")   # what the host-RAM rungs change, named in the exhausted message


@dataclass(frozen=True)
class Need:
    vram_gib: float
    load_gib: float       # the peak while the DiTs load (the model's total host RAM)
    steady_gib: float     # while training


def need_of(spec: Any, **estimate_kwargs: Any) -> Need:
    """VRAM and host RAM of ``spec`` by the estimate's models."""
    from kohyawan.estimate.plan import estimate_spec

    e = estimate_spec(spec, **estimate_kwargs)
    transient = float(e.ram_parts.get("load_transient", 0.0))
    return Need(e.vram_gib, e.ram_gib, e.ram_gib - transient)


def _ram(need: Need, phase: str) -> float:
    return need.load_gib if phase == "load" else need.steady_gib


@dataclass(frozen=True)
class RamPlan:
    steps: tuple[Any, ...]    # the rungs worth trying, in order (cumulative from the settings in effect)
    exhausted: str            # what would be needed, for the stop message when ``steps`` is empty
    phase: str


def plan(spec: Any, candidates: Sequence[Any], *, phase: str, vram_gib: float | None, margin_gib: float,
         ram_gib: float | None = None, pinned_refused: bool = False,
         need: Callable[[Any], Need] = need_of) -> RamPlan:
    """The RAM rungs worth an attempt after a host-RAM failure in ``phase`` ("load" or "train");
    ``pinned_refused``: the failure was torch's CPU allocator refusing memory."""
    current, now = spec, need(spec)
    kept, held = [], []   # held: steps passed over that lower the VRAM need, which a later step may require
    for rung in candidates:
        trial = rungs_mod.apply(current, [rung])
        after = need(trial)
        fits = vram_gib is None or after.vram_gib + margin_gib <= vram_gib
        unpins = pinned_refused and rung.changes.get(PINNED) is False
        lowers = unpins or _ram(after, phase) < _ram(now, phase) - MIN_SAVING_GIB
        if lowers and not fits and held:
            # e.g. no block swap fits the GPU only with fp8 weights, which alone raise the load: one step, both
            joined = rungs_mod.combined([*held, rung])
            trial = rungs_mod.apply(current, [joined])
            after = need(trial)
            if vram_gib is None or after.vram_gib + margin_gib <= vram_gib:
                rung, fits, lowers = joined, True, _ram(after, phase) < _ram(now, phase) - MIN_SAVING_GIB
        if fits and lowers:
            kept.append(rung)
            current, now, held = trial, after, []
        elif after.vram_gib < now.vram_gib:
            held.append(rung)
    return RamPlan(tuple(kept), exhausted(current, now, phase, vram_gib=vram_gib, margin_gib=margin_gib,
                                          ram_gib=ram_gib, need=need), phase)


def exhausted(spec: Any, now: Need, phase: str, *, vram_gib: float | None, margin_gib: float,
              ram_gib: float | None, need: Callable[[Any], Need] = need_of) -> str:
    """'needs ~X GiB host RAM ... at the lowest-RAM setting the ladder reaches on this GPU (...): add host RAM,
    or ...'. The settings named are where the ladder ends, which may be where it started."""
    when = "while the DiTs load" if phase == "load" else "while training"
    here = f"; {ram_gib:.0f} GiB here" if ram_gib else ""
    text = (f"needs ~{_ram(now, phase):.1f} GiB host RAM {when} (estimate{here}) at the lowest-RAM setting "
            f"the ladder reaches on this GPU ({describe(spec)}): add host RAM")
    if int(rungs_mod.effective(spec, "train.blocks_to_swap") or 0) > 0:
        unswapped = spec.with_changes({"train.blocks_to_swap": 0}, "hostram")
        fp8 = rungs_mod.named("fp8_base", unswapped)      # the smallest GPU for no swap: with fp8 weights
        alone = min((need(s) for s in (unswapped, *([rungs_mod.apply(unswapped, [fp8])] if fp8 else []))),
                    key=lambda n: n.vram_gib)
        if _ram(alone, phase) < _ram(now, phase):
            text += (f", or use a GPU with {alone.vram_gib + margin_gib:.0f} GiB or more, where no block swap is "
                     f"needed (~{_ram(alone, phase):.1f} GiB host RAM)")
    return text


def describe(spec: Any) -> str:
    shown = [(key.split(".", 1)[1], rungs_mod.effective(spec, key)) for key in WATCHED]
    return ", ".join(f"{name}={value}" for name, value in shown if value is not None and value is not False)
