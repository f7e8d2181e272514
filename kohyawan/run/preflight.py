"""Checks that must pass before any model is loaded: one clear line each, so a run fails before minutes
of model loading. Paths, model files and settings are checked by ``render.build_plan``; here: the
runs folder, the trainer checkout and its python, and disk space for caches, checkpoints and states.
See docs/architecture.md ("A run")."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Mapping

from kohyawan.errors import BadInput, ToolMissing
from kohyawan.trainer import musubi


def runs_dir_writable(runs_dir: Path) -> None:
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        probe = runs_dir / f".kohyawan-write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise BadInput(f"runs folder {runs_dir} is not writable: {exc.strerror or exc}") from None


def trainer(trainer_dir: Path | None, python: str, launcher: str, timeout_s: float = 180.0) -> None:
    if trainer_dir is None:
        raise ToolMissing("--trainer-dir is required: the musubi-tuner checkout to train with "
                          "(or --rehearse to try everything with the built-in simulated trainer)")
    if not trainer_dir.is_dir():
        raise ToolMissing(f"trainer checkout not found: {trainer_dir}")
    for script in musubi.SCRIPTS:
        path = Path(musubi.script_path(trainer_dir, script))
        if not path.is_file():
            raise ToolMissing(f"{trainer_dir} is not a musubi-tuner checkout: {path} is missing")
    modules = "musubi_tuner, torch" + (", accelerate" if launcher == "accelerate" else "")
    try:
        done = subprocess.run([python, "-c", f"import {modules}"], cwd=str(trainer_dir), capture_output=True,
                              text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise ToolMissing(f"trainer python not found: {python} (use --python with musubi-tuner's venv python)") from None
    except PermissionError:
        raise ToolMissing(f"trainer python is not executable: {python}") from None
    except subprocess.TimeoutExpired:
        raise ToolMissing(f"{python} took more than {timeout_s:.0f} s to import {modules}") from None
    if done.returncode != 0:
        last = next((ln for ln in reversed(done.stderr.splitlines()) if ln.strip()), "unknown error")
        raise ToolMissing(f"the trainer is not importable with {python} ({last.strip()}); install musubi-tuner "
                          f"into that environment (pip install -e {trainer_dir})")


def lora_bytes(task: str, rank: int, save_precision: str | None) -> int:
    from kohyawan.lora import keys

    per = {"fp16": 2, "bf16": 2}.get(save_precision or "", 4)
    return keys.expected_bytes(task if task in keys.TASK_MODELS else "t2v-14B", rank, per)


def disk_needed(task: str, train: Mapping, total_steps: int, epochs: int, outputs: int, rank: int) -> int:
    lora = lora_bytes(task, rank, train.get("save_precision"))
    fp32 = lora_bytes(task, rank, "fp32")
    optimizer = 2 * fp32 if "8bit" not in str(train.get("optimizer_type", "")).lower() else fp32 // 2
    state = fp32 + optimizer
    every = train.get("save_every_n_steps")
    saves = (total_steps // every if every else 0)
    if train.get("save_last_n_steps") and every:
        saves = min(saves, train["save_last_n_steps"] // every + 1)
    if train.get("save_every_n_epochs"):
        saves += epochs // train["save_every_n_epochs"]
    saves += 1  # the final file
    per_save = lora + (state if train.get("save_state") or train.get("save_state_on_train_end") else 0)
    return outputs * saves * per_save


def disk(run_dir: Path, needed: int) -> None:
    free = shutil.disk_usage(run_dir).free
    if needed > free:
        raise BadInput(f"not enough disk space in {run_dir}: the planned checkpoints and states need about "
                       f"{needed / 1e9:.1f} GB, {free / 1e9:.1f} GB free (lower save_every_n_steps' frequency or "
                       "set save_last_n_steps)")


def captions(dataset_dir: Path, caption_extension: str = ".txt") -> None:
    """Fail now on what would fail after minutes of model loading: a video without a caption breaks
    text-encoder caching, and uncaptioned images are skipped, so none captioned means nothing to train."""
    from kohyawan.dataset import inventory

    inv = inventory.scan(dataset_dir, caption_extension)
    for folder in inv.folders:
        if folder.kind == "video" and folder.uncaptioned:
            raise BadInput(f"{folder.uncaptioned} of {folder.count} videos in {folder.path} have no {caption_extension} "
                           "caption beside them; the trainer's text-encoder caching would fail "
                           "(kohyawan dataset prepare writes the trainer's layout)")
    if inv.folders and all(f.uncaptioned == f.count for f in inv.folders):
        raise BadInput(f"no media in {dataset_dir} has a {caption_extension} caption beside it; the trainer would find "
                       "nothing to train on (kohyawan dataset prepare writes the trainer's layout)")


def dataset(dataset_dir: Path, caption_extension: str = ".txt", warn=None) -> None:
    """A folder written by ``dataset prepare`` (it has a dataset.toml) gets the full ``dataset check``
    (decodes every file); its problems are warnings, except the ones that make the trainer fail, which
    the caption rule below raises. A hand-made folder gets the caption rule only."""
    if (Path(dataset_dir) / "dataset.toml").is_file():
        try:
            from kohyawan.dataset.check import check_dataset
        except ImportError:  # pragma: no cover - the dataset module ships with kohyawan
            check_dataset = None
        if check_dataset is not None:
            for problem in check_dataset(Path(dataset_dir)).problems:
                if warn:
                    warn(f"dataset check: {problem}")
    captions(dataset_dir, caption_extension)
