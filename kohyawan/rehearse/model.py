"""What the simulation needs of the memory model, and torch's own failure text (no torch). Shapes come from
``kohyawan.wan``; the LoRA files it saves from ``kohyawan.lora.fabricate``, its other files from
``kohyawan.files.stream``."""

from __future__ import annotations

import os


# ---------------------------------------------------------------------------------------------------
# memory: VRAM and host RAM from kohyawan.estimate.memory (the estimator's models).

def vram_need(args, bucket: tuple[int, int, int, int]) -> tuple[float, tuple[float, float]]:
    """(GiB to hold the model, (GiB at the peak of the first training step, GiB at the peak of every later
    step)) for the biggest bucket (W, H, frames, batch), from kohyawan's own memory model, so a rehearsal runs
    out of memory where ``kohyawan estimate`` says the real trainer would: the first optimizer step creates the
    optimizer state, so a setting can finish step 1 and run out of memory in step 2 -- unless the run resumes
    a saved state, which brings the optimizer state with it."""
    from kohyawan.estimate import allocator, memory, workload

    width, height, frames, batch = bucket
    expert = "both" if getattr(args, "dit_high_noise", None) else "low"
    peak = workload.Shape(0, "video" if frames > 1 else "image", width, height, frames, batch, batch)
    inp = memory.inputs_from_values(vars(args), {}, args.task, expert, peak,
                                    allocator.expandable(allocator.in_effect(os.environ)))
    need = memory.vram(inp)
    first = need.total_gib if getattr(args, "resume", None) else need.first_step_gib
    return need.parts["weights"] + need.parts["cuda_context"], (first, need.total_gib)


def allocated_share(args, bucket: tuple[int, int, int, int]) -> float:
    """torch's allocated memory over its reserved memory at the peak of a step on this bucket, as the memory
    model splits them (the rest is the caching allocator's reserve)."""
    from kohyawan.estimate import allocator, memory, workload

    width, height, frames, batch = bucket
    expert = "both" if getattr(args, "dit_high_noise", None) else "low"
    shape = workload.Shape(0, "video" if frames > 1 else "image", width, height, frames, batch, batch)
    need = memory.vram(memory.inputs_from_values(vars(args), {}, args.task, expert, shape,
                                                 allocator.expandable(allocator.in_effect(os.environ))))
    return need.allocated_gib / need.reserved_gib


def allocator_peaks(peak_gib: float, share: float) -> tuple[int, int]:
    """(max allocated, max reserved) bytes torch would report in a step whose peak (as NVML sees it) is
    ``peak_gib``: reserved is that without the CUDA context, allocated its ``allocated_share``."""
    from kohyawan.estimate import memory

    reserved = max(0.0, peak_gib - memory.CUDA_CONTEXT_GIB)
    return int(reserved * share * memory.GIB), int(reserved * memory.GIB)


def ram_need(args, bucket: tuple[int, int, int, int]) -> float:
    """GiB of host RAM at the trainer's peak (with block swap: start-up, every expert loaded whole), from
    kohyawan's own host-RAM model, so a rehearsal is killed for host RAM where ``kohyawan estimate`` says."""
    from kohyawan.estimate import memory

    width, height, frames, batch = bucket
    expert = "both" if getattr(args, "dit_high_noise", None) else "low"
    dataset = {"resolution": [width, height], "target_frames": [frames], "batch_size": batch}
    return memory.host_ram(memory.inputs_from_values(vars(args), dataset, args.task, expert))["total"]


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
