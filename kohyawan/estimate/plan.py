"""Estimate a run before it spends GPU hours: peak VRAM, host RAM, time, disk and cost (pure apart from
reading the dataset's media sizes; see docs/architecture.md).

The memory and time physics live in ``memory`` and ``steptime``; what the trainer will train on in
``workload`` (from the data: every rung that changes frames or resolution is recomputed on the same media);
this module turns musubi option values (or a RunSpec and its fallback ladder) into a report, marks the first
rung that fits a GPU with a safety margin, and applies corrections learnt from the user's own runs
(``observations`` reads and fits them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from kohyawan.estimate import disk as sizes, memory, steptime, workload as workload_mod
from kohyawan.estimate.offers import Gpu
from kohyawan.estimate.observations import Corrections, Observation, fit_corrections

DEFAULT_MARGIN_GIB = 1.5   # headroom kept free: allocator spikes and the model's own error (about +-5 %)
STARTUP_SECONDS = 120      # loading the DiT(s), building the network, the first (uncounted) step


@dataclass(frozen=True)
class Cost:
    provider: str
    gpu: str
    usd: float
    usd_max: float | None
    usd_per_hour: float
    source: str
    hours: float


@dataclass(frozen=True)
class Estimate:
    label: str                         # "base" or the rung's name
    changes: Mapping[str, Any]         # cumulative changes from the base settings
    vram_gib: float
    vram_parts: Mapping[str, float]
    ram_gib: float
    ram_parts: Mapping[str, float]
    s_per_step: float | None           # None when no GPU throughput is known
    total_steps: int | None
    hours: float | None
    disk_gib: Mapping[str, float]
    costs: tuple[Cost, ...] = ()
    vram_limit_gib: float | None = None
    ram_limit_gib: float | None = None
    margin_gib: float = DEFAULT_MARGIN_GIB
    corrections: Corrections = field(default_factory=Corrections)
    first_step_vram_gib: float | None = None   # step 1, before the optimizer state exists
    workload: workload_mod.Workload | None = None
    time_band: float | None = None             # relative uncertainty of s_per_step (points.time_band)
    time_basis: str = ""
    expandable_segments: bool = False          # the allocator reserve assumed: with expandable segments

    @property
    def fits_vram(self) -> bool | None:
        if self.vram_limit_gib is None:
            return None
        return self.vram_gib + self.margin_gib <= self.vram_limit_gib

    @property
    def fits_ram(self) -> bool | None:
        if self.ram_limit_gib is None:
            return None
        return self.ram_gib <= self.ram_limit_gib

    @property
    def fits(self) -> bool | None:
        checks = [f for f in (self.fits_vram, self.fits_ram) if f is not None]
        return all(checks) if checks else None

    def to_dict(self) -> dict[str, Any]:
        r = lambda x: None if x is None else round(x, 2)  # noqa: E731
        return {
            "label": self.label, "changes": dict(self.changes),
            "vram_gib": r(self.vram_gib), "vram_parts": {k: r(v) for k, v in self.vram_parts.items()},
            "ram_gib": r(self.ram_gib), "ram_parts": {k: r(v) for k, v in self.ram_parts.items()},
            "s_per_step": r(self.s_per_step), "total_steps": self.total_steps, "hours": r(self.hours),
            "disk_gib": {k: r(v) for k, v in self.disk_gib.items()},
            "costs": [{"provider": c.provider, "gpu": c.gpu, "usd": r(c.usd), "usd_max": r(c.usd_max),
                       "usd_per_hour": c.usd_per_hour, "source": c.source, "hours": r(c.hours)}
                      for c in self.costs],
            "vram_limit_gib": r(self.vram_limit_gib), "ram_limit_gib": r(self.ram_limit_gib),
            "margin_gib": self.margin_gib, "fits_vram": self.fits_vram, "fits_ram": self.fits_ram,
            "fits": self.fits,
            "first_step_vram_gib": r(self.first_step_vram_gib),
            "s_per_step_band": None if self.time_band is None else round(self.time_band, 3),
            "time_basis": self.time_basis, "expandable_segments": self.expandable_segments,
            "workload": _workload_dict(self.workload),
            "corrections": {"vram_factor": round(self.corrections.vram_factor, 3),
                            "time_factor": round(self.corrections.time_factor, 3),
                            "vram_runs": self.corrections.vram_runs, "time_runs": self.corrections.time_runs,
                            "notes": list(self.corrections.notes)},
        }


def _saves(total_steps: int | None, train: Mapping[str, Any], epochs: int | None) -> int:
    """How many LoRA files (and states) a run leaves on disk at its peak."""
    n = 1
    every_steps = train.get("save_every_n_steps")
    if every_steps and total_steps:
        kept = total_steps // int(every_steps)
        if train.get("save_last_n_steps"):
            kept = min(kept, math.ceil(int(train["save_last_n_steps"]) / int(every_steps)) + 1)
        n += kept
    every_epochs = train.get("save_every_n_epochs")
    if every_epochs and epochs:
        kept = max(0, (epochs - 1) // int(every_epochs))
        if train.get("save_last_n_epochs"):
            kept = min(kept, int(train["save_last_n_epochs"]) + 1)
        n += kept
    return n


def disk(inp: memory.MemoryInputs, train: Mapping[str, Any], items: int | None,
         total_steps: int | None, epochs: int | None) -> dict[str, float]:
    """GiB of caches, LoRA checkpoints and saved states (per item when items is None: multiply yourself)."""
    count = 1 if items is None else items
    save_bytes = {"fp32": 4, "float": 4, "fp16": 2, "bf16": 2}.get(str(train.get("save_precision") or "fp32"), 4)
    files = 2 if inp.expert == "sequential" else 1   # one shared file for "both", one per expert otherwise
    saves = _saves(total_steps, train, epochs) * files
    states = saves if train.get("save_state") else 0
    parts = {
        "latent_cache": count * sizes.latent_cache_bytes(inp) / memory.GIB,
        "text_cache": count * sizes.text_cache_bytes() / memory.GIB,
        "checkpoints": saves * sizes.lora_file_bytes(inp, save_bytes) / memory.GIB,
        "states": states * sizes.state_bytes(inp) / memory.GIB,
    }
    parts["total"] = sum(parts.values())
    return parts


def _workload_dict(w: workload_mod.Workload | None) -> dict[str, Any] | None:
    if w is None:
        return None
    peak = w.peak()
    return {"basis": w.basis, "images": w.images, "clips": w.clips, "notes": list(w.notes),
            "largest_batch": None if peak is None else {
                "kind": peak.kind, "width": peak.width, "height": peak.height, "frames": peak.frames,
                "batch": peak.largest_batch, "tokens": peak.tokens * peak.largest_batch},
            "buckets": [{"dataset": s.dataset, "kind": s.kind, "width": s.width, "height": s.height,
                         "frames": s.frames, "items": s.items, "batch_size": s.batch_size} for s in w.shapes]}


def _hours(s_per_step: float, inp: memory.MemoryInputs, total_steps: int) -> float:
    runs = 2 if inp.expert == "sequential" else 1     # high then low: two full trainings
    return runs * (total_steps * s_per_step + STARTUP_SECONDS) / 3600


def _time_basis(gpu: Gpu) -> tuple[float | None, str]:
    """(relative band, words): where the GPU's throughput comes from and how uncertain it is."""
    from kohyawan.estimate import offers, points

    fitted_on = gpu if gpu.mfu_from is None else offers.load_gpus().get(gpu.mfu_from)
    band = points.time_band(fitted_on) if fitted_on is not None else None
    if band is None or not band.points:
        return None, f"{gpu.key}: throughput (mfu {gpu.mfu:g}) not measured"
    text = f"fitted to {len(band.points)} measured steps on {fitted_on.key} ({', '.join(band.points)}): " \
           f"+-{band.relative:.0%}"
    if fitted_on.key != gpu.key:
        text += f"; {gpu.key} scaled from it by its dense bf16 rate, not measured"
    return band.relative, text


def _costs(inp: memory.MemoryInputs, work: workload_mod.Workload, offers: Sequence[Gpu], need_gib: float,
           total_steps: int, boundary: float, time_factor: float, learnt_on: str | None) -> tuple[Cost, ...]:
    """Every offer of every GPU the setting fits, cheapest first."""
    costs: list[Cost] = []
    for g in offers:
        if g.vram_gib < need_gib:
            continue
        factor = time_factor if g.key == learnt_on else 1.0   # a learnt time factor belongs to its GPU
        g_hours = _hours(steptime.mean_step_seconds(inp, work, g, boundary) * factor, inp, total_steps)
        for o in g.offers:
            costs.append(Cost(o.provider, g.key, g_hours * o.usd_per_hour,
                              g_hours * o.usd_per_hour_max if o.usd_per_hour_max else None,
                              o.usd_per_hour, o.source, g_hours))
    return tuple(sorted(costs, key=lambda c: c.usd))


def estimate_values(train: Mapping[str, Any], dataset: Mapping[str, Any], *, task: str = "t2v-A14B",
                    expert: str = "both", gpu: Gpu | None = None, vram_gib: float | None = None,
                    ram_gib: float | None = None, margin_gib: float = DEFAULT_MARGIN_GIB,
                    items: int | None = None, total_steps: int | None = None, epochs: int | None = None,
                    observations: Sequence[Observation] = (), gpu_name: str | None = None,
                    label: str = "base", changes: Mapping[str, Any] | None = None,
                    offers: Sequence[Gpu] = (), workload: workload_mod.Workload | None = None,
                    expandable_segments: bool = False) -> Estimate:
    """The estimate for one set of musubi values.

    ``workload`` is what the trainer will train on (``workload.for_spec``; without it the dataset settings'
    resolution and longest item stand in); ``gpu`` gives the throughput for time (and its size, unless
    ``vram_gib`` overrides it); ``observations`` from runs on ``gpu_name`` correct VRAM and time; ``offers``
    are priced where this setting fits them.
    """
    work = workload or workload_mod.from_settings(dataset, "no dataset given")
    inp = memory.inputs_from_values(train, dataset, task, expert, work.peak(), expandable_segments)
    corr = fit_corrections(list(observations), inp, gpu_name=gpu_name or (gpu.names[0] if gpu and gpu.names
                                                                          else None), gpu=gpu)
    v = memory.vram(inp)
    ram = memory.host_ram(inp)
    boundary = steptime.timestep_boundary(train)
    s_per_step = hours = band = None
    basis = ""
    if gpu is not None:
        s_per_step = steptime.mean_step_seconds(inp, work, gpu, boundary) * corr.time_factor
        band, basis = _time_basis(gpu)
        if total_steps:
            hours = _hours(s_per_step, inp, total_steps)
    peak = v.total_gib * corr.vram_factor
    costs = _costs(inp, work, offers, peak + margin_gib, total_steps, boundary, corr.time_factor,
                   gpu.key if gpu else None) if total_steps else ()
    return Estimate(
        label=label, changes=dict(changes or {}),
        vram_gib=peak, vram_parts=dict(v.parts),
        ram_gib=ram["total"], ram_parts={k: x for k, x in ram.items() if k != "total"},
        s_per_step=s_per_step, total_steps=total_steps, hours=hours,
        disk_gib=disk(inp, train, items, total_steps, epochs), costs=costs,
        vram_limit_gib=vram_gib if vram_gib is not None else (gpu.vram_gib if gpu else None),
        ram_limit_gib=ram_gib, margin_gib=margin_gib, corrections=corr,
        first_step_vram_gib=v.first_step_gib * corr.vram_factor, workload=work, time_band=band, time_basis=basis,
        expandable_segments=expandable_segments,
    )


def estimate_spec(spec: Any, facts: workload_mod.Facts | None = None, **kwargs: Any) -> Estimate:
    """``estimate_values`` for a core RunSpec (anything with train, dataset, task, expert, dataset_dir): the
    workload comes from the spec's dataset folder (``facts`` from ``workload.gather``, read here when absent)."""
    if "workload" not in kwargs:
        if facts is None and getattr(spec, "dataset_dir", None) is not None:
            facts = workload_mod.gather(spec)
        kwargs["workload"] = workload_mod.for_spec(spec, facts)
    return estimate_values(spec.train, spec.dataset, task=spec.task, expert=spec.expert, **kwargs)


@dataclass(frozen=True)
class Ladder:
    estimates: tuple[Estimate, ...]    # [0] base settings, [i] after rungs[0..i-1]
    rungs: tuple[Any, ...]
    first_fit: int                     # index into estimates; -1 when nothing fits

    def to_dict(self) -> dict[str, Any]:
        return {"first_fit": self.first_fit,
                "first_fit_label": self.estimates[self.first_fit].label if self.first_fit >= 0 else None,
                "rungs": [{**e.to_dict(), **self._rung_flags(i)} for i, e in enumerate(self.estimates)]}

    def _rung_flags(self, i: int) -> dict[str, Any]:
        # what climbing to this position costs: new latent caches, or an optimizer state that cannot load
        applied = self.rungs[:i]
        return {"needs_recache": any(getattr(r, "needs_recache", False) for r in applied),
                "keeps_state": all(getattr(r, "keeps_state", True) for r in applied)}


def ladder_estimates(spec: Any, rungs: Sequence[Any], apply, facts: workload_mod.Facts | None = None,
                     **kwargs: Any) -> Ladder:
    """Estimate the base spec and each cumulative rung; ``apply(spec, rungs)`` is ``kohyawan.run.rungs.apply``.
    The media are read once (``facts``); a rung with fewer frames or a lower resolution is recomputed on them."""
    if facts is None and getattr(spec, "dataset_dir", None) is not None:
        facts = workload_mod.gather(spec)
    estimates = [estimate_spec(spec, facts, label="base", changes={}, **kwargs)]
    for i, rung in enumerate(rungs, start=1):
        stepped = apply(spec, list(rungs[:i]))
        changes: dict[str, Any] = {}
        for r in rungs[:i]:
            changes.update(r.changes)
        estimates.append(estimate_spec(stepped, facts, label=rung.name, changes=changes, **kwargs))
    first = next((i for i, e in enumerate(estimates) if e.fits is not False), -1)
    return Ladder(tuple(estimates), tuple(rungs), first)


def first_fitting_rung(spec: Any, vram_gb: float, ram_gb: float | None = None,
                       margin_gb: float = DEFAULT_MARGIN_GIB, **kwargs: Any):
    """(index, rung, estimate) of the first ladder position that fits: index 0 and rung None are the base
    settings; index i means rungs[0..i-1] of ``rungs.vram_rungs(spec)`` applied (``rung`` is rungs[i-1]).
    When nothing fits, index is -1, rung None and the estimate is the last rung's (the run will likely OOM).
    """
    from kohyawan.run import rungs as rungs_mod

    ladder = ladder_estimates(spec, rungs_mod.vram_rungs(spec), rungs_mod.apply,
                              vram_gib=vram_gb, ram_gib=ram_gb, margin_gib=margin_gb, **kwargs)
    if ladder.first_fit < 0:
        return -1, None, ladder.estimates[-1]
    i = ladder.first_fit
    return i, (ladder.rungs[i - 1] if i else None), ladder.estimates[i]



def basis_lines(e: Estimate) -> list[str]:
    """What an estimate rests on, in words: the data it read, when the peak is, where the time comes from,
    the allocator setting, and the points the model was checked against (``kohyawan estimate`` and
    ``kohyawan run`` print these)."""
    from kohyawan.estimate import points

    lines = []
    if e.workload is not None:
        data = e.workload.describe()
        lines.append(data[:1].upper() + data[1:])
        lines += [f"  note: {n}" for n in e.workload.notes]
    if e.first_step_vram_gib is not None and e.vram_gib - e.first_step_vram_gib > 0.05:
        lines.append(f"Peak from step 2 on, when the optimizer state exists; step 1 needs "
                     f"{e.first_step_vram_gib:.1f} GiB.")
    if e.time_basis:
        lines.append(f"Time: {e.time_basis}.")
    lines.append("Allocator: " + ("expandable segments (PYTORCH_CUDA_ALLOC_CONF): their reserve, measured on the "
                                  "H200 (run D-expandable)" if e.expandable_segments else
                                  "without expandable segments: their larger reserve, measured on the H200 (the "
                                  "ladder's blocks_to_swap=10 rung)")
                 + ".")
    lines.append(points.checked_line(e.margin_gib))
    return lines
