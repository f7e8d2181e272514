"""Every NVML call kohyawan makes: the doctor's and the estimator's GPU survey (``probe_gpus``) and the
run's VRAM and utilisation sampler (``kohyawan.run.samplers.GpuSampler``) go through the ``Nvml``
interface, so tests inject a fake that raises nvidia-ml-py's own error classes. The real one
(``PynvmlAdapter``) imports nvidia-ml-py lazily: libnvidia-ml is loaded only when asked, and without an
NVIDIA driver every caller sees "no GPU". See docs/architecture.md.
"""

from __future__ import annotations

from typing import Any, Protocol

GIB = float(2**30)


class Nvml(Protocol):
    """The few NVML calls kohyawan needs (pynvml semantics: bytes, handles, NVMLError)."""

    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def driver_version(self) -> str: ...
    def cuda_version(self) -> int: ...                 # e.g. 12040 for CUDA 12.4
    def device_count(self) -> int: ...
    def handle(self, index: int) -> Any: ...
    def name(self, handle: Any) -> str: ...
    def memory(self, handle: Any) -> tuple[int, int, int]:   # total, free, used bytes
        ...
    def utilisation(self, handle: Any) -> float:       # percent of the last sample period the GPU was busy
        ...
    def processes(self, handle: Any) -> list[tuple[int, int | None]]:  # (pid, used bytes or None), every kind
        ...
    def compute_processes(self, handle: Any) -> list[tuple[int, int | None]]:  # CUDA processes; errors raise
        ...


class PynvmlAdapter:
    """``Nvml`` over nvidia-ml-py (imported lazily: it loads libnvidia-ml only when asked)."""

    def __init__(self):
        import pynvml

        self.nv = pynvml

    def init(self):
        self.nv.nvmlInit()

    def shutdown(self):
        self.nv.nvmlShutdown()

    def driver_version(self):
        return _text(self.nv.nvmlSystemGetDriverVersion())

    def cuda_version(self):
        return int(self.nv.nvmlSystemGetCudaDriverVersion())

    def device_count(self):
        return int(self.nv.nvmlDeviceGetCount())

    def handle(self, index):
        return self.nv.nvmlDeviceGetHandleByIndex(index)

    def name(self, handle):
        return _text(self.nv.nvmlDeviceGetName(handle))

    def memory(self, handle):
        m = self.nv.nvmlDeviceGetMemoryInfo(handle)
        return int(m.total), int(m.free), int(m.used)

    def utilisation(self, handle):
        return float(self.nv.nvmlDeviceGetUtilizationRates(handle).gpu)

    def compute_processes(self, handle):
        return [(int(p.pid), p.usedGpuMemory) for p in self.nv.nvmlDeviceGetComputeRunningProcesses(handle)]

    def processes(self, handle):
        procs = []
        for getter in (self.compute_processes, self._graphics_processes):
            try:
                procs += getter(handle)
            except self.nv.NVMLError:
                continue
        return procs

    def _graphics_processes(self, handle):
        return [(int(p.pid), p.usedGpuMemory) for p in self.nv.nvmlDeviceGetGraphicsRunningProcesses(handle)]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def real_nvml() -> Nvml | None:
    """The machine's NVML, or None when nvidia-ml-py is not installed."""
    try:
        return PynvmlAdapter()
    except ImportError:
        return None


def probe_gpus(nvml: Nvml | None) -> list[dict[str, Any]]:
    """Every NVIDIA GPU as a dict (empty when there is no driver, no device or no NVML)."""
    if nvml is None:
        return []
    try:
        nvml.init()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded: no NVIDIA GPU here
        return []
    try:
        driver = nvml.driver_version()
        cuda = nvml.cuda_version()
        return [_device(nvml, i, driver, cuda) for i in range(nvml.device_count())]
    finally:
        try:
            nvml.shutdown()
        except Exception:
            pass


def _device(nvml: Nvml, index: int, driver: str, cuda: int) -> dict[str, Any]:
    h = nvml.handle(index)
    total, free, used = nvml.memory(h)
    procs = [{"pid": pid, "name": _process_name(pid), "used_gib": None if mem is None else round(mem / GIB, 2)}
             for pid, mem in nvml.processes(h)]
    return {"index": index, "name": nvml.name(h), "total_gib": round(total / GIB, 2),
            "free_gib": round(free / GIB, 2), "used_gib": round(used / GIB, 2), "driver": driver,
            "cuda": f"{cuda // 1000}.{(cuda % 1000) // 10}", "processes": procs}


def _process_name(pid: int) -> str | None:
    try:
        import psutil

        return psutil.Process(pid).name()
    except Exception:
        return None
