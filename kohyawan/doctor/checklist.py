"""``kohyawan doctor``'s checks in the order they are reported: GPU, RAM, CPU, disks, ffmpeg, the trainer
and its python, model files, the tokenizer cache, ComfyUI. See docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from kohyawan.doctor import host, trainer
from kohyawan.doctor.nvml import Nvml, probe_gpus
from kohyawan.doctor.result import Check


def run_checks(*, nvml: Nvml | None, trainer_dir: Path | None = None, python: str | None = None,
               comfyui: Path | None = None, runs_dir: Path | None = None, dataset_dir: Path | None = None,
               models: Mapping[str, Path | None] | None = None, task: str = "t2v-A14B") -> list[Check]:
    checks = [host.check_gpus(probe_gpus(nvml)), host.check_ram(), host.check_cpu()]
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
