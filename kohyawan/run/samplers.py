"""What the run measures while a trainer runs: the memory and utilisation of the GPUs the trainer uses
(through ``kohyawan.doctor.nvml``, the one home of NVML calls, which also maps ``CUDA_VISIBLE_DEVICES`` to
NVML's devices) and the resident memory of the trainer's process tree (psutil). The watchdogs judge the
numbers; see docs/architecture.md ("A run").
"""

from __future__ import annotations

from typing import Callable, Sequence

from kohyawan.doctor.nvml import GIB, VISIBLE_VAR, Nvml, PynvmlAdapter, VisibleGpu, map_visible

GpuReading = tuple[float | None, float | None, float | None, float | None]
NOTHING: GpuReading = (None, None, None, None)


class GpuSampler:
    """VRAM and utilisation of the GPUs the trainer uses: the first ``processes`` of those
    ``CUDA_VISIBLE_DEVICES=visible`` shows it (one per data-parallel process). Without a GPU or NVML, or
    when ``visible`` names none, it says so once and returns nothing."""

    def __init__(self, visible: str | None = None, *, processes: int = 1, order: str | None = None,
                 warn: Callable[[str], None] | None = None, nvml: Nvml | None = None):
        self.ok = False
        self.message: str | None = None
        self.devices: tuple[VisibleGpu, ...] = ()
        self.problems: tuple[str, ...] = ()
        self._handles: tuple = ()
        try:
            self.nv = nvml if nvml is not None else PynvmlAdapter()
            self.nv.init()
            seen = map_visible(self.nv, visible, order)
        except Exception as exc:  # no driver, no library: all the same to a user
            self._say(f"no NVIDIA GPU/NVML here ({type(exc).__name__}): VRAM and GPU utilisation are not watched", warn)
            return
        wanted = max(1, processes)
        self.devices, self._handles = seen.devices[:wanted], seen.handles[:wanted]
        self.problems = seen.problems
        for problem in seen.problems:
            if warn:
                warn(problem)
        if not self.devices:
            shown = "unset" if visible is None else repr(visible)
            self._say(f"no GPU to watch ({VISIBLE_VAR} {shown}): VRAM and GPU utilisation are not watched",
                      warn)
            return
        if len(self.devices) < wanted and warn:
            warn(f"the trainer runs {wanted} processes but sees {len(self.devices)} GPU(s)")
        self.ok = True

    def _say(self, message: str, warn: Callable[[str], None] | None) -> None:
        self.message = message
        if warn:
            warn(message)

    def sample_each(self, pids: Sequence[int] = ()) -> list[tuple[VisibleGpu, GpuReading]]:
        """One reading per GPU the trainer uses (see ``sample`` for what a reading holds)."""
        if not self.ok:
            return []
        return [(dev, self._read(handle, pids)) for dev, handle in zip(self.devices, self._handles)]

    def sample(self, pids: Sequence[int] = ()) -> GpuReading:
        """(GB in use on the device, its total GB, GB held by ``pids``' processes, utilisation %), of the
        GPU with the least free memory when the trainer uses several (``combine``)."""
        return combine([reading for _dev, reading in self.sample_each(pids)])

    def _read(self, handle, pids: Sequence[int]) -> GpuReading:
        try:
            total, _free, used = self.nv.memory(handle)
        except Exception:
            return NOTHING
        try:  # a MIG instance has no utilisation counter
            util = float(self.nv.utilisation(handle))
        except Exception:
            util = None
        proc = None
        if pids:
            wanted = set(pids)
            try:  # no permission to list processes: the device's own figure still counts
                proc = sum((mem or 0) for pid, mem in self.nv.compute_processes(handle) if pid in wanted) / GIB
            except Exception:
                proc = None
        return used / GIB, total / GIB, proc, util


def combine(readings: Sequence[GpuReading]) -> GpuReading:
    """One reading for the watchdog from several GPUs: memory of the fullest one (the margin that matters),
    the largest share held by the trainer's processes, the lowest utilisation (one idle GPU is the alert)."""
    seen = [r for r in readings if r[0] is not None and r[1] is not None]
    if not seen:
        return NOTHING
    used, total, _, _ = min(seen, key=lambda r: r[1] - r[0])
    procs = [r[2] for r in seen if r[2] is not None]
    utils = [r[3] for r in seen if r[3] is not None]
    return used, total, max(procs) if procs else None, min(utils) if utils else None


def trainer_vram(reading: GpuReading) -> float | None:
    """What the trainer holds on a GPU: its own processes' share where NVML lists them, else the device's use
    (a container with its own pid namespace hides the host's pids from NVML)."""
    return reading[2] if reading[2] is not None else reading[0]


def host_sample(root: int) -> tuple[float | None, float | None, list[int]]:
    """(resident GB of the whole tree, swap GB in use system-wide, the tree's pids)."""
    import psutil

    try:
        p = psutil.Process(root)
        procs = [p] + p.children(recursive=True)
    except psutil.Error:
        return None, None, []
    rss = 0
    for proc in procs:
        try:
            rss += proc.memory_info().rss
        except psutil.Error:
            pass
    return rss / GIB, psutil.swap_memory().used / GIB, [q.pid for q in procs]
