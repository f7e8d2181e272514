"""``kohyawan doctor``'s checks in the order they are reported: GPU, RAM, CPU, disks, ffmpeg, the trainer
and its python, model files, the tokenizer cache, ComfyUI. See docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from kohyawan.doctor import host, trainer
from kohyawan.doctor.nvml import VISIBLE_VAR, Nvml, probe_for_trainer, probe_gpus
from kohyawan.doctor.result import Check


def run_checks(*, nvml: Nvml | None, trainer_dir: Path | None = None, python: str | None = None,
               comfyui: Path | None = None, runs_dir: Path | None = None, dataset_dir: Path | None = None,
               models: Mapping[str, Path | None] | None = None, task: str = "t2v-A14B", gpus: str | None = None,
               environ: Mapping[str, str] | None = None) -> list[Check]:
    found = probe_gpus(nvml)
    checks = [host.check_gpus(found), visible_check(nvml, gpus, environ, bool(found)), host.check_ram(),
              host.check_cpu()]
    places = {"runs": runs_dir or Path("runs")}
    if dataset_dir is not None:
        places["dataset"] = dataset_dir
    for label, path in places.items():
        checks.append(host.check_disk(label, path))
    checks.append(host.check_ffmpeg())
    checks += trainer.check_trainer(trainer_dir, python)
    checks += trainer.check_models(models or {}, task)
    checks.append(host.check_tokenizer())
    checks.append(host.check_comfyui(comfyui))
    return checks


def visible_check(nvml: Nvml | None, gpus: str | None, environ: Mapping[str, str] | None, any_gpu: bool) -> Check:
    """The GPUs ``kohyawan run --gpus GPUS`` would give the trainer, as ``kohyawan run`` sets its environment:
    ``--gpus``, else the inherited CUDA_VISIBLE_DEVICES; CUDA_DEVICE_ORDER=PCI_BUS_ID unless set."""
    import os

    env = os.environ if environ is None else environ
    source = "--gpus" if gpus is not None else VISIBLE_VAR if env.get(VISIBLE_VAR) is not None else "every GPU"
    return host.check_visible(probe_for_trainer(nvml, gpus, env), source, any_gpu)
