"""Every NVML call kohyawan makes: the doctor's and the estimator's GPU survey (``probe_gpus``), which GPUs
the trainer sees (``map_visible``, ``probe_visible``) and the run's VRAM and utilisation sampler
(``kohyawan.run.samplers.GpuSampler``) go through the ``Nvml`` interface, so tests inject a fake that
raises nvidia-ml-py's own error classes. The real one (``PynvmlAdapter``) imports nvidia-ml-py lazily:
libnvidia-ml is loaded only when asked, and without an NVIDIA driver every caller sees "no GPU".

Which GPU is the trainer's ``cuda:N``? CUDA numbers the GPUs named by ``CUDA_VISIBLE_DEVICES`` (indices,
``GPU-...`` UUIDs or unique prefixes of them, ``MIG-...`` UUIDs; unset: every GPU) in the order
``CUDA_DEVICE_ORDER`` says. NVML's indices (nvidia-smi's) are not guaranteed to follow any order, so the
mapping sorts NVML's devices by PCI bus id, which is exactly CUDA's ``PCI_BUS_ID`` order. kohyawan starts
the trainer with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` unless the user set the variable, so an index means the
same GPU to kohyawan, nvidia-smi and the trainer. Under CUDA's default ``FASTEST_FIRST`` the order of
different GPU models is CUDA's guess; with identical GPUs it is assumed to be PCI bus order (the tie
break), and with mixed models the mapping says it is a guess. Like CUDA, the first entry that names no GPU
(an unknown index or UUID, a repeat) ends the list: it and every entry after it are ignored.
See docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

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
    def uuid(self, handle: Any) -> str:                # "GPU-..." (a MIG device: "MIG-...")
        ...
    def pci_bus_id(self, handle: Any) -> str:          # "00000000:3B:00.0"
        ...
    def mig_devices(self, handle: Any) -> list[Any]:   # handles of the MIG instances; [] when MIG is off
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

    def uuid(self, handle):
        return _text(self.nv.nvmlDeviceGetUUID(handle))

    def pci_bus_id(self, handle):
        return _text(self.nv.nvmlDeviceGetPciInfo(handle).busId)

    def mig_devices(self, handle):
        try:
            current, _pending = self.nv.nvmlDeviceGetMigMode(handle)
        except self.nv.NVMLError:  # not a MIG-capable GPU, or an old driver
            return []
        if current != self.nv.NVML_DEVICE_MIG_ENABLE:
            return []
        found = []
        for i in range(int(self.nv.nvmlDeviceGetMaxMigDeviceCount(handle))):
            try:
                found.append(self.nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, i))
            except self.nv.NVMLError:  # an empty slot
                continue
        return found

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


# --- the GPUs the trainer sees ---------------------------------------------------------------------------
VISIBLE_VAR = "CUDA_VISIBLE_DEVICES"
ORDER_VAR = "CUDA_DEVICE_ORDER"
PCI_BUS_ID, FASTEST_FIRST = "PCI_BUS_ID", "FASTEST_FIRST"   # CUDA's two orders; FASTEST_FIRST is its default


@dataclass(frozen=True)
class VisibleGpu:
    """One GPU as the trainer sees it: ``cuda:{ordinal}`` is NVML's (nvidia-smi's) GPU ``index``."""

    ordinal: int
    index: int
    name: str
    uuid: str | None
    pci_bus_id: str | None
    total_gib: float
    mig: str | None = None         # the MIG instance's UUID when the entry named one (memory is the instance's)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Visibility:
    setting: str | None            # CUDA_VISIBLE_DEVICES as the trainer gets it; None: unset (every GPU)
    order: str                     # CUDA_DEVICE_ORDER as the trainer gets it
    devices: tuple[VisibleGpu, ...] = ()
    handles: tuple[Any, ...] = ()  # NVML handles of ``devices``, same order (valid until NVML shuts down)
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Physical:
    index: int
    handle: Any
    name: str
    uuid: str | None
    pci: str | None
    total: int


def _optional(call, *args):
    """An NVML query some drivers or devices do not support: None instead of an error."""
    try:
        return call(*args)
    except Exception:
        return None


def _physical(nvml: Nvml) -> list[_Physical]:
    """Every GPU NVML can open, sorted by PCI bus id: CUDA's PCI_BUS_ID numbering."""
    found = []
    for i in range(nvml.device_count()):
        try:
            h = nvml.handle(i)
            total = nvml.memory(h)[0]
        except Exception:  # a GPU this process may not open (another container's, a cgroup's): CUDA cannot either
            continue
        found.append(_Physical(i, h, nvml.name(h), _optional(nvml.uuid, h), _optional(nvml.pci_bus_id, h), total))
    return sorted(found, key=lambda p: ((p.pci or "").lower(), p.index))


def _entry(nvml: Nvml, physical: Sequence[_Physical], entry: str) -> tuple[Any, str]:
    """(handle, physical GPU, MIG UUID or None) for one CUDA_VISIBLE_DEVICES entry, or (None, why not)."""
    if entry.isdigit():
        k = int(entry)
        if k < len(physical):
            return (physical[k].handle, physical[k], None), ""
        return None, f"is not a GPU index here ({len(physical)} GPU(s))"
    low = entry.lower()
    if low.startswith("gpu-"):
        hits = [p for p in physical if p.uuid and p.uuid.lower().startswith(low)]
        if len(hits) == 1:
            return (hits[0].handle, hits[0], None), ""
        return None, "matches several GPUs' UUIDs" if hits else "matches no GPU's UUID"
    if low.startswith("mig-"):
        for p in physical:
            for mh in _optional(nvml.mig_devices, p.handle) or []:
                u = _optional(nvml.uuid, mh)
                if u and u.lower().startswith(low):
                    return (mh, p, u), ""
        return None, "matches no MIG instance's UUID"
    return None, "is not a GPU index or a GPU-/MIG- UUID"


def _named(nvml: Nvml, physical: Sequence[_Physical], setting: str) -> tuple[list, list[str]]:
    """The GPUs CUDA_VISIBLE_DEVICES names, in its order, up to the first entry CUDA would not accept."""
    chosen, problems, seen = [], [], set()
    if not setting.strip():
        return [], [f"{VISIBLE_VAR} is empty: the trainer sees no GPU"]
    for token in setting.split(","):
        entry = token.strip()
        match, why = _entry(nvml, physical, entry)
        if match is not None and (match[1].index, match[2]) in seen:
            match, why = None, "is listed twice"
        if match is None:
            problems.append(f"{VISIBLE_VAR}={setting}: {entry!r} {why}; CUDA ignores it and every entry after it")
            break
        seen.add((match[1].index, match[2]))
        chosen.append(match)
    return chosen, problems


def map_visible(nvml: Nvml, setting: str | None, order: str | None = None) -> Visibility:
    """Which GPUs a process started with ``CUDA_VISIBLE_DEVICES=setting`` and ``CUDA_DEVICE_ORDER=order``
    sees, as ``cuda:0``, ``cuda:1``, ... (``nvml`` initialised by the caller)."""
    order = (order or FASTEST_FIRST).strip().upper()
    physical = _physical(nvml)
    problems = []
    if order != PCI_BUS_ID and len({p.name for p in physical}) > 1:
        problems.append(f"{ORDER_VAR} is {order} and the GPUs differ ({', '.join(sorted({p.name for p in physical}))}): "
                        f"how CUDA numbers them is its own guess; kohyawan assumed PCI bus order (set "
                        f"{ORDER_VAR}=PCI_BUS_ID or name GPUs by UUID)")
    if setting is None:
        chosen = [(p.handle, p, None) for p in physical]
    else:
        chosen, more = _named(nvml, physical, setting)
        problems += more
    devices, handles = [], []
    for ordinal, (handle, p, mig) in enumerate(chosen):
        total = p.total if mig is None else (_optional(nvml.memory, handle) or (p.total,))[0]
        devices.append(VisibleGpu(ordinal, p.index, p.name, p.uuid, p.pci, round(total / GIB, 2), mig))
        handles.append(handle)
    return Visibility(setting, order, tuple(devices), tuple(handles), tuple(problems))


def probe_visible(nvml: Nvml | None, setting: str | None, order: str | None = None) -> Visibility:
    """``map_visible`` with NVML opened and closed around it; without NVML or a driver: no GPU, and why."""
    if nvml is None:
        return Visibility(setting, (order or FASTEST_FIRST).upper(), problems=("no NVIDIA GPU/NVML here "
                                                                             "(nvidia-ml-py is not installed)",))
    try:
        nvml.init()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded
        return Visibility(setting, (order or FASTEST_FIRST).upper(),
                          problems=(f"no NVIDIA GPU/NVML here ({type(exc).__name__})",))
    try:
        return map_visible(nvml, setting, order)
    finally:
        try:
            nvml.shutdown()
        except Exception:
            pass


def probe_for_trainer(nvml: Nvml | None, gpus: str | None, environ: Mapping[str, str]) -> Visibility:
    """The GPUs the trainer would see when kohyawan starts it from ``environ``: ``--gpus`` when given, else the
    inherited CUDA_VISIBLE_DEVICES; CUDA_DEVICE_ORDER=PCI_BUS_ID unless set (as ``kohyawan.run.gpuenv`` sets
    the trainer's environment)."""
    setting = gpus if gpus is not None else environ.get(VISIBLE_VAR)
    return probe_visible(nvml, setting, environ.get(ORDER_VAR, PCI_BUS_ID))
