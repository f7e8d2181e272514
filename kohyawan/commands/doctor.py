"""``kohyawan doctor``: check this machine before spending GPU hours."""

from __future__ import annotations

from pathlib import Path

import click

from kohyawan import console
from kohyawan.errors import WorkFailed

_FILE = click.Path(path_type=Path, dir_okay=False)
_DIR = click.Path(path_type=Path, file_okay=False)
MARK = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


@click.command()
@click.option("--trainer-dir", type=_DIR, default=None, help="musubi-tuner checkout (else $MUSUBI_TUNER_DIR).")
@click.option("--python", "python", default=None, metavar="PATH",
              help="Python of the trainer's environment (default: the checkout's .venv/venv).")
@click.option("--comfyui", type=_DIR, default=None, help="ComfyUI folder LoRAs are deployed to.")
@click.option("--runs-dir", type=_DIR, default=None, help="Where runs and caches go (default: kohyawan.toml's runs_dir, else ./runs).")
@click.option("--dataset", "dataset_dir", type=_DIR, default=None, help="A dataset folder to check the disk of.")
@click.option("--task", default="t2v-A14B", show_default=True, help="Task the model files must suit.")
@click.option("--dit", type=_FILE, default=None, help="DiT file (low-noise expert for WAN 2.2).")
@click.option("--dit-high-noise", "dit_high_noise", type=_FILE, default=None, help="High-noise expert DiT file.")
@click.option("--vae", type=_FILE, default=None, help="VAE file.")
@click.option("--t5", type=_FILE, default=None, help="umT5-XXL text encoder file.")
@click.option("--gpus", default=None, metavar="IDS",
              help="Which GPUs 'kohyawan run --gpus IDS' would give the trainer (default: CUDA_VISIBLE_DEVICES, else "
                   "every GPU).")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON (schema version 1).")
def doctor(trainer_dir, python, comfyui, runs_dir, dataset_dir, task, dit, dit_high_noise, vae, t5, gpus, as_json):
    """Check GPU, RAM, disk, ffmpeg, the trainer, its Python, model files, tokenizer cache and ComfyUI.

    Also shows which GPUs the trainer would see (cuda:N -> nvidia-smi's index and UUID), from --gpus or
    CUDA_VISIBLE_DEVICES as 'kohyawan run' passes them.

    Each check is ok, warn or fail with a one-line fix. Exits 1 when any check fails.

    \b
    Example:
      kohyawan doctor --trainer-dir ~/musubi-tuner --comfyui ~/ComfyUI
      kohyawan doctor --json --dit wan2.2_t2v_low_noise_14B_fp16.safetensors
      kohyawan doctor --gpus 2,3
    """
    from kohyawan.commands.estimate import _default_runs_dir
    from kohyawan.doctor import checklist, nvml, result

    runs_dir = runs_dir or _default_runs_dir()

    checks = checklist.run_checks(nvml=nvml.real_nvml(), trainer_dir=trainer_dir, python=python, comfyui=comfyui,
                                  runs_dir=runs_dir, dataset_dir=dataset_dir, task=task, gpus=gpus,
                                  models={"dit": dit, "dit_high_noise": dit_high_noise, "vae": vae, "t5": t5})
    report = result.summarise(checks)
    if as_json:
        console.print_json(report)
    else:
        _print(checks)
    if not report["ok"]:
        raise WorkFailed(f"{report['counts']['fail']} check(s) failed")


def _print(checks) -> None:
    # the fix is a command to copy: printed whole (below the table when the terminal is narrow)
    rows = [[MARK[c.status], c.title, c.summary, c.fix if c.status != "ok" else ""] for c in checks]
    console.print_table(["", "check", "result", console.Col("fix", keep=True)], rows, label=1, show_edge=False)
