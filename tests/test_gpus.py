"""The right GPU (issue 11 item 4) and the trainer's GPU environment (item 2): CUDA_VISIBLE_DEVICES (indices,
UUIDs, MIG) mapped to NVML's devices in CUDA's order, the environment kohyawan gives the trainer, and a run
started like a batch job on GPU 3 watched on GPU 3. No GPU here: NVML is the fake of ``fake_nvml``, which
raises nvidia-ml-py's own errors; the trainer is the simulated one, started as a real trainer would be."""

import json
import sys

import psutil
import pytest

from fake_nvml import GIB, FakeGpu, FakeNvml
from kohyawan.doctor import checklist, nvml
from kohyawan.run import gpuenv

PCI = "PCI_BUS_ID"


def machine(**first):
    """NVML enumerates these four out of bus order: CUDA's (PCI_BUS_ID) GPU 0 is NVML's 1, GPU 3 is NVML's 2."""
    return FakeNvml([FakeGpu(pci="00000000:81:00.0", uuid="GPU-cc00-1111", used=10 * GIB, **first),
                     FakeGpu(pci="00000000:01:00.0", uuid="GPU-aa00-1111", used=1 * GIB),
                     FakeGpu(pci="00000000:C1:00.0", uuid="GPU-dd00-1111", total=48 * GIB, used=3 * GIB),
                     FakeGpu(pci="00000000:41:00.0", uuid="GPU-aa00-2222", used=7 * GIB)])


def mapped(setting, order=PCI, fake=None):
    fake = fake or machine()
    fake.init()
    seen = nvml.map_visible(fake, setting, order)
    return [d.index for d in seen.devices], list(seen.problems)


def test_indices_follow_pci_bus_order_and_uuids_their_prefix():
    assert mapped(None) == ([1, 3, 0, 2], [])
    assert mapped("3") == ([2], [])
    assert mapped("2,0") == ([0, 1], [])
    assert mapped(" GPU-dd00 , 1") == ([2, 3], [])            # a unique prefix, as CUDA takes it
    assert mapped("gpu-cc00-1111-extra") == ([], mapped("gpu-cc00-1111-extra")[1])


def test_like_cuda_the_first_bad_entry_ends_the_list():
    devices, problems = mapped("1,7,0")
    assert devices == [3] and problems == ["CUDA_VISIBLE_DEVICES=1,7,0: '7' is not a GPU index here (4 GPU(s)); "
                                           "CUDA ignores it and every entry after it"]
    assert mapped("GPU-aa00,0")[0] == [] and "matches several GPUs' UUIDs" in mapped("GPU-aa00,0")[1][0]
    assert mapped("0,0")[0] == [1] and "is listed twice" in mapped("0,0")[1][0]
    assert mapped("-1")[0] == [] and "is not a GPU index or a GPU-/MIG- UUID" in mapped("-1")[1][0]
    assert mapped("") == ([], ["CUDA_VISIBLE_DEVICES is empty: the trainer sees no GPU"])


def test_fastest_first_is_pci_order_for_one_model_and_a_stated_guess_for_mixed_ones():
    assert mapped("3", order="FASTEST_FIRST") == ([2], [])
    mixed = machine(name="NVIDIA H100 80GB HBM3")
    devices, problems = mapped("0", order=None, fake=mixed)   # unset: CUDA's default, FASTEST_FIRST
    assert devices == [1] and "CUDA_DEVICE_ORDER is FASTEST_FIRST and the GPUs differ" in problems[0]


def test_mig_instances_by_uuid_with_their_own_memory():
    fake = FakeNvml([FakeGpu(name="NVIDIA A100-SXM4-80GB", total=80 * GIB,
                             migs=[FakeGpu(uuid="MIG-1a2b-0000", total=10 * GIB),
                                   FakeGpu(uuid="MIG-3c4d-0000", total=20 * GIB)])])
    fake.init()
    seen = nvml.map_visible(fake, "MIG-3c4d", PCI)
    assert [(d.ordinal, d.index, d.mig, d.total_gib) for d in seen.devices] == [(0, 0, "MIG-3c4d-0000", 20.0)]
    assert "matches no MIG instance" in nvml.map_visible(fake, "MIG-ffff", PCI).problems[0]


def test_without_nvml_or_a_driver_nobody_is_visible_and_it_says_why():
    assert nvml.probe_visible(FakeNvml(no_driver=True), "0").problems == ("no NVIDIA GPU/NVML here (NVMLError_DriverNotLoaded)",)
    assert nvml.probe_visible(None, None).devices == ()


def test_doctor_shows_the_gpus_the_trainer_would_see():
    ok = checklist.visible_check(machine(), "3", {}, True)
    assert ok.status == "ok" and ok.summary == "cuda:0 = nvidia-smi 2 NVIDIA GeForce RTX 4090 (GPU-dd00-1111) (--gpus, PCI_BUS_ID order)"
    inherited = checklist.visible_check(machine(), None, {"CUDA_VISIBLE_DEVICES": "0,9"}, True)
    assert inherited.status == "warn" and inherited.details["source"] == "CUDA_VISIBLE_DEVICES"
    assert [d["index"] for d in inherited.details["devices"]] == [1] and "'9' is not a GPU index" in inherited.summary
    bad = checklist.visible_check(machine(), "GPU-ffff", {}, True)
    assert bad.status == "fail" and "nvidia-smi -L" in bad.fix
    assert checklist.visible_check(FakeNvml(no_driver=True), None, {}, False).status == "skip"


def test_the_trainer_environment_keeps_what_the_user_set():
    assert gpuenv.trainer_env({}, None) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                                            "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    assert gpuenv.trainer_env({"CUDA_DEVICE_ORDER": "FASTEST_FIRST", "PYTORCH_CUDA_ALLOC_CONF": ""}, "2,3") == {
        "CUDA_VISIBLE_DEVICES": "2,3"}
    assert gpuenv.trainer_env({"PYTORCH_ALLOC_CONF": "expandable_segments:False"}, None) == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    record = gpuenv.env_record({"CUDA_VISIBLE_DEVICES": "1", "PYTORCH_ALLOC_CONF": "expandable_segments:False"}, None)
    assert record == {"cuda_visible_devices": "1", "cuda_device_order": "PCI_BUS_ID",
                      "alloc_conf": "expandable_segments:False", "alloc_conf_from": "PYTORCH_ALLOC_CONF",
                      "expandable_segments": False}
    assert gpuenv.env_record({}, "0")["expandable_segments"] is True
    assert gpuenv.device_count(None, {"CUDA_VISIBLE_DEVICES": "0,1"}) == 2 and gpuenv.device_count("3", {}) == 1


def test_data_parallel_counts_the_gpus_slurm_gave(monkeypatch, tmp_path):
    from kohyawan.run.options import RunOptions

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert RunOptions(runs_dir=tmp_path, data_parallel=True).processes == 2
    assert RunOptions(runs_dir=tmp_path, data_parallel=True, gpus="0,1,2").processes == 3
    assert RunOptions(runs_dir=tmp_path, data_parallel=False).processes == 1


class TrainerOnBusC1(FakeNvml):
    """The trainer's processes (this test's children) hold 1.5 GiB each on the GPU at bus C1 only."""

    def compute_processes(self, handle):
        if handle == ("gpu", 2):
            return [(c.pid, int(1.5 * GIB)) for c in psutil.Process().children(recursive=True)]
        return [(1, 5 * GIB)]


@pytest.mark.slow
def test_a_batch_job_on_gpu_3_is_watched_on_gpu_3_and_teaches_the_estimate(tmp_path, monkeypatch):
    """As ``kohyawan batch`` starts it: only CUDA_VISIBLE_DEVICES=3 in the environment, no --gpus."""
    from runtime_helpers import FAST, make_dataset

    from kohyawan.config import profiles
    from kohyawan.estimate.observations import load_observations
    from kohyawan.rehearse.standin import trainer_dir
    from kohyawan.run import rehearsal, samplers
    from kohyawan.run.ledger import Ledger
    from kohyawan.run.options import RunOptions
    from kohyawan.run.runner import Run

    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    for var in ("CUDA_DEVICE_ORDER", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(samplers, "PynvmlAdapter", lambda: TrainerOnBusC1(machine().gpus))
    runs = tmp_path / "runs"
    spec = profiles.resolve("character", task="t2v-1.3B", dataset_dir=make_dataset(tmp_path / "data"),
                            sets=["max_train_epochs=3", "resolution=[64,64]", "watchdog.sample_seconds=0.1"])
    spec = rehearsal.rehearsal_models(spec, runs)   # stand-in model files; the trainer is started for real
    opts = RunOptions(runs_dir=runs, trainer_dir=trainer_dir(), python=sys.executable, launcher="python",
                      live=False, quiet=True)
    led = Ledger.create(runs / "job", run_id="job", profile="character", task="t2v-1.3B", total_steps=None,
                        request={}, options=opts.to_document())
    data = Run(led, spec, opts).drive()
    assert data["status"] == "succeeded", data.get("reason")
    assert data["gpu"] == {"name": "NVIDIA GeForce RTX 4090", "total_gib": 48.0, "index": 2, "uuid": "GPU-dd00-1111"}
    assert [g["index"] for g in data["gpus"]] == [2] and data["estimate"]["gpu_gib"] == 48.0
    assert (data["cuda_visible_devices"], data["cuda_device_order"], data["alloc_conf"]) == (
        "3", "PCI_BUS_ID", "expandable_segments:True")
    attempt = data["attempts"][0]
    assert attempt["peak_vram_gb"] and attempt["peak_vram_gb"] % 1.5 == 0          # the trainer's own, on GPU 3
    assert [(g["cuda"], g["index"], g["uuid"]) for g in attempt["peak_vram_by_gpu"]] == [(0, 2, "GPU-dd00-1111")]
    assert attempt["gpu"] == {"name": "NVIDIA GeForce RTX 4090", "total_gib": 48.0}
    assert attempt["allocator_peak_gb"]["reserved"] > 0 and attempt["allocator_peak_gb"]["steps"] == attempt["steps"][1] == 12
    metrics = [json.loads(line) for line in (runs / "job" / "metrics.jsonl").read_text().splitlines()]
    assert any(m["vram_gb"] for m in metrics)
    seen = [o for o in load_observations(runs) if o.run_id == "job"]
    assert seen and seen[0].gpu == "NVIDIA GeForce RTX 4090" and seen[0].peak_vram_gib == attempt["peak_vram_gb"]
