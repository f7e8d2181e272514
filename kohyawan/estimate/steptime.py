"""Seconds per optimizer step of a musubi-tuner WAN LoRA run (pure; see docs/architecture.md and docs/estimate.md).

Seconds = training FLOPs / (the GPU's dense bf16 peak x an achieved fraction, ``mfu``), per pass, plus what
block swap cannot hide behind it. FLOPs per sample (forward): linears 2 x tokens x (6 d^2 + 2 d f) x L
(cross-attention k/v act on the 512 text tokens only), attention 4 x tokens^2 x d x L (q.k and p.v) plus
4 x tokens x 512 x d x L for cross-attention. The backward of a LoRA step needs only activation gradients
through the frozen linears (1x forward) and about 2.5x forward for flash attention; gradient checkpointing
recomputes the forward once more, inside the backward pass. fp8 weights are upcast per Linear (about 5 %).

Block swap (``modules/custom_offloading_utils.py``) EXCHANGES blocks: after a block has run, its Linear
weights go to host RAM and a swapped block's come back, so every swapped block costs a copy in each
direction in the forward pass and again in the backward pass. The copies run beside the compute of the same
pass, so a pass takes the longer of the two, plus a 5 % synchronisation cost of the copies (assumed).
Without pinned memory the copies go through staging buffers at UNPINNED_RATE of the link's rate (fitted:
0.15 on the H200, where 20 swapped blocks made a 1280x720 image step four times slower than the model first said).

``mfu`` per GPU is in ``gpus.toml``: fitted on an NVIDIA H200 to the measured steps in ``points.toml``
(``points.fit_time``, with UNPINNED_RATE; the residuals give the band ``points.time_band``); other GPUs use
the same fraction of their own dense bf16 rate, which is not measured. A user's own runs correct it (``observations``).
"""

from __future__ import annotations

from typing import Any, Mapping

from kohyawan import wan
from kohyawan.estimate import workload as workload_mod
from kohyawan.estimate.memory import (CKPT_STORED_D, TEXT_TOKENS_MAX, MemoryInputs, block_bytes, dit_bytes,
                                     with_shape)

ATTN_BWD = 2.5
FP8_SLOWDOWN = 1.05
SWAP_SYNC = 0.05
UNPINNED_RATE = 0.15   # fitted with mfu (points.fit_time): block swap copies reach 15 % of the link on the H200


def pass_flops(inp: MemoryInputs) -> tuple[float, float]:
    """(forward, backward incl. recompute) FLOPs of one step."""
    s = inp.shape
    per_sample = wan.tokens(inp.width, inp.height, inp.frames)
    batch = max(1, inp.batch)
    lin = 2.0 * per_sample * (6 * s.dim**2 + 2 * s.dim * s.ffn) + 2.0 * TEXT_TOKENS_MAX * 2 * s.dim**2
    attn = 4.0 * per_sample**2 * s.dim + 4.0 * per_sample * TEXT_TOKENS_MAX * s.dim
    recompute = 1 if inp.grad_ckpt else 0
    forward = batch * s.blocks * (lin + attn)
    backward = batch * s.blocks * (lin * (1 + recompute) + attn * (ATTN_BWD + recompute))
    return forward, backward


def step_seconds(inp: MemoryInputs, bf16_tflops: float, mfu: float, h2d_gbps: float,
                 timestep_boundary: float = 0.875, unpinned_rate: float | None = None) -> dict[str, float]:
    """Predicted seconds per optimizer step, by component, with "total" (``unpinned_rate`` replaces the
    fitted UNPINNED_RATE, for fitting)."""
    rate = bf16_tflops * 1e12 * mfu
    slow = FP8_SLOWDOWN if inp.fp8_base else 1.0
    forward, backward = (f / rate * slow for f in pass_flops(inp))
    link = h2d_gbps * 1e9 * (1.0 if inp.swap_pinned else UNPINNED_RATE if unpinned_rate is None else unpinned_rate)
    swap_pass = inp.swapped * 2 * block_bytes(inp) / link      # each swapped block out and in, once per pass
    swap = sum(max(0.0, swap_pass - c) for c in (forward, backward)) + SWAP_SYNC * 2 * swap_pass
    offload = 0.0
    if inp.grad_ckpt and inp.grad_ckpt_cpu_offload:
        offload = 0.5 * 2 * inp.shape.blocks * CKPT_STORED_D * inp.shape.dim * inp.tokens / (h2d_gbps * 1e9)
    switch = 0.0
    if inp.both_experts and inp.offload_inactive_dit:
        p = 1.0 - timestep_boundary        # chance a step samples the high-noise expert
        switch = 2 * p * (1 - p) * dit_bytes(inp) / link
    parts = {"compute": forward + backward, "block_swap": swap, "activation_offload": offload,
             "expert_switch": switch}
    parts["total"] = sum(parts.values())
    return parts


def timestep_boundary(train: Mapping[str, Any]) -> float:
    """musubi's ``timestep_boundary`` as a fraction (it takes 875 or 0.875)."""
    boundary = float(train.get("timestep_boundary") or 875)
    return boundary / 1000 if boundary > 1 else boundary


def mean_step_seconds(inp: MemoryInputs, work: workload_mod.Workload, gpu: Any, boundary: float = 0.875) -> float:
    """Seconds per step averaged over one epoch's batches of ``work`` (images are cheap, long clips dear) on
    ``gpu`` (its ``bf16_tflops``, ``mfu``, ``h2d_gbps``)."""
    total = steps = 0.0
    for shape, size, count in workload_mod.epoch_batches(work):
        one = with_shape(inp, shape.width, shape.height, shape.frames, size)
        total += count * step_seconds(one, gpu.bf16_tflops, gpu.mfu, gpu.h2d_gbps, boundary)["total"]
        steps += count
    return total / steps if steps else 0.0
