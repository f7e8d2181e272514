"""Learning from the user's own runs: observed peak VRAM and s/step from run ledgers correct the estimate.

A run folder (``runs/<id>/``, written by the runner) has ``run.json`` (attempts with ``peak_vram_gb``,
``allocator_peak_gb``, ``outcome``, ``changes`` and the GPU), ``metrics.jsonl`` (one line per step with
``s_per_it`` and ``attempt``) and ``plan.json`` (the resolved train/dataset values, task and expert; each
attempt's own copy is in ``attempts/NN/``). ``kohyawan calibrate`` writes the same kind of folder under
``runs/calibrations/<id>/``, one short attempt per measured rung, and it is read the same way.

The peak of an attempt is NVML's (what the trainer's processes held on the GPU); where NVML saw nothing
(no permission, a rehearsal) it is torch's reserved peak from the trainer itself plus the CUDA context.
An attempt that ran out of GPU memory is no measurement, but it says the settings needed more than the GPU
has: ``fit_corrections`` never lets a correction predict that they fit. Reading is tolerant: a folder that
lacks something is skipped, never an error. ``fit_corrections`` is pure.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from kohyawan.estimate import allocator, memory, steptime, workload
from kohyawan.files import jsonfile

VRAM_CLAMP = (0.7, 1.6)
TIME_CLAMP = (0.2, 5.0)


@dataclass(frozen=True)
class Corrections:
    """Factors learnt from observed runs on the same GPU with similar settings (1.0 = none)."""

    vram_factor: float = 1.0
    time_factor: float = 1.0
    vram_runs: int = 0
    time_runs: int = 0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Observation:
    run_id: str
    attempt: int
    gpu: str | None
    inputs: memory.MemoryInputs
    peak_vram_gib: float | None     # only from attempts that did not run out of GPU memory
    s_per_step: float | None
    oom_vram: bool = False          # ran out of GPU memory: needed more than ``gpu_total_gib``
    gpu_total_gib: float | None = None
    calibration: bool = False       # measured by ``kohyawan calibrate``
    work: workload.Workload | None = None   # what the attempt trained on (its dataset.toml), when known
    boundary: float = 0.875                 # its timestep_boundary, as a fraction


def _values(plan: Mapping[str, Any]) -> tuple[dict, dict, str, str] | None:
    if isinstance(plan.get("values"), list):       # plan.json: [{"key": "train.X", "value": ..., "source"}]
        train, dataset = {}, {}
        for row in plan["values"]:
            if isinstance(row, Mapping) and isinstance(row.get("key"), str):
                section, _, name = row["key"].partition(".")
                if section in ("train", "dataset"):
                    (train if section == "train" else dataset)[name] = row.get("value")
        return train, dataset, str(plan.get("task") or "t2v-A14B"), str(plan.get("expert") or "both")
    for holder in (plan, plan.get("spec") or {}, plan.get("resolved") or {}):
        if isinstance(holder, Mapping) and isinstance(holder.get("train"), Mapping):
            task = holder.get("task") or plan.get("task") or "t2v-A14B"
            expert = holder.get("expert") or plan.get("expert") or "both"
            return dict(holder["train"]), dict(holder.get("dataset") or {}), str(task), str(expert)
    return None


def _gpu_total(*sources: Mapping[str, Any]) -> float | None:
    """The GPU memory the trainer had: a run's ``gpu_budget_gib`` (``--gpu-memory``) when it planned for less
    than the card, else the card's."""
    for src in sources:
        if isinstance(src.get("gpu_budget_gib"), (int, float)):
            return float(src["gpu_budget_gib"])
    for src in sources:
        gpu = src.get("gpu")
        if isinstance(gpu, Mapping) and isinstance(gpu.get("total_gib"), (int, float)):
            return float(gpu["total_gib"])
    return None


def _gpu_name(*sources: Mapping[str, Any]) -> str | None:
    for src in sources:
        gpu = src.get("gpu") or src.get("gpu_name") or src.get("device")
        if isinstance(gpu, Mapping):
            gpu = gpu.get("name")
        if isinstance(gpu, str) and gpu:
            return gpu
    return None


def step_times(run_dir: Path) -> dict[int, list[float]]:
    """Attempt -> the progress rates (s/step) metrics.jsonl recorded, in order."""
    times: dict[int, list[float]] = {}
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return times
    for line in lines:
        try:
            row = json.loads(line)
            value = row.get("s_per_it")
            if value is not None and float(value) > 0:
                times.setdefault(int(row.get("attempt", 1)), []).append(float(value))
        except (ValueError, TypeError, AttributeError):
            continue
    return times


def steady_rate(seen: list[float]) -> float | None:
    """Seconds per step from an attempt's progress rates: the first steps include warm-up and allocation, so
    the median of the rest."""
    rest = seen[2:] if len(seen) > 3 else seen[1:]
    return statistics.median(rest) if rest else None


def _apply(train: dict, dataset: dict, changes: Mapping[str, Any]) -> None:
    for key, value in (changes or {}).items():
        if key.startswith("dataset."):
            dataset[key[8:]] = value
        else:
            train[key[6:] if key.startswith("train.") else key] = value


def _peak(attempt: Mapping[str, Any]) -> float | None:
    """The attempt's peak GiB as NVML would report it, or None (an OOM, or nothing measured)."""
    if attempt.get("outcome") == "oom_vram":
        return None
    peak = attempt.get("peak_vram_gb")
    if isinstance(peak, (int, float)) and peak > 0:
        return float(peak)
    alloc = attempt.get("allocator_peak_gb")
    if isinstance(alloc, Mapping) and isinstance(alloc.get("reserved"), (int, float)) and alloc["reserved"] > 0:
        return float(alloc["reserved"]) + memory.CUDA_CONTEXT_GIB
    return None


def _run_folders(runs_dir: Path) -> list[Path]:
    return sorted(Path(runs_dir).glob("*/run.json")) + sorted(Path(runs_dir).glob("calibrations/*/run.json"))


def _attempt_values(run_dir: Path, n: int, fallback: tuple | None) -> tuple | None:
    """The attempt's own resolved values (its copy of plan.json), else the run's latest plan."""
    own = jsonfile.read_object(run_dir / "attempts" / f"{n:02d}" / "plan.json")
    values = _values(own) if isinstance(own, Mapping) else None
    return values if values is not None else fallback


def _workload(run_dir: Path, n: int) -> workload.Workload | None:
    """What the attempt trained on, from its own dataset config (older runs: the run's)."""
    for path in (run_dir / "attempts" / f"{n:02d}" / "dataset.toml", run_dir / "dataset.toml"):
        if path.is_file():
            return workload.of_dataset_toml(path)
    return None


def _observation(run_dir: Path, run: Mapping, attempt: Mapping, values: tuple, times: dict) -> Observation:
    train, dataset, task, expert = dict(values[0]), dict(values[1]), values[2], values[3]
    _apply(train, dataset, attempt.get("changes") or {})
    n = int(attempt.get("n", 1))
    work = _workload(run_dir, n)
    inputs = memory.inputs_from_values(train, dataset, task, expert, work.peak() if work is not None else None,
                                       allocator.expandable(run.get("alloc_conf")))
    return Observation(run_id=run_dir.name, attempt=n, gpu=_gpu_name(attempt, run),
                       inputs=inputs, peak_vram_gib=_peak(attempt),
                       s_per_step=steady_rate(times.get(n, [])),
                       oom_vram=attempt.get("outcome") == "oom_vram", gpu_total_gib=_gpu_total(attempt, run),
                       calibration=bool(run.get("calibration")), work=work,
                       boundary=steptime.timestep_boundary(train))


def load_observations(runs_dir: Path) -> list[Observation]:
    """Every attempt of every run and calibration under ``runs_dir`` as an observation."""
    found: list[Observation] = []
    if not runs_dir or not Path(runs_dir).is_dir():
        return found
    for run_json in _run_folders(runs_dir):
        run = jsonfile.read_object(run_json)
        plan = jsonfile.read_object(run_json.parent / "plan.json")
        if not isinstance(run, Mapping):
            continue
        latest = _values(plan) if isinstance(plan, Mapping) else None
        times = step_times(run_json.parent)
        for attempt in run.get("attempts") or []:
            if not isinstance(attempt, Mapping):
                continue
            values = _attempt_values(run_json.parent, int(attempt.get("n", 1)), latest)
            if values is not None:
                found.append(_observation(run_json.parent, run, attempt, values, times))
    return found


def similar(a: memory.MemoryInputs, b: memory.MemoryInputs) -> bool:
    """Close enough that a correction learnt on one applies to the other."""
    return (a.shape.name == b.shape.name and a.grad_ckpt == b.grad_ckpt and a.fp8_base == b.fp8_base
            and a.grad_ckpt_cpu_offload == b.grad_ckpt_cpu_offload and a.dual_resident == b.dual_resident
            and 0.5 <= a.tokens / max(1, b.tokens) <= 2.0 and abs(a.swapped - b.swapped) <= 10)


def _same_gpu(observed: str | None, gpu_name: str | None, gpu: Any) -> bool:
    if observed is None:
        return False
    o = observed.lower()
    names = {n.lower() for n in getattr(gpu, "names", ())} | ({gpu_name.lower()} if gpu_name else set())
    return o in names


def _oom_floor(relevant: list[Observation]) -> tuple[float, int]:
    """(the smallest VRAM factor under which every similar attempt that ran out of GPU memory is predicted not to
    fit its GPU, how many there were); (0, 0) without any."""
    bounds = [o.gpu_total_gib / memory.vram(o.inputs).total_gib for o in relevant if o.oom_vram and o.gpu_total_gib]
    if not bounds:
        return 0.0, 0
    return min(max(bounds), VRAM_CLAMP[1]), len(bounds)


def fit_corrections(observations: list[Observation], inputs: memory.MemoryInputs, *, gpu_name: str | None,
                    gpu: Any = None) -> Corrections:
    """Median observed/predicted ratio over similar runs on the same GPU, clamped to a sane range."""
    relevant = [o for o in observations if _same_gpu(o.gpu, gpu_name, gpu) and similar(o.inputs, inputs)]
    vram_ratios = [o.peak_vram_gib / memory.vram(o.inputs).total_gib for o in relevant if o.peak_vram_gib]
    time_ratios = []
    if gpu is not None:
        for o in relevant:
            if o.s_per_step:     # against the model's figure for the same batches the estimate averages over
                predicted = (steptime.mean_step_seconds(o.inputs, o.work, gpu, o.boundary) if o.work is not None
                             else steptime.step_seconds(o.inputs, gpu.bf16_tflops, gpu.mfu, gpu.h2d_gbps,
                                                        o.boundary)["total"])
                time_ratios.append(o.s_per_step / predicted)
    notes = []
    where = ", ".join(sorted({o.gpu for o in relevant if o.gpu})) or gpu_name
    vf = tf = 1.0
    if vram_ratios:
        vf = min(max(statistics.median(vram_ratios), VRAM_CLAMP[0]), VRAM_CLAMP[1])
        notes.append(f"peak VRAM scaled by {vf:.2f} from {len(vram_ratios)} observed attempt(s) on {where}")
    floor, ooms = _oom_floor(relevant)
    if floor > vf:
        vf = floor
        notes.append(f"peak VRAM raised to {vf:.2f}x the model: {ooms} attempt(s) on {where} ran out of GPU memory "
                     "at similar settings")
    if time_ratios:
        tf = min(max(statistics.median(time_ratios), TIME_CLAMP[0]), TIME_CLAMP[1])
        notes.append(f"s/step scaled by {tf:.2f} from {len(time_ratios)} observed attempt(s) on {where}")
    return Corrections(vf, tf, len(vram_ratios), len(time_ratios), tuple(notes))
