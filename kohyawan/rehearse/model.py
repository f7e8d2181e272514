"""What the simulation knows about WAN models: sizes and a memory model (no torch). The LoRA files it saves
come from ``kohyawan.lora.fabricate``."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    blocks: int
    dim: int
    ffn: int
    params: float  # parameters of one DiT


_14B = Arch(blocks=40, dim=5120, ffn=13824, params=14.3e9)
_1_3B = Arch(blocks=30, dim=1536, ffn=8960, params=1.42e9)
ARCHS = {
    "t2v-14B": _14B, "i2v-14B": _14B, "t2i-14B": _14B, "flf2v-14B": _14B, "t2v-A14B": _14B, "i2v-A14B": _14B,
    "t2v-1.3B": _1_3B, "t2v-1.3B-FC": _1_3B, "t2v-14B-FC": _14B, "i2v-14B-FC": _14B,
}


# ---------------------------------------------------------------------------------------------------
# memory: VRAM from kohyawan.estimate.memory (the estimator's model); host RAM rough but monotone in every lever.

def tokens(width: int, height: int, frames: int, batch: int) -> int:
    return (width // 16) * (height // 16) * ((frames - 1) // 4 + 1) * batch


def vram_need(args, bucket: tuple[int, int, int, int]) -> tuple[float, float]:
    """(GiB to hold the model, GiB at the peak of a training step) for the biggest bucket (W, H, frames,
    batch), from kohyawan's own memory model, so a rehearsal runs out of memory exactly where
    ``kohyawan estimate`` says the real trainer would."""
    from kohyawan.estimate import memory

    width, height, frames, batch = bucket
    expert = "both" if getattr(args, "dit_high_noise", None) else "low"
    dataset = {"resolution": [width, height], "target_frames": [frames], "batch_size": batch}
    inp = memory.inputs_from_values(vars(args), dataset, args.task, expert)
    need = memory.vram(inp)
    return need.parts["weights"] + need.parts["cuda_context"], need.total_gib


def ram_need(args, arch: Arch) -> float:
    bytes_pp = 1 if args.fp8_base else 2
    block_gb = arch.params * bytes_pp / 1e9 / arch.blocks
    swap = min(args.blocks_to_swap or 0, arch.blocks - 1)
    need = 3.0 + swap * block_gb * (2 if args.use_pinned_memory_for_block_swap else 1)
    if getattr(args, "dit_high_noise", None) and args.offload_inactive_dit:
        need += arch.params * bytes_pp / 1e9
    need += 1.5 * (args.max_data_loader_n_workers if args.max_data_loader_n_workers is not None else 8)
    return need


def cuda_oom_text(total_gb: float, need_gb: float, try_gb: float) -> str:
    """torch's own CUDA OOM message (torch >= 2.5 spells the class torch.OutOfMemoryError)."""
    free = max(0.0, total_gb - (need_gb - try_gb))
    in_use = total_gb - free
    return (
        f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {try_gb:.2f} GiB. GPU 0 has a total "
        f"capacity of {total_gb:.2f} GiB of which {free:.2f} GiB is free. Including non-PyTorch memory, this "
        f"process has {in_use:.2f} GiB memory in use. Of the allocated memory {in_use * 0.97:.2f} GiB is allocated "
        f"by PyTorch, and {in_use * 0.03 * 1024:.2f} MiB is reserved by PyTorch but unallocated. If reserved but "
        "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
        "fragmentation.  See documentation for Memory Management  "
        "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
    )


SAVE_DTYPES = {None: "F32", "float": "F32", "fp32": "F32", "fp16": "F16", "bf16": "BF16"}


def ensure_dir(path: str) -> None:
    os.makedirs(path, exist_ok=True)
