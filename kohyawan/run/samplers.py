"""What the run measures while a trainer runs: the GPU's memory and utilisation (through
``kohyawan.doctor.nvml``, the one home of NVML calls) and the resident memory of the trainer's process
tree (psutil). The watchdogs judge the numbers; see docs/architecture.md ("A run").
"""

from __future__ import annotations

from typing import Callable, Sequence

from kohyawan.doctor.nvml import GIB, Nvml, PynvmlAdapter

GpuReading = tuple[float | None, float | None, float | None, float | None]
NOTHING: GpuReading = (None, None, None, None)


class GpuSampler:
    """VRAM and utilisation of one GPU; without a GPU or NVML it says so once and returns nothing."""

    def __init__(self, index: int = 0, warn: Callable[[str], None] | None = None, nvml: Nvml | None = None):
        self.ok = False
        self.message = None
        try:
            self.nv = nvml if nvml is not None else PynvmlAdapter()
            self.nv.init()
            self.handle = self.nv.handle(index)
            self.ok = True
        except Exception as exc:  # no driver, no library, no device: all the same to a user
            self.message = f"no NVIDIA GPU/NVML here ({type(exc).__name__}): VRAM and GPU utilisation are not watched"
            if warn:
                warn(self.message)

    def sample(self, pids: Sequence[int] = ()) -> GpuReading:
        """(GB in use on the device, its total GB, GB held by ``pids``' processes, utilisation %)."""
        if not self.ok:
            return NOTHING
        try:
            total, _free, used = self.nv.memory(self.handle)
            util = self.nv.utilisation(self.handle)
            proc = None
            if pids:
                wanted = set(pids)
                proc = sum((mem or 0) for pid, mem in self.nv.compute_processes(self.handle) if pid in wanted) / GIB
            return used / GIB, total / GIB, proc, float(util)
        except Exception:
            return NOTHING


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
