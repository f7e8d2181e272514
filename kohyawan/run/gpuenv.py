"""What the trainer's environment says about GPUs, and what run.json records of them (pure).

- ``CUDA_VISIBLE_DEVICES``: ``--gpus`` when given, else whatever kohyawan inherited (a batch's GPU slot,
  SLURM's allocation, the user's shell); unset means every GPU. The GPUs the trainer uses are the first
  of those it sees, one per process (``--data-parallel``).
- ``CUDA_DEVICE_ORDER``: ``PCI_BUS_ID`` unless the user set it, so an index means the same GPU to the
  trainer, to nvidia-smi and to kohyawan's NVML mapping (``kohyawan.doctor.nvml``).
- ``PYTORCH_CUDA_ALLOC_CONF``: expandable segments unless the user set it, or torch's newer name for it,
  ``PYTORCH_ALLOC_CONF`` (``kohyawan.estimate.allocator``).

run.json records the effective values (``cuda_visible_devices``, ``cuda_device_order``, ``alloc_conf``
and where it came from) and the GPUs themselves (``gpu``, ``gpus``). A rehearsal's GPU is the simulation's
virtual one, named so that nothing learnt from rehearsals ever corrects an estimate for a real GPU.
See docs/architecture.md ("A run").
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from kohyawan.doctor.nvml import ORDER_VAR, PCI_BUS_ID, VISIBLE_VAR, VisibleGpu
from kohyawan.estimate import allocator

REHEARSAL_GPU = "kohyawan rehearsal (virtual GPU)"


def visible(gpus: str | None, environ: Mapping[str, str]) -> str | None:
    """CUDA_VISIBLE_DEVICES as the trainer will get it (None: unset, every GPU)."""
    return gpus if gpus is not None else environ.get(VISIBLE_VAR)


def device_count(gpus: str | None, environ: Mapping[str, str]) -> int:
    """How many GPUs CUDA_VISIBLE_DEVICES lists (0 when unset or empty: not known without NVML)."""
    return len([g for g in (visible(gpus, environ) or "").split(",") if g.strip()])


def trainer_env(environ: Mapping[str, str], gpus: str | None) -> dict[str, str]:
    """What kohyawan adds to (or changes in) its own environment for the trainer."""
    env: dict[str, str] = {}
    if gpus is not None:
        env[VISIBLE_VAR] = gpus
    if ORDER_VAR not in environ:
        env[ORDER_VAR] = PCI_BUS_ID
    env.update(allocator.trainer_env(environ))
    return env


def env_record(environ: Mapping[str, str], gpus: str | None) -> dict[str, Any]:
    """run.json's record of the trainer's GPU-related environment."""
    full = {**environ, **trainer_env(environ, gpus)}
    conf, source = allocator.conf(environ)
    return {"cuda_visible_devices": full.get(VISIBLE_VAR), "cuda_device_order": full.get(ORDER_VAR),
            "alloc_conf": conf, "alloc_conf_from": source, "expandable_segments": allocator.expandable(conf)}


def gpu_record(devices: Sequence[VisibleGpu]) -> dict[str, Any]:
    """run.json's ``gpu`` (the first GPU the trainer uses: the estimator keys what it learns on its name)
    and ``gpus`` (every GPU it uses, with the NVML index and UUID it maps to)."""
    if not devices:
        return {}
    first = devices[0]
    return {"gpu": {"name": first.name, "total_gib": first.total_gib, "index": first.index,
                    "uuid": first.mig or first.uuid},
            "gpus": [d.to_dict() for d in devices]}


def rehearsal_record(gpu_gib: float) -> dict[str, Any]:
    """run.json's ``gpu`` for a rehearsal: the simulation's virtual GPU of ``gpu_gib``."""
    return {"gpu": {"name": REHEARSAL_GPU, "total_gib": float(gpu_gib), "virtual": True}}
