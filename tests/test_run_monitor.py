"""The run's watch over one process: the GPU sampler through the doctor's NVML interface (a fake NVML that
raises nvidia-ml-py's own errors, since there is no GPU here) and the AttemptMonitor over a real process."""

import sys
from pathlib import Path

import pynvml
import pytest

from kohyawan.doctor import nvml
from kohyawan.run.ledger import Ledger
from kohyawan.run.monitor import AttemptMonitor
from kohyawan.run.notify import Notifier
from kohyawan.run.runview import Status, View
from kohyawan.run.samplers import GpuSampler
from kohyawan.run.supervise import Supervisor
from kohyawan.run.tracker import Tracker

GIB = 2**30
HAS_GPU = Path("/dev/nvidia0").exists()


class FakeNvml:
    """One device through the Nvml interface, with pynvml's semantics: bytes, handles, NVMLError."""

    def __init__(self, total=24 * GIB, used=20 * GIB, util=87, no_driver=False, broken_processes=False):
        self.total, self.used, self.util = total, used, util
        self.no_driver, self.broken_processes = no_driver, broken_processes
        self.owners: list[int] = []          # pids that hold 2 GiB each
        self.initialised = False

    def init(self):
        if self.no_driver:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialised = True

    def handle(self, index):
        if not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        if index != 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def memory(self, handle):
        return self.total, self.total - self.used, self.used

    def utilisation(self, handle):
        return float(self.util)

    def compute_processes(self, handle):
        if self.broken_processes:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        return [(pid, 2 * GIB) for pid in self.owners] + [(1, 5 * GIB), (2, None)]


def test_without_a_driver_the_sampler_says_so_once_and_measures_nothing():
    told = []
    sampler = GpuSampler(warn=told.append, nvml=FakeNvml(no_driver=True))
    assert not sampler.ok and told == [sampler.message]
    assert "NVMLError_DriverNotLoaded" in sampler.message and "not watched" in sampler.message
    assert sampler.sample([123]) == (None, None, None, None)


def test_the_sampler_reads_device_memory_utilisation_and_the_trainers_own_processes():
    fake = FakeNvml()
    fake.owners = [4242, 4343]
    sampler = GpuSampler(nvml=fake)
    assert sampler.ok and sampler.message is None
    assert sampler.sample([4242, 4343, 99]) == (20.0, 24.0, 4.0, 87.0)   # the foreign 5 GiB is not the trainer's
    assert sampler.sample([]) == (20.0, 24.0, None, 87.0)
    assert GpuSampler(index=1, nvml=fake).ok is False                   # no such device
    fake.broken_processes = True
    assert sampler.sample([4242]) == (None, None, None, None)           # a failing NVML call: no reading at all


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU")
def test_the_real_nvml_on_this_machine_has_no_gpu_to_watch():
    told = []
    sampler = GpuSampler(warn=told.append)
    assert not sampler.ok and len(told) == 1 and told[0].startswith("no NVIDIA GPU/NVML here (NVMLError")
    assert nvml.probe_gpus(nvml.real_nvml()) == []


TRAINER = r"""
import sys, time
for step, loss in ((1, "0.25"), (2, "0.24"), (3, "0.23"), (4, "nan")):
    sys.stdout.write(f"\rsteps:  {step * 10}%|##        | {step}/10 [00:0{step}<00:09,  1.00s/it, avr_loss={loss}]")
    sys.stdout.flush()
    time.sleep(0.4)
time.sleep(60)
"""


def test_the_monitor_samples_the_trainer_and_stops_it_when_the_loss_becomes_nan(tmp_path):
    led = Ledger.create(tmp_path / "run", run_id="r", profile="character", task="t2v-1.3B", total_steps=10)
    tracker = Tracker(led, attempt=1, stage="train", base_name="c", start_step=10, total_steps=20)
    status = Status(run_id="r")
    fake = FakeNvml()
    monitor = AttemptMonitor({"sample_seconds": 0.1}, tracker=tracker, status=status,
                             view=View(status, live=False, quiet=True), notifier=Notifier([]),
                             gpu=GpuSampler(nvml=fake))
    assert monitor.tick_s == 0.1 and monitor.watchdog.stage == "train"
    sup = Supervisor([sys.executable, "-c", TRAINER], log_path=tmp_path / "console.log", on_event=monitor.on_event,
                     on_tick=monitor.on_tick, on_line=monitor.on_line, tick_s=monitor.tick_s)
    monitor.supervisor = sup
    sup.start()
    fake.owners = [sup.pid]
    result = sup.run()
    assert result.stopped_for == "nan" and "at step 14" in result.stop_reason
    assert result.duration_s < 30
    assert tracker.absolute == 14 and status.step == 14
    assert monitor.peak_vram == 2.0 and monitor.peak_ram and monitor.peak_ram > 0.001
    assert (status.vram_used, status.vram_total) == (20.0, 24.0) and status.ram_gb > 0
    assert monitor.watchdog.bad_loss[0] == 14


CUDA_TRAINER = r"""
import ctypes, sys, time
cuda = ctypes.CDLL("libcuda.so.1")
dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
assert cuda.cuInit(0) == 0 and cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
assert cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev) == 0
assert cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(2 << 30)) == 0
for step in range(1, 16):
    sys.stdout.write(f"\rsteps:  {step}%|#  | {step}/100 [00:01<00:09,  1.00s/it, avr_loss=0.2{step % 10}]")
    sys.stdout.flush()
    time.sleep(0.2)
"""


@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU")
def test_on_a_gpu_the_monitor_measures_the_trainers_own_vram(tmp_path):
    """A process holding 2 GiB through the CUDA driver: the real NVML reports it as the trainer's peak."""
    led = Ledger.create(tmp_path / "run", run_id="r", profile="character", task="t2v-1.3B", total_steps=100)
    tracker = Tracker(led, attempt=1, stage="train", base_name="c", start_step=0, total_steps=100)
    status = Status(run_id="r")
    gpu = GpuSampler()
    assert gpu.ok, gpu.message
    monitor = AttemptMonitor({"sample_seconds": 0.5}, tracker=tracker, status=status,
                             view=View(status, live=False, quiet=True), notifier=Notifier([]), gpu=gpu)
    sup = Supervisor([sys.executable, "-c", CUDA_TRAINER], log_path=tmp_path / "console.log",
                     on_event=monitor.on_event, on_tick=monitor.on_tick, on_line=monitor.on_line, tick_s=monitor.tick_s)
    monitor.supervisor = sup
    result = sup.run()
    assert result.exit_code == 0 and tracker.absolute == 15
    assert status.vram_used >= 2.0 and status.vram_total > 10
    if monitor.peak_vram:  # None where NVML lists the host's pids (a container with its own pid namespace)
        assert 2.0 <= monitor.peak_vram < 4.0
    assert [g["total_gib"] for g in nvml.probe_gpus(nvml.real_nvml())][0] == pytest.approx(status.vram_total, rel=0.01)
