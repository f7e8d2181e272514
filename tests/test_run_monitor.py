"""The run's watch over one process: the GPU sampler through the doctor's NVML interface (a fake NVML that
raises nvidia-ml-py's own errors, since there is no GPU here) and the AttemptMonitor over a real process."""

import sys
from pathlib import Path

import pytest
from fake_nvml import GIB, FakeGpu, FakeNvml

from kohyawan.doctor import nvml
from kohyawan.run.ledger import Ledger
from kohyawan.run.monitor import AttemptMonitor
from kohyawan.run.notify import Notifier
from kohyawan.run.runview import Status, View
from kohyawan.run.samplers import GpuSampler, combine
from kohyawan.run.supervise import Supervisor
from kohyawan.run.tracker import Tracker

HAS_GPU = Path("/dev/nvidia0").exists()


def one_gpu(**kw):
    return FakeNvml([FakeGpu(**kw)])


def test_without_a_driver_the_sampler_says_so_once_and_measures_nothing():
    told = []
    sampler = GpuSampler(warn=told.append, nvml=FakeNvml(no_driver=True))
    assert not sampler.ok and told == [sampler.message]
    assert "NVMLError_DriverNotLoaded" in sampler.message and "not watched" in sampler.message
    assert sampler.sample([123]) == (None, None, None, None)


def test_the_sampler_reads_device_memory_utilisation_and_the_trainers_own_processes():
    fake = one_gpu(owners={4242: 2 * GIB, 4343: 2 * GIB, 1: 5 * GIB, 2: None})
    sampler = GpuSampler(nvml=fake)
    assert sampler.ok and sampler.message is None and [d.index for d in sampler.devices] == [0]
    assert sampler.sample([4242, 4343, 99]) == (20.0, 24.0, 4.0, 87.0)   # the foreign 5 GiB is not the trainer's
    assert sampler.sample([]) == (20.0, 24.0, None, 87.0)
    told = []
    assert GpuSampler("1", nvml=fake, warn=told.append).ok is False      # no such device
    assert "'1' is not a GPU index here (1 GPU(s))" in told[0] and "not watched" in told[-1]
    fake.broken_processes = True                                        # no permission to list processes:
    assert sampler.sample([4242]) == (20.0, 24.0, None, 87.0)           # the device's own figure still counts


def _machine():
    """Four GPUs NVML enumerates out of PCI order; CUDA (PCI_BUS_ID) numbers them by bus id."""
    return FakeNvml([FakeGpu(pci="00000000:81:00.0", uuid="GPU-cccc", used=10 * GIB),
                     FakeGpu(pci="00000000:01:00.0", uuid="GPU-aaaa", used=1 * GIB),
                     FakeGpu(pci="00000000:C1:00.0", uuid="GPU-dddd", used=3 * GIB, util=5.0),
                     FakeGpu(pci="00000000:41:00.0", uuid="GPU-bbbb", used=7 * GIB)])


def test_the_sampler_watches_the_gpus_the_trainer_sees_not_gpu_0():
    fake = _machine()
    # a batch job on CUDA's GPU 3 (bus C1): NVML's index 2
    sampler = GpuSampler("3", nvml=fake, order="PCI_BUS_ID")
    assert [(d.ordinal, d.index, d.uuid) for d in sampler.devices] == [(0, 2, "GPU-dddd")]
    assert sampler.sample() == (3.0, 24.0, None, 5.0)
    by_uuid = GpuSampler("GPU-bbbb", nvml=fake, order="PCI_BUS_ID")
    assert [d.index for d in by_uuid.devices] == [3]
    unset = GpuSampler(None, nvml=fake, order="PCI_BUS_ID")              # every GPU visible: cuda:0 is bus 01
    assert [d.index for d in unset.devices] == [1]


def test_a_data_parallel_run_gets_one_reading_per_gpu_and_the_watchdog_the_tightest():
    fake = _machine()
    fake.gpus[0].owners = {11: 9 * GIB}
    fake.gpus[3].owners = {12: 6 * GIB}
    sampler = GpuSampler("GPU-cccc,GPU-bbbb", processes=2, nvml=fake, order="PCI_BUS_ID")
    each = sampler.sample_each([11, 12])
    assert [(d.ordinal, d.index) for d, _ in each] == [(0, 0), (1, 3)]
    assert [r for _, r in each] == [(10.0, 24.0, 9.0, 87.0), (7.0, 24.0, 6.0, 87.0)]
    assert combine([r for _, r in each]) == (10.0, 24.0, 9.0, 87.0)     # the fuller GPU, the larger share
    told = []
    short = GpuSampler("GPU-cccc", processes=2, nvml=fake, warn=told.append)
    assert short.ok and len(short.devices) == 1 and told == ["the trainer runs 2 processes but sees 1 GPU(s)"]


def test_a_mig_instance_is_watched_without_a_utilisation_counter():
    fake = FakeNvml([FakeGpu(name="NVIDIA H100 80GB HBM3", total=80 * GIB,
                             migs=[FakeGpu(uuid="MIG-9999-aaaa", total=20 * GIB, used=12 * GIB)])])
    sampler = GpuSampler("MIG-9999", nvml=fake)
    assert [(d.index, d.mig, d.total_gib) for d in sampler.devices] == [(0, "MIG-9999-aaaa", 20.0)]
    assert sampler.sample() == (12.0, 20.0, None, None)


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
    fake = one_gpu()
    monitor = AttemptMonitor({"sample_seconds": 0.1}, tracker=tracker, status=status,
                             view=View(status, live=False, quiet=True), notifier=Notifier([]),
                             gpu=GpuSampler(nvml=fake))
    assert monitor.tick_s == 0.1 and monitor.watchdog.stage == "train"
    sup = Supervisor([sys.executable, "-c", TRAINER], log_path=tmp_path / "console.log", on_event=monitor.on_event,
                     on_tick=monitor.on_tick, on_line=monitor.on_line, tick_s=monitor.tick_s)
    monitor.supervisor = sup
    sup.start()
    fake.gpus[0].owners = {sup.pid: 2 * GIB, 1: 5 * GIB}
    result = sup.run()
    assert result.stopped_for == "nan" and "at step 14" in result.stop_reason
    assert result.duration_s < 30
    assert tracker.absolute == 14 and status.step == 14
    assert monitor.peak_vram == 2.0 and monitor.peak_ram and monitor.peak_ram > 0.001
    assert monitor.gpu_peaks() == [{"cuda": 0, "index": 0, "uuid": "GPU-11111111-2222-3333-4444-555555555555",
                                    "name": "NVIDIA GeForce RTX 4090", "peak_gb": 2.0}]
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


def test_a_data_parallel_attempt_records_a_peak_per_gpu(tmp_path):
    """One sampler reading per GPU of a two-process run: run.json gets each GPU's peak, metrics.jsonl each step's
    reading per GPU, and the attempt's peak is the fuller GPU's."""
    import json

    led = Ledger.create(tmp_path / "run", run_id="r", profile="character", task="t2v-1.3B", total_steps=10)
    tracker = Tracker(led, attempt=1, stage="train", base_name="c", start_step=0, total_steps=10)
    status = Status(run_id="r")
    fake = FakeNvml([FakeGpu(pci="00000000:02:00.0", uuid="GPU-b"), FakeGpu(pci="00000000:01:00.0", uuid="GPU-a")])
    monitor = AttemptMonitor({"sample_seconds": 0.1}, tracker=tracker, status=status,
                             view=View(status, live=False, quiet=True), notifier=Notifier([]),
                             gpu=GpuSampler("0,1", processes=2, nvml=fake, order="PCI_BUS_ID"))
    sup = Supervisor([sys.executable, "-c", TRAINER], log_path=tmp_path / "console.log", on_event=monitor.on_event,
                     on_tick=monitor.on_tick, on_line=monitor.on_line, tick_s=monitor.tick_s)
    monitor.supervisor = sup
    sup.start()
    fake.gpus[1].owners = {sup.pid: 2 * GIB}      # cuda:0 is bus 01: NVML's index 1
    fake.gpus[0].owners = {sup.pid: 3 * GIB}
    assert sup.run().stopped_for == "nan"
    assert [(g["cuda"], g["index"], g["uuid"], g["peak_gb"]) for g in monitor.gpu_peaks()] == [
        (0, 1, "GPU-a", 2.0), (1, 0, "GPU-b", 3.0)]
    assert monitor.peak_vram == 3.0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["vram_gb_each"] == [2.0, 3.0] for r in rows if r.get("vram_gb_each"))
    assert any(r.get("vram_gb_each") for r in rows)
