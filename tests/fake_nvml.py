"""A fake NVML for machines without an NVIDIA GPU: kohyawan's ``Nvml`` interface with nvidia-ml-py's semantics
(bytes, opaque handles, ``pynvml.NVMLError`` subclasses for a missing driver, a bad index, an unsupported
query), several GPUs enumerated in an order of their own, with PCI bus ids, UUIDs and MIG instances."""

from __future__ import annotations

from dataclasses import dataclass, field

import pynvml

GIB = 2**30


@dataclass
class FakeGpu:
    name: str = "NVIDIA GeForce RTX 4090"
    total: int = 24 * GIB
    used: int = 20 * GIB
    util: float = 87.0
    pci: str = "00000000:01:00.0"
    uuid: str = "GPU-11111111-2222-3333-4444-555555555555"
    owners: dict = field(default_factory=dict)       # pid -> bytes (compute processes)
    migs: list = field(default_factory=list)          # FakeGpu per MIG instance (uuid "MIG-...")


class FakeNvml:
    def __init__(self, gpus=(), *, no_driver=False, broken_processes=False, driver="550.54.15", cuda=12040):
        self.gpus = list(gpus)
        self.no_driver, self.broken_processes = no_driver, broken_processes
        self.driver, self.cuda = driver, cuda
        self.initialised = self.shut = False

    # --- lifecycle ---------------------------------------------------------------------------------
    def init(self):
        if self.no_driver:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialised = True

    def shutdown(self):
        self.shut = True

    def _need(self):
        if not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle) -> FakeGpu:
        self._need()
        if handle[0] == "mig":
            return self.gpus[handle[1]].migs[handle[2]]
        return self.gpus[handle[1]]

    # --- the Nvml interface ---------------------------------------------------------------------------
    def driver_version(self):
        self._need()
        return self.driver

    def cuda_version(self):
        self._need()
        return self.cuda

    def device_count(self):
        self._need()
        return len(self.gpus)

    def handle(self, index):
        self._need()
        if index >= len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return ("gpu", index)

    def name(self, handle):
        return self._gpu(handle).name

    def memory(self, handle):
        g = self._gpu(handle)
        return g.total, g.total - g.used, g.used

    def utilisation(self, handle):
        if handle[0] == "mig":
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return float(self._gpu(handle).util)

    def compute_processes(self, handle):
        if self.broken_processes:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        return list(self._gpu(handle).owners.items())

    def processes(self, handle):
        return self.compute_processes(handle)

    def uuid(self, handle):
        return self._gpu(handle).uuid

    def pci_bus_id(self, handle):
        if handle[0] == "mig":
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self._gpu(handle).pci

    def mig_devices(self, handle):
        return [("mig", handle[1], j) for j in range(len(self._gpu(handle).migs))]
