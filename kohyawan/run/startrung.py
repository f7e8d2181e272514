"""Where a training stage starts on the fallback ladder with ``--start-rung auto``: the first position that
``kohyawan estimate`` says fits this GPU with the profile's safety margin, learning from earlier runs on the
same GPU (the GPU is named through ``kohyawan.doctor.nvml``). See docs/architecture.md ("A run").
"""

from __future__ import annotations

from typing import Callable, Sequence

from kohyawan.estimate.observations import load_observations
from kohyawan.estimate.plan import DEFAULT_MARGIN_GIB, first_fitting_rung
from kohyawan.run.ladder import RungLike


def gpu_in_use(gpus: str | None) -> dict | None:
    """Name and total memory of the GPU the trainer will use (first of CUDA_VISIBLE_DEVICES), via NVML."""
    from kohyawan.doctor import nvml

    found = nvml.probe_gpus(nvml.real_nvml())
    if not found:
        return None
    first = (gpus or "0").split(",")[0].strip()
    index = int(first) if first.isdigit() and int(first) < len(found) else 0
    return {"name": str(found[index]["name"]), "total_gib": float(found[index]["total_gib"])}


def estimated_start(base, vram: Sequence[RungLike], opts, data: dict, say: Callable[[str], None]) -> list[str]:
    """The rungs to start with (none when the GPU's size is unknown); records in run.json's ``data`` the
    GPU (real runs) and what the estimate said."""
    gpu = None if opts.rehearse else gpu_in_use(opts.gpus)
    if gpu is not None:  # the estimator learns from runs on the same GPU: record which one this is
        data["gpu"] = gpu
    gib = (opts.gpu_memory_gb or 24.0) if opts.rehearse else (gpu or {}).get("total_gib")
    if gib is None:
        say("estimate: GPU size unknown, starting at the profile's settings")
        return []
    margin = float(base.extra.get("watchdog", {}).get("vram_margin_gb", DEFAULT_MARGIN_GIB))
    seen = load_observations(opts.runs_dir) if gpu else []
    index, rung, est = first_fitting_rung(base, gib, margin_gb=margin, observations=seen,
                                          gpu_name=gpu["name"] if gpu else None)
    data["estimate"] = {"gpu_gib": gib, "margin_gib": margin, "start_index": index,
                        "predicted_peak_gib": round(est.vram_gib, 2)}
    say(start_message(index, rung.name if rung else None, est.vram_gib, gib))
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
