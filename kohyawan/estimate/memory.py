"""Peak VRAM, host RAM and disk of a musubi-tuner WAN LoRA run, from the trainer's code, fitted to GPU
measurements (pure; see docs/architecture.md and docs/estimate.md).

Units: GiB (2**30 bytes), as torch's OOM message and NVML report them; a "24 GB" card has 23.99 GiB.

**When each part exists** (musubi-tuner 0.3.4, ``training/trainer_base.py``): the DiT weights from loading on;
the LoRA's fp32 weights from network creation on; gradients from the backward pass until
``optimizer.zero_grad(set_to_none=True)`` after the step; the optimizer state from the FIRST optimizer step on.
So step 1 runs without optimizer state and step 2 is the first step with everything: a setting can finish
step 1 and run out of memory in step 2 (measured on an H200 at a 23.5 GiB cap, ``points.toml``). The model
gives both: ``Vram.first_step_gib`` (step 1) and ``Vram.total_gib`` (step 2 on, the steady peak). Within a
step there are two candidate peaks: the start of the backward pass (every checkpointed block input stored,
one block recomputed with its gradients; the LoRA gradients of the other blocks do not exist yet) and the
optimizer step (every gradient, the state and the optimizer's temporaries; activations freed). The peak is
the larger; activations make the backward the peak except for small images.

The parts:

1. **DiT weights** (``dit_bytes``): parameter counts from the WAN shapes below. fp16/bf16 2 bytes. ``fp8_base``
   without ``fp8_scaled`` casts the whole model to fp8 (``transformer.to(float8)``): 1 byte everywhere. With
   ``fp8_scaled`` only the Linear weights inside the blocks are fp8; the rest keeps 2 bytes. ``blocks_to_swap
   N`` keeps N blocks' Linear weights in host RAM, exchanged in place (``modules/custom_offloading_utils.py``):
   the GPU holds L-N blocks. Dual-expert runs (A14B, ``expert=both``) keep both DiTs resident unless
   ``offload_inactive_dit``.
2. **LoRA training state**: r (in + out) parameters per adapted Linear, 10 per block (12 for Wan 2.1 I2V).
   fp32 weights (4 bytes), fp32 gradients (4, at the optimizer step), the optimizer state after the first
   step (AdamW 8, AdamW8bit 2, Adafactor factored, ...) and the optimizer's temporaries during its step
   (``OPTIMIZER_TEMP_BYTES``: torch's foreach AdamW makes a fp32 copy of the second moment's square root).
3. **Activations** per token, in units of the model width d: gradient checkpointing stores each block's
   input (CKPT_STORED_D = 2: fp16/bf16); the block being recomputed plus its backward need WORKING_SET_D
   (fitted, below), which includes the fp32 modulation Wan 2.2 computes per token. Wan 2.2 (A14B tasks) also
   keeps the time embedding per token for the whole step: e [L, d] and e0 [L, 6, d] in fp32, TIME_EMBED_D = 28
   (``wan/modules/model.py``; ``--force_v2_1_time_embedding`` turns both back into per-sample vectors, and
   the per-token modulation with them: MODULATION_D = 32 of the working set). fp8 weights are upcast per
   Linear, and the upcast copies of the block being recomputed stay until its backward is done: one block's
   Linear weights in 2 bytes. Without checkpointing every block keeps STORED_D (a first-principles count, not
   measured) plus its modulation.
4. **What torch and CUDA add on top** (NVML minus torch's allocated): the CUDA context outside torch
   (CUDA_CONTEXT_GIB, measured) and the caching allocator's reserved-but-unallocated memory at the peak,
   which grows with the activation tensors it cycles through: ALLOC_GAP_D per token per unit of width
   without ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``, ALLOC_GAP_EXPANDABLE_D with it.

**Fitted constants** (``points.fit_working_set``, ``points.fit_alloc_gap``, ``points.fit_alloc_expandable``;
a test recomputes them from ``points.toml``): the smallest values (0.1 steps) that put torch's allocated and
reserved memory at or above every measured point. WORKING_SET_D comes from ladder-auto (512x512x25, fp8
scaled, 20 swapped blocks: 18.64 GiB allocated); C-calibrate asks 111.1, run D 99.7. ALLOC_GAP_D (no expandable segments) comes from the ladder's blocks_to_swap=10
rung, which ran out of memory in step 2 under a 23.5 GiB cap. With expandable segments (D-expandable,
ladder-auto, C-calibrate: reserved minus allocated 1.8, 1.2 and 0.8 GiB) the reserve does not grow with the
tokens: ALLOC_GAP_EXPANDABLE_D = 0 and a fixed ALLOC_EXPANDABLE_BASE_GIB. CUDA_CONTEXT_GIB is D's NVML peak
70.7 minus its reserved 69.97. All measured on an NVIDIA H200, torch 2.11, musubi-tuner 0.3.4.

Host RAM (peak of the training process tree): the process itself (HOST_BASE_GIB = 3.5: python, torch, CUDA
libraries), WORKER_GIB = 0.4 per data-loader worker, every resident expert's swapped blocks plus one (pinned)
or two (staging) transfer buffers of a block, the inactive expert under ``offload_inactive_dit``, offloaded
checkpoint activations, and at start-up, when block swap is on (musubi then loads to CPU first), the experts
loaded before as kept and the one loading with its 16-bit file and, with fp8, the copy made from it
(``load_bytes``; measured: 41.2 GiB RSS for one fp16 14B expert cast to fp8). Step time is in ``steptime``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from kohyawan import wan
from kohyawan.estimate import workload
from kohyawan.trainer import musubi

GIB = float(2**30)

CUDA_CONTEXT_GIB = 0.73     # NVML minus torch's reserved memory, H200 run D (points.toml)
WORKING_SET_D = 113.8        # fitted: bytes per token per unit of width, one block recomputed + its backward
ALLOC_GAP_D = 46.4          # fitted: allocator reserve above allocated per token per unit of width
ALLOC_GAP_EXPANDABLE_D = 0.0         # fitted: with expandable segments the reserve has no per-token part...
ALLOC_EXPANDABLE_BASE_GIB = 1.25     # ...but a fixed one (points.fit_alloc_expandable, H200 runs of 2026-12-04)
STORED_D = 61               # bytes per token per unit of width kept by a block without checkpointing
CKPT_STORED_D = 2           # a checkpointed block keeps its fp16/bf16 input only
TEXT_TOKENS_MAX = wan.UMT5.text_len   # umT5 context length used by WAN
TIME_EMBED_D = 28           # Wan 2.2: e [L, d] + e0 [L, 6, d], fp32, alive for the whole step
MODULATION_D = 32           # Wan 2.2: a block's per-token modulation (fp32 [L, 6, d] sum, two fp32 [L, d])
HOST_BASE_GIB = 3.5         # python + torch + CUDA libraries + the trainer's own objects
WORKER_GIB = 0.4            # one data-loader worker process (a forked python with torch imported)


@dataclass(frozen=True)
class ModelShape:
    name: str
    blocks: int
    dim: int
    ffn: int
    other_params: int       # parameters outside the blocks (embeddings, time projection, head)
    max_swap: int

    def linears(self, i2v_img: bool = False) -> list[tuple[int, int]]:
        """(out, in) of every Linear in one block; musubi trains a LoRA module on each."""
        return [shape for _, shape in wan.block_linears(wan.DITS[self.name], i2v_img)]

    def block_linear_params(self, i2v_img: bool = False) -> int:
        return sum(out * inp for out, inp in self.linears(i2v_img))

    def block_other_params(self) -> int:
        # biases of the 10 linears, q/k RMS-norm weights, the 6-way modulation, norm3 affine
        return 16 * self.dim + 2 * self.ffn

    def total_params(self, i2v_img: bool = False) -> int:
        per_block = self.block_linear_params(i2v_img) + self.block_other_params()
        return self.blocks * per_block + self.other_params


def _shape(size: str, other_params: int) -> ModelShape:
    dit = wan.DITS[size]
    return ModelShape(size, blocks=dit.layers, dim=dit.dim, ffn=dit.ffn_dim, other_params=other_params,
                      max_swap=musubi.max_swap(dit))


# the sizes musubi-tuner trains; parameters outside the blocks rounded to what the published files show
SHAPES = {"14B": _shape("14B", 232_000_000), "1.3B": _shape("1.3B", 25_600_000)}

OPTIMIZER_BYTES = {  # bytes of state per trainable parameter; "adafactor" is handled by shape
    "adamw": 8.0, "adam": 8.0, "adamw8bit": 2.0, "adam8bit": 2.0, "pagedadamw8bit": 2.0, "lion": 4.0,
    "lion8bit": 1.0, "prodigy": 16.0, "sgd": 0.0, "sgdnesterov": 4.0, "came": 8.0, "dadaptadam": 12.0,
}


def model_shape(task: str) -> ModelShape:
    return SHAPES[wan.TASKS[task].size]


OPTIMIZER_TEMP_BYTES = {  # bytes per trainable parameter the optimizer allocates during its step
    "adamw": 4.0, "adam": 4.0, "adamw8bit": 0.0, "adam8bit": 0.0, "pagedadamw8bit": 0.0, "lion": 4.0,
    "lion8bit": 0.0, "prodigy": 4.0, "sgd": 0.0, "sgdnesterov": 0.0, "came": 4.0, "dadaptadam": 4.0,
    "adafactor": 4.0,
}


@dataclass(frozen=True)
class MemoryInputs:
    """Everything the memory model reads, in musubi-tuner's terms. width/height/frames/batch describe the
    largest batch the trainer forms (``workload.Workload.peak``)."""

    task: str = "t2v-A14B"
    expert: str = "both"             # both | high | low | sequential (sequential trains one at a time)
    fp8_base: bool = False
    fp8_scaled: bool = False
    blocks_to_swap: int = 0
    swap_pinned: bool = False
    offload_inactive_dit: bool = False
    frames: int = 1
    width: int = 960
    height: int = 544
    batch: int = 1
    rank: int = 4
    optimizer: str = "adamw"
    grad_ckpt: bool = False
    grad_ckpt_cpu_offload: bool = False
    split_attn: bool = False
    workers: int = 8
    force_v2_1_time_embedding: bool = False
    expandable_segments: bool = False    # PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True in the trainer
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> wan.TaskModel:
        return wan.TASKS[self.task]

    @property
    def shape(self) -> ModelShape:
        return model_shape(self.task)

    @property
    def i2v_img(self) -> bool:
        # Wan 2.1 image models (I2V, FLF2V, Fun-Control) have the extra image cross-attention; Wan 2.2 does not.
        return self.model.image_attn

    @property
    def both_experts(self) -> bool:
        """A two-expert task training both experts in one run."""
        return self.model.dual and self.expert == "both"

    @property
    def per_token_time(self) -> bool:
        """Wan 2.2 computes the time embedding and the blocks' modulation per token."""
        return self.model.dual and not self.force_v2_1_time_embedding    # Wan 2.2 (v2_2) configs

    @property
    def dual_resident(self) -> bool:
        return self.both_experts and not self.offload_inactive_dit

    @property
    def swapped(self) -> int:
        return max(0, min(int(self.blocks_to_swap or 0), self.shape.max_swap))

    @property
    def latent_frames(self) -> int:
        return wan.latent_frames(self.frames)

    @property
    def tokens(self) -> int:
        return wan.tokens(self.width, self.height, self.frames) * max(1, self.batch)


def inputs_from_values(train: Mapping[str, Any], dataset: Mapping[str, Any], task: str = "t2v-A14B",
                       expert: str = "both", peak: Any = None, expandable_segments: bool = False) -> MemoryInputs:
    """MemoryInputs from musubi option values (absent keys take the trainer's defaults). ``peak`` (a
    ``workload.Shape``) gives the largest batch; without it the dataset settings' resolution and longest
    item stand in."""
    if peak is None:
        width, height = workload.settings_resolution(dataset)
        frames, batch = workload.settings_frames(dataset), int(dataset.get("batch_size") or 1)
    else:
        width, height, frames, batch = peak.width, peak.height, peak.frames, peak.largest_batch
    workers = train.get("max_data_loader_n_workers")
    return MemoryInputs(
        task=task, expert=expert,
        fp8_base=bool(train.get("fp8_base", False)),
        fp8_scaled=bool(train.get("fp8_scaled", False)),
        blocks_to_swap=int(train.get("blocks_to_swap") or 0),
        swap_pinned=bool(train.get("use_pinned_memory_for_block_swap", False)),
        offload_inactive_dit=bool(train.get("offload_inactive_dit", False)),
        frames=frames, width=width, height=height, batch=batch,
        rank=int(train.get("network_dim") or 4),
        optimizer=str(train.get("optimizer_type") or "adamw"),
        grad_ckpt=bool(train.get("gradient_checkpointing", False)),
        grad_ckpt_cpu_offload=bool(train.get("gradient_checkpointing_cpu_offload", False)),
        split_attn=bool(train.get("split_attn", False)),
        workers=int(workers) if workers is not None else 8,
        force_v2_1_time_embedding=bool(train.get("force_v2_1_time_embedding", False)),
        expandable_segments=expandable_segments,
    )


def lora_params(inp: MemoryInputs) -> int:
    # a module of rank r on an [out, in] Linear: down [r, in] and up [out, r]
    return inp.rank * sum(out + i for out, i in inp.shape.linears(inp.i2v_img)) * inp.shape.blocks


def lora_modules(inp: MemoryInputs) -> int:
    return len(inp.shape.linears(inp.i2v_img)) * inp.shape.blocks


def _optimizer_name(inp: MemoryInputs) -> str:
    name = inp.optimizer.lower().replace("_", "").replace(".", "").split("optim")[-1]
    name = name.rsplit("bitsandbytes", 1)[-1]
    return "adafactor" if "adafactor" in name else name


def _optimizer_bytes(inp: MemoryInputs) -> float:
    name = _optimizer_name(inp)
    if name == "adafactor":
        # factored second moment: one row and one column vector per LoRA matrix (down and up per module)
        per_block = sum(2 * inp.rank + out + i for out, i in inp.shape.linears(inp.i2v_img))
        return 4.0 * per_block * inp.shape.blocks
    per_param = OPTIMIZER_BYTES.get(name, OPTIMIZER_BYTES["adamw"])
    return per_param * lora_params(inp)


def _optimizer_temp_bytes(inp: MemoryInputs) -> float:
    return OPTIMIZER_TEMP_BYTES.get(_optimizer_name(inp), OPTIMIZER_TEMP_BYTES["adamw"]) * lora_params(inp)


def dit_bytes(inp: MemoryInputs, blocks: int | None = None) -> float:
    """Bytes of one DiT's weights with ``blocks`` blocks on the device (all blocks when None)."""
    s = inp.shape
    n = s.blocks if blocks is None else blocks
    everything_fp8 = inp.fp8_base and not inp.fp8_scaled
    linear_bytes = 1 if inp.fp8_base else 2
    other_bytes = 1 if everything_fp8 else 2
    per_block = s.block_linear_params(inp.i2v_img) * linear_bytes + s.block_other_params() * other_bytes
    return n * per_block + s.other_params * other_bytes


def block_bytes(inp: MemoryInputs) -> float:
    """Bytes of one block's weights (what block swap moves is its Linear weights, nearly all of it)."""
    other_bytes = 1 if inp.fp8_base and not inp.fp8_scaled else 2
    return dit_bytes(inp, 1) - inp.shape.other_params * other_bytes


@dataclass(frozen=True)
class Vram:
    parts: Mapping[str, float]       # GiB per component at the steady peak (step 2 on)
    total_gib: float                 # steady peak, after the first optimizer step
    first_step_gib: float            # step 1: no optimizer state yet
    phase: str                       # where the steady peak is: "backward" or "optimizer_step"

    @property
    def allocated_gib(self) -> float:
        """torch's peak allocated memory (what ``torch.cuda.max_memory_allocated`` reports)."""
        return self.total_gib - self.parts["allocator_reserve"] - self.parts["cuda_context"]

    @property
    def first_step_allocated_gib(self) -> float:
        """The same in step 1, before the optimizer state exists."""
        return self.first_step_gib - self.parts["allocator_reserve"] - self.parts["cuda_context"]

    @property
    def reserved_gib(self) -> float:
        return self.total_gib - self.parts["cuda_context"]


def activation_bytes(inp: MemoryInputs, working_set_d: float = WORKING_SET_D) -> dict[str, float]:
    """Activation memory at the start of the backward pass, by part (bytes)."""
    s, tokens = inp.shape, inp.tokens
    modulation = MODULATION_D if inp.per_token_time else 0
    working_d = working_set_d - (MODULATION_D - modulation)
    if inp.grad_ckpt:
        stored = 0.0 if inp.grad_ckpt_cpu_offload else s.blocks * CKPT_STORED_D * s.dim * tokens
        working = working_d * s.dim * tokens
    else:
        stored = s.blocks * (STORED_D + modulation) * s.dim * tokens
        working = max(0.0, working_d - STORED_D - modulation) * s.dim * tokens
    if inp.split_attn and inp.batch > 1:
        working *= 0.9   # attention runs one sample at a time: only its share of the working set shrinks
    time_embed = TIME_EMBED_D * s.dim * tokens if inp.per_token_time else 0.0
    upcast = 2.0 * s.block_linear_params(inp.i2v_img) if inp.fp8_base else 0.0
    return {"activations_stored": stored, "block_working_set": working, "time_embedding": time_embed,
            "fp8_upcast": upcast}


def allocator_gap_d(expandable: bool) -> float:
    return ALLOC_GAP_EXPANDABLE_D if expandable else ALLOC_GAP_D


def vram(inp: MemoryInputs, working_set_d: float | None = None, alloc_gap_d: float | None = None,
         alloc_base_gib: float | None = None) -> Vram:
    """The peak; ``working_set_d``, ``alloc_gap_d`` and ``alloc_base_gib`` replace the fitted constants
    (``points`` fits them)."""
    s = inp.shape
    experts = 2 if inp.dual_resident else 1
    params = lora_params(inp)
    weights = experts * dit_bytes(inp, s.blocks - inp.swapped)
    lora_weights = params * 4.0
    state = _optimizer_bytes(inp)
    acts = activation_bytes(inp, WORKING_SET_D if working_set_d is None else working_set_d)
    backward = weights + lora_weights + sum(acts.values())
    optimizer_step = weights + lora_weights + params * 4.0 + _optimizer_temp_bytes(inp)
    steady = max(backward + state, optimizer_step + state)
    first = max(backward, optimizer_step + state)     # the first step creates the state at its very end
    gap = allocator_gap_d(inp.expandable_segments) if alloc_gap_d is None else alloc_gap_d
    base = (ALLOC_EXPANDABLE_BASE_GIB if alloc_base_gib is None else alloc_base_gib) if inp.expandable_segments else 0
    reserve = gap * s.dim * inp.tokens + base * GIB
    add = reserve / GIB + CUDA_CONTEXT_GIB
    phase = "backward" if backward >= optimizer_step else "optimizer_step"
    parts = {"weights": weights, "lora_weights": lora_weights, "optimizer_state": state}
    if phase == "backward":
        parts.update(acts)
    else:
        parts.update(gradients=params * 4.0, optimizer_temporaries=_optimizer_temp_bytes(inp))
    parts = {k: v / GIB for k, v in parts.items()}
    parts.update(allocator_reserve=reserve / GIB, cuda_context=CUDA_CONTEXT_GIB)
    return Vram(parts=parts, total_gib=steady / GIB + add, first_step_gib=first / GIB + add, phase=phase)


def load_bytes(inp: MemoryInputs) -> float:
    """Host RAM one DiT takes while musubi loads it to the CPU (block swap): the weights as the file holds them
    (16-bit), and with ``fp8_base`` the fp8 copy made from them before the 16-bit tensors are let go. Measured
    on the H200 (points.toml, C-calibrate): 41.2 GiB of RSS for one fp16 14B expert cast to fp8."""
    sixteen = dit_bytes(replace(inp, fp8_base=False, fp8_scaled=False))
    return sixteen + (dit_bytes(inp) if inp.fp8_base else 0.0)


def host_ram(inp: MemoryInputs) -> Mapping[str, float]:
    """Peak host RAM of the training process tree in GiB, by component, with "total" (the peak)."""
    s = inp.shape
    experts = 2 if inp.both_experts else 1
    parts = {"process": HOST_BASE_GIB, "data_loader": inp.workers * WORKER_GIB}
    # each resident DiT keeps its swapped blocks in RAM; pinned swap adds one pinned block per transfer
    swap = experts * inp.swapped * block_bytes(inp) / GIB
    if inp.swapped:
        swap += (1 if inp.swap_pinned else 2) * block_bytes(inp) / GIB
    parts["swapped_blocks"] = swap
    parts["inactive_expert"] = dit_bytes(inp) / GIB if inp.offload_inactive_dit and experts == 2 else 0.0
    parts["offloaded_activations"] = (s.blocks * CKPT_STORED_D * s.dim * inp.tokens / GIB
                                      if inp.grad_ckpt and inp.grad_ckpt_cpu_offload else 0.0)
    # With block swap musubi loads every DiT into host RAM first (trainer_base: loading_device = "cpu" when
    # blocks_to_swap > 0; wan_train_network loads the high-noise expert before either is moved), so the peak
    # is at start-up: the experts loaded before, as kept, and the last one while it loads (load_bytes: its
    # 16-bit file and, with fp8, the copy made from it). The steady parts above come after it.
    steady = sum(parts.values())
    loading = ((experts - 1) * dit_bytes(inp) + load_bytes(inp)) / GIB if inp.swapped else 0.0
    load_peak = HOST_BASE_GIB + loading + parts["inactive_expert"]
    parts["load_transient"] = max(0.0, load_peak - steady)
    parts["total"] = steady + parts["load_transient"]
    return parts


def caching_vram_gib(fp8_t5: bool = False) -> float:
    """Peak VRAM of the text-encoder caching stage (umT5-XXL encoder, 5.7 B parameters)."""
    return 5.7e9 * (1 if fp8_t5 else 2) / GIB + CUDA_CONTEXT_GIB + 0.3


def with_shape(inp: MemoryInputs, width: int, height: int, frames: int, batch: int) -> MemoryInputs:
    """The same settings on another batch shape (the time model averages over an epoch's batches)."""
    return replace(inp, width=width, height=height, frames=frames, batch=batch)
