"""doctor: NVML through an injected fake (no GPU here), the real no-GPU path, and the machine's real probes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fake_nvml import GIB, FakeGpu, FakeNvml
from kohyawan.doctor import checklist, host, nvml, result
from kohyawan.doctor import trainer as doctor_trainer

HAS_GPU = Path("/dev/nvidia0").exists()


def fake(*devices, **kwargs) -> FakeNvml:
    """The shared fake NVML with a GPU per (name, total bytes, free bytes, [(pid, used bytes)]), in that order."""
    return FakeNvml([FakeGpu(name=name, total=total, used=total - free, owners=dict(procs),
                             pci=f"00000000:{i + 1:02X}:00.0", uuid=f"GPU-{i:08d}-0000-0000-0000-000000000000")
                     for i, (name, total, free, procs) in enumerate(devices)], **kwargs)


def gpu_check(*devices):
    return host.check_gpus(nvml.probe_gpus(fake(*devices)))


def test_fake_nvml_24gb_card_is_a_warning_below_the_recommended_40():
    nv = fake(("NVIDIA GeForce RTX 4090", int(23.99 * GIB), int(23.5 * GIB), []))
    gpus = nvml.probe_gpus(nv)
    assert nv.shut
    assert gpus == [{"index": 0, "name": "NVIDIA GeForce RTX 4090", "total_gib": 23.99, "free_gib": 23.5,
                     "used_gib": 0.49, "driver": "550.54.15", "cuda": "12.4", "processes": []}]
    check = host.check_gpus(gpus)
    assert check.status == "warn" and "recommended 40" in check.summary and "driver 550.54.15, CUDA 12.4" in \
        check.summary


def test_fake_nvml_thresholds():
    assert gpu_check(("NVIDIA H100 80GB HBM3", 80 * GIB, 79 * GIB, [])).status == "ok"
    assert gpu_check(("NVIDIA A100-SXM4-40GB", int(39.5 * GIB), 39 * GIB, [])).status == "ok"
    small = gpu_check(("NVIDIA GeForce RTX 3060", 12 * GIB, 11 * GIB, []))
    assert small.status == "fail" and "24 GB minimum" in small.summary and small.fix
    # the biggest of several GPUs decides
    assert gpu_check(("NVIDIA GeForce RTX 3060", 12 * GIB, 11 * GIB, []),
                     ("NVIDIA H100 80GB HBM3", 80 * GIB, 79 * GIB, [])).status == "ok"


def test_fake_nvml_other_processes_holding_vram_are_named():
    me = os.getpid()   # a real process, so its name comes from psutil
    check = gpu_check(("NVIDIA H100 80GB HBM3", 80 * GIB, 60 * GIB, [(me, 20 * GIB)]))
    assert check.status == "warn"
    proc = check.details["gpus"][0]["processes"][0]
    assert proc["pid"] == me and proc["used_gib"] == 20.0 and proc["name"]
    assert f"pid {me}" in check.summary


def test_fake_nvml_without_driver_means_no_gpu():
    nv = fake(no_driver=True)
    assert nvml.probe_gpus(nv) == []
    check = host.check_gpus([])
    assert check.status == "fail" and check.summary.startswith("no NVIDIA GPU")


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU")
def test_real_nvml_on_this_machine_reports_no_gpu():
    assert nvml.probe_gpus(nvml.real_nvml()) == []


def test_disk_check_reads_free_space_and_the_backing_device(tmp_path):
    check = host.check_disk("runs", tmp_path / "not yet" / "created")
    assert check.details["measured_at"] == str(tmp_path)
    free = shutil.disk_usage(tmp_path).free / GIB
    assert check.details["free_gib"] == pytest.approx(free, abs=0.5)
    device = check.details["device"]
    if device is not None:
        rot = Path("/sys/block", device, "queue", "rotational").read_text().strip()
        assert check.details["rotational"] == (rot == "1")
    expected = "fail" if free + 1 < host.DISK_MIN else ("warn" if check.details["rotational"]
                                                          or free + 1 < host.DISK_REC else "ok")
    assert check.status == expected


def test_tokenizer_in_the_hf_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert host.check_tokenizer().status == "warn"
    snap = tmp_path / "hf" / "hub" / "models--google--umt5-xxl" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "spiece.model").write_bytes(b"x")
    assert host.check_tokenizer().status == "ok"


def test_comfyui_folder(tmp_path):
    assert host.check_comfyui(None).status == "skip"
    assert host.check_comfyui(tmp_path).status == "fail"
    (tmp_path / "main.py").write_text("")
    assert host.check_comfyui(tmp_path).status == "warn"
    (tmp_path / "models" / "loras").mkdir(parents=True)
    assert host.check_comfyui(tmp_path).status == "ok"


def test_ffmpeg_is_found():
    check = host.check_ffmpeg()
    assert check.status == "ok" and "ffmpeg version" in check.summary


def make_checkout(root: Path) -> Path:
    trainer = root / "musubi tuner $(x)"
    (trainer / "src" / "musubi_tuner").mkdir(parents=True)
    (trainer / "src" / "musubi_tuner" / "wan_train_network.py").write_text("")
    (trainer / "pyproject.toml").write_text('[project]\nname = "musubi-tuner"\nversion = "0.3.4"\n')
    return trainer


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_trainer_checkout_version_and_commit(tmp_path):
    trainer = make_checkout(tmp_path)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for argv in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "x"]):
        subprocess.run(argv, cwd=trainer, check=True, env=env)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=trainer, capture_output=True, text=True).stdout.strip()
    assert doctor_trainer.git_commit(trainer) == head
    subprocess.run(["git", "pack-refs", "--all"], cwd=trainer, check=True)    # refs only in packed-refs
    assert doctor_trainer.git_commit(trainer) == head
    checks = doctor_trainer.check_trainer(trainer, None)
    assert checks[0].status == "ok" and checks[0].details["version"] == "0.3.4"
    assert checks[0].details["commit"] == head
    assert checks[1].id == "trainer_env" and checks[1].status == "warn"      # no venv in the checkout


def test_trainer_missing_or_wrong():
    assert doctor_trainer.check_trainer(None, None)[0].status == "warn"
    assert doctor_trainer.check_trainer(Path("/nonexistent"), None)[0].status == "fail"


def test_trainer_python_is_found_in_the_checkout_venv(tmp_path):
    trainer = make_checkout(tmp_path)
    assert doctor_trainer.trainer_python(trainer, None) is None
    venv_bin = trainer / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    assert doctor_trainer.trainer_python(trainer, None) == str(venv_bin / "python")
    assert doctor_trainer.trainer_python(trainer, "/opt/py") == "/opt/py"


def test_trainer_python_is_probed_in_a_real_subprocess(tmp_path):
    torch = pytest.importorskip("torch")  # the probed python must have torch

    trainer = make_checkout(tmp_path)
    env = doctor_trainer.check_trainer(trainer, sys.executable)[1]
    assert env.details["python"] == sys.executable
    assert env.details["torch"] == torch.__version__
    assert env.details["cuda_available"] == torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert env.status == "fail" and "without CUDA" in env.summary and "CUDA build of torch" in env.fix
    broken = doctor_trainer.check_trainer(trainer, str(tmp_path / "no-python"))[1]
    assert broken.status == "fail" and "did not run" in broken.summary


def test_model_checks_without_files_are_skipped_and_missing_files_fail(tmp_path):
    assert doctor_trainer.check_models({}, "t2v-A14B")[0].status == "skip"
    checks = doctor_trainer.check_models({"dit": tmp_path / "nope.safetensors"}, "t2v-A14B")
    try:
        import kohyawan.modelfiles  # noqa: F401  (written on another branch)
    except ImportError:
        assert checks[0].status == "skip" and "not available" in checks[0].summary
    else:
        assert checks[0].status == "fail" and "not found" in checks[0].summary


def test_run_checks_with_a_fake_gpu_and_the_json_schema(tmp_path):
    nv = fake(("NVIDIA H100 80GB HBM3", 80 * GIB, 79 * GIB, []))
    report = result.summarise(checklist.run_checks(nvml=nv, runs_dir=tmp_path, comfyui=None, environ={}))
    assert report["version"] == 1 and set(report["counts"]) == set(result.STATUSES)
    ids = [c["id"] for c in report["checks"]]
    assert ids[:4] == ["gpu", "gpu_visible", "ram", "cpu"] and "disk_runs" in ids and "ffmpeg" in ids
    assert "tokenizer" in ids and report["checks"][0]["status"] == "ok"
    visible = report["checks"][1]
    assert visible["status"] == "ok" and visible["summary"].startswith("cuda:0 = nvidia-smi 0 NVIDIA H100 80GB HBM3")
    for c in report["checks"]:
        assert set(c) == {"id", "title", "status", "summary", "fix", "details"} and c["status"] in result.STATUSES
        if c["status"] in ("warn", "fail"):
            assert c["fix"]
    assert report["ok"] == (report["counts"]["fail"] == 0)


def test_doctor_command_real_process_json_and_exit_code(kohyawan_argv, tmp_path):
    done = subprocess.run([*kohyawan_argv, "doctor", "--json", "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout)
    assert report["version"] == 1
    assert done.returncode == (0 if report["ok"] else 1)
    if not HAS_GPU:
        gpu = report["checks"][0]
        assert gpu["id"] == "gpu" and gpu["status"] == "fail" and "no NVIDIA GPU" in gpu["summary"]
        assert "check(s) failed" in done.stderr
