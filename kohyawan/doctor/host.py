"""``kohyawan doctor``'s host checks: is this machine ready to train WAN LoRAs? Each check is ok / warn /
fail with one fix.

Thresholds follow the training guide: VRAM 24 GB minimum and 40 GB recommended, RAM 32/64 GB, free disk
200/500 GB on an SSD. GPUs are surveyed by ``kohyawan.doctor.nvml`` (``check_gpus`` judges what it found);
without an NVIDIA driver that is "no NVIDIA GPU". A check that was not asked for (no ComfyUI folder given)
is "skip". See docs/architecture.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

from kohyawan.doctor.nvml import GIB
from kohyawan.doctor.result import Check

from kohyawan.errors import ToolMissing
from kohyawan.files import ffmpeg
VRAM_MIN, VRAM_REC = 24, 40          # "GB" in the guide; cards of that class report 23.99 and 39.5 GiB
VRAM_SLACK = 0.6                     # so a 24 GB card (23.99 GiB) meets "24"
RAM_MIN, RAM_REC = 32, 64
DISK_MIN, DISK_REC = 200, 500
CPU_MIN = 4


def check_gpus(gpus: Sequence[Mapping[str, Any]]) -> Check:
    if not gpus:
        return Check("gpu", "GPU", "fail", "no NVIDIA GPU (NVML found no driver or device)",
                     "train on a machine with an NVIDIA GPU of 24 GB or more and its driver installed",
                     {"gpus": []})
    best = max(gpus, key=lambda g: g["total_gib"])
    parts = [f"{g['name']} {g['total_gib']:.1f} GiB ({g['free_gib']:.1f} free)" for g in gpus]
    summary = f"{'; '.join(parts)}; driver {best['driver']}, CUDA {best['cuda']}"
    holders = [p for g in gpus for p in g["processes"]]
    details = {"gpus": list(gpus)}
    if best["total_gib"] + VRAM_SLACK < VRAM_MIN:
        return Check("gpu", "GPU", "fail", summary + f": below the {VRAM_MIN} GB minimum",
                     f"use a GPU with {VRAM_MIN} GB or more (see `kohyawan estimate` for what fits)", details)
    if holders and best["free_gib"] < best["total_gib"] - 1.0:
        who = ", ".join(f"{p['name'] or '?'} (pid {p['pid']})" for p in holders[:3])
        return Check("gpu", "GPU", "warn", summary + f"; other processes hold VRAM: {who}",
                     "stop them before training (ComfyUI: POST /free or quit it)", details)
    if best["total_gib"] + VRAM_SLACK < VRAM_REC:
        return Check("gpu", "GPU", "warn", summary + f": under the recommended {VRAM_REC} GB",
                     "expect fp8 and block swap (slower); `kohyawan estimate` shows the rung that fits", details)
    return Check("gpu", "GPU", "ok", summary, "", details)


def check_visible(seen, source: str, any_gpu: bool) -> Check:
    """Which GPUs the trainer would see (``kohyawan.doctor.nvml.Visibility``), and from what setting."""
    details = {"setting": seen.setting, "order": seen.order, "source": source,
               "devices": [d.to_dict() for d in seen.devices], "problems": list(seen.problems)}
    if not any_gpu:
        return Check("gpu_visible", "GPUs the trainer sees", "skip", "no NVIDIA GPU here", "", details)
    shown = "; ".join(f"cuda:{d.ordinal} = nvidia-smi {d.index} {d.name} ({d.mig or d.uuid or 'no UUID'})"
                      for d in seen.devices)
    summary = f"{shown or 'none'} ({source}, {seen.order} order)"
    if not seen.devices:
        return Check("gpu_visible", "GPUs the trainer sees", "fail", summary + ": " + "; ".join(seen.problems),
                     "give --gpus (or CUDA_VISIBLE_DEVICES) indices or UUIDs that nvidia-smi -L lists", details)
    if seen.problems:
        return Check("gpu_visible", "GPUs the trainer sees", "warn", summary + ": " + "; ".join(seen.problems),
                     "set CUDA_DEVICE_ORDER=PCI_BUS_ID and name GPUs that exist (nvidia-smi -L)", details)
    return Check("gpu_visible", "GPUs the trainer sees", "ok", summary, "", details)


def check_ram() -> Check:
    import psutil

    vm, sw = psutil.virtual_memory(), psutil.swap_memory()
    total = vm.total / GIB
    details = {"total_gib": round(total, 1), "available_gib": round(vm.available / GIB, 1),
               "swap_gib": round(sw.total / GIB, 1)}
    summary = f"{total:.1f} GiB RAM ({vm.available / GIB:.1f} available), swap {sw.total / GIB:.1f} GiB"
    if total + 1 < RAM_MIN:
        return Check("ram", "Host RAM", "fail", summary + f": below the {RAM_MIN} GB minimum",
                     f"use a machine with {RAM_MIN} GB or more (block swap keeps DiT blocks in RAM)", details)
    if total + 1 < RAM_REC:
        return Check("ram", "Host RAM", "warn", summary + f": under the recommended {RAM_REC} GB",
                     "limit blocks_to_swap and data-loader workers, or add RAM", details)
    return Check("ram", "Host RAM", "ok", summary, "", details)


def backing_device(path: Path) -> str | None:
    """The /sys/block name of the disk holding path (a partition maps to its disk), or None."""
    try:
        dev = os.stat(path).st_dev
        link = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
    except OSError:
        return None
    if not link.exists():
        return None
    if (link / "partition").exists():
        link = link.parent
    slaves = sorted((link / "slaves").glob("*")) if (link / "slaves").is_dir() else []
    if slaves:  # device-mapper / md: judge by the first underlying device
        return backing_device_name(slaves[0].resolve())
    return link.name


def backing_device_name(link: Path) -> str:
    return link.parent.name if (link / "partition").exists() else link.name


def rotational(device: str | None) -> bool | None:
    if not device:
        return None
    try:
        return (Path("/sys/block") / device / "queue" / "rotational").read_text().strip() == "1"
    except OSError:
        return None


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(label: str, path: Path) -> Check:
    where = _existing(path)
    usage = shutil.disk_usage(where)
    free = usage.free / GIB
    device = backing_device(where)
    spinning = rotational(device)
    kind = {True: "spinning disk", False: "SSD", None: "disk type unknown"}[spinning]
    details = {"path": str(path), "measured_at": str(where), "free_gib": round(free, 1),
               "total_gib": round(usage.total / GIB, 1), "device": device, "rotational": spinning}
    summary = f"{free:.0f} GiB free at {where} ({kind}{', ' + device if device else ''})"
    cid, title = f"disk_{label}", f"Disk ({label})"
    if free + 1 < DISK_MIN:
        return Check(cid, title, "fail", summary + f": below the {DISK_MIN} GB minimum",
                     f"free space, or use a disk with {DISK_MIN} GB+ free for the {label}", details)
    if spinning:
        return Check(cid, title, "warn", summary, "move runs, caches and datasets to an SSD (data loading stalls "
                     "the GPU on a spinning disk)", details)
    if free + 1 < DISK_REC:
        return Check(cid, title, "warn", summary + f": under the recommended {DISK_REC} GB",
                     "caches, checkpoints and states add up: keep 500 GB free for several runs", details)
    return Check(cid, title, "ok", summary, "", details)


def check_cpu() -> Check:
    n = os.cpu_count() or 1
    if n < CPU_MIN:
        return Check("cpu", "CPU", "warn", f"{n} cores", "data loading and caching are slow with fewer than "
                     f"{CPU_MIN} cores; lower max_data_loader_n_workers", {"cores": n})
    return Check("cpu", "CPU", "ok", f"{n} cores", "", {"cores": n})


def check_ffmpeg() -> Check:
    """The binary ``dataset prepare`` and ``comfy grid`` run (one finder: ``kohyawan.files.ffmpeg``)."""
    try:
        found = ffmpeg.locate()
    except ToolMissing as exc:
        return Check("ffmpeg", "ffmpeg", "fail", str(exc), f"point {ffmpeg.ENV} at an ffmpeg binary, or unset it",
                     {"source": ffmpeg.ENV})
    if found is None:
        return Check("ffmpeg", "ffmpeg", "fail", "ffmpeg not found",
                     "install ffmpeg (apt install ffmpeg) or pip install imageio-ffmpeg", {})
    exe, source = found.path, found.source
    try:
        first = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30).stdout.splitlines()
        version = first[0].split(" Copyright")[0] if first else "?"
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("ffmpeg", "ffmpeg", "fail", f"{exe} does not run: {exc}", "reinstall ffmpeg", {"path": exe})
    return Check("ffmpeg", "ffmpeg", "ok", f"{version} ({source})", "", {"path": exe, "source": source})


def check_comfyui(folder: Path | None) -> Check:
    if folder is None:
        return Check("comfyui", "ComfyUI", "skip", "not checked (no --comfyui folder given)",
                     "pass --comfyui DIR to check the folder LoRAs are deployed to")
    folder = Path(folder)
    if not (folder / "main.py").is_file():
        return Check("comfyui", "ComfyUI", "fail", f"{folder} is not a ComfyUI checkout (no main.py)",
                     "pass the folder that holds ComfyUI's main.py", {"path": str(folder)})
    loras = folder / "models" / "loras"
    if not loras.is_dir():
        return Check("comfyui", "ComfyUI", "warn", f"{folder}: models/loras is missing",
                     f"mkdir -p {loras}", {"path": str(folder)})
    return Check("comfyui", "ComfyUI", "ok", f"{folder} (models/loras present)", "", {"path": str(folder)})


def check_tokenizer(env: Mapping[str, str] | None = None) -> Check:
    env = os.environ if env is None else env
    hub = env.get("HF_HUB_CACHE") or os.path.join(env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"), "hub")
    repo = Path(hub) / "models--google--umt5-xxl" / "snapshots"
    files = [p for p in repo.glob("*/*") if p.name in ("spiece.model", "tokenizer.json")] if repo.is_dir() else []
    if files:
        return Check("tokenizer", "umT5 tokenizer", "ok", f"in the Hugging Face cache ({files[0].parent})", "",
                     {"hub": hub})
    return Check("tokenizer", "umT5 tokenizer", "warn", f"google/umt5-xxl tokenizer not in {hub}",
                 "text caching downloads it; offline, fill the cache first: huggingface-cli download "
                 "google/umt5-xxl spiece.model tokenizer.json special_tokens_map.json tokenizer_config.json",
                 {"hub": hub})
