"""Peak VRAM, host RAM, step time and disk of a musubi-tuner WAN LoRA run, from first principles (pure).

Units: every figure this module returns is in GiB (2**30 bytes), the unit torch's OOM message, nvidia-smi
(MiB) and NVML report; "24 GB" cards have 23.99 GiB, of which torch can use about 23.55 GiB.

What sits in GPU memory at the peak of a training step (the peak is in the backward pass of the first
block, where every stored activation still exists and one block is being recomputed):

1. **DiT weights.** Parameter counts come from the WAN architecture (dim d, FFN width f, L blocks):
   a block holds self-attention q/k/v/o (4 d^2), cross-attention q/k/v/o (4 d^2; Wan 2.1 I2V adds k_img/v_img,
   2 d^2) and the FFN (2 d f), about 351 M parameters for the 14B models (d=5120, f=13824, L=40) and 46 M for
   the 1.3B model (d=1536, f=8960, L=30). Outside the blocks (patch, text and time embeddings, the
   time projection, the head): about 232 M (14B) and 26 M (1.3B). Totals 14.28 B (28.6 GB in bf16, 14.3 GB in
   fp8) and 1.42 B (2.8 GB), the sizes of the published checkpoints. bf16 = 2 bytes; with ``fp8_base`` (with or
   without ``fp8_scaled``) the block linear weights are 1 byte and the rest stays bf16.
   ``blocks_to_swap N`` keeps N blocks in host RAM; musubi's offloader exchanges a GPU block with a CPU block
   in place, so the GPU holds exactly L-N blocks (source: musubi ``modules/custom_offloading_utils.py``).
   A WAN 2.2 A14B run with ``expert=both`` keeps both experts on the GPU, each with its own N swapped blocks,
   and swaps their state dicts at the timestep boundary (``wan_train_network.py``), unless
   ``offload_inactive_dit`` moves the inactive one to host RAM (it cannot be combined with block swap).
2. **LoRA training state.** 10 LoRA modules per block (400 for 14B, 300 for 1.3B; 12 per block for Wan 2.1
   I2V). A module of rank r on an [out, in] linear has r (in + out) parameters: 4.79 M x r for 14B (rank 32:
   153 M parameters, 307 MB in bf16, matching musubi's saved file). musubi keeps the trainable LoRA weights in
   fp32 under bf16 mixed precision: 4 bytes for weights, 4 for gradients, plus autocast's bf16 copy of each
   weight that lives for the forward pass (2 bytes), plus the optimizer state: AdamW 8 bytes (two fp32
   moments), AdamW8bit 2 bytes (two 8-bit moments), Lion 4, Prodigy 16, Adafactor factored second moments
   (4 (rows + cols) bytes per matrix, near zero), SGD 0.
3. **Activations.** tokens = ((frames - 1)/4 + 1) x (H/16) x (W/16) per sample (VAE 4x temporal and 8x spatial
   compression, 1x2x2 patches), times the batch size. Counting the bf16 tensors a WAN block keeps for its
   backward (norm inputs/outputs, q/k/v before and after RMS-norm and RoPE, attention outputs, the FFN's GELU
   input and output at f/d = 2.7 widths, residuals; WAN's LayerNorms compute in fp32) gives about 61 d bytes
   per token per block, and a backward in flight adds gradient buffers: the working set of one block is
   WORKING_SET_D = 75 d bytes per token (first principles say 68; 75 is the value that puts calibration (a)
   at "barely fits"). Without gradient checkpointing all L blocks keep STORED_D = 61 d bytes per token; with
   it each block keeps only its input (2 d bytes per token) and one block is recomputed at a time; with
   ``gradient_checkpointing_cpu_offload`` the block inputs live in host RAM instead. Text context (512 x 4096
   bf16) and the latents themselves are negligible next to these.
4. **Fixed costs.** The CUDA context and cuBLAS workspaces (CUDA_CONTEXT_GIB = 0.75) and the caching
   allocator's fragmentation (FRAGMENTATION = 5 % of what tensors occupy), both from typical torch 2.x runs.

Calibration (published observations; the tests in ``tests/test_memory.py`` hold the model to these errors):

(a) 14B expert, 512x512x81 frames, fp8, 32 blocks swapped, rank 32, AdamW8bit, checkpointing: "fits 24 GB,
    barely" (read as a 22.0-23.5 GiB peak). Model: 22.4 GiB, inside the band (stated error: within the band).
(b) 14B, 512x512 images, rank 128, fp8 scaled, no swap, checkpointing with CPU offload, Adafactor: 21.2 GB
    peak measured. Model: 21.35 GiB (+0.7 %; stated error +-5 %).
(c) the guide's 512x512 16-frame clips (the trainer takes 13 frames, 4 latent frames), batch 1: 20-22 GB.
    With the guide's settings (fp8, checkpointing, rank 64, AdamW8bit, no swap) the model gives 21.7 GiB,
    inside the band (stated error +-5 % of the band). Batch 2: the guide says 38-40 GB; the model gives
    24.9 GiB (-36 % against 39). The guide's figure doubles the whole footprint, but only activations scale
    with the batch; with checkpointing they are about 3 GiB per 16-frame sample, so from first principles
    batch 2 cannot cost 18 GiB more. The estimator does not chase that figure; a run that finds otherwise
    corrects the model on that machine through its own observations (``observations.fit_corrections``).

Host RAM (peak of the training process tree): the process itself (HOST_BASE_GIB = 3.5: python, torch, CUDA
libraries), WORKER_GIB = 0.4 per data-loader worker, every resident expert's swapped blocks plus one (pinned)
or two (staging) transfer buffers of a block, the inactive expert under ``offload_inactive_dit``, offloaded
checkpoint activations, and at start-up the whole of every expert when block swap is on (musubi then loads
to CPU first). The step-time model and its assumptions are documented at ``step_flops`` below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from kohyawan import wan
from kohyawan.trainer import musubi

GIB = float(2**30)

CUDA_CONTEXT_GIB = 0.75
FRAGMENTATION = 0.05
WORKING_SET_D = 75          # bytes per token per unit of model width: one block's forward+backward working set
STORED_D = 61               # bytes per token per unit of width kept by a block without checkpointing
CKPT_STORED_D = 2           # a checkpointed block keeps its bf16 input only
TEXT_TOKENS_MAX = wan.UMT5.text_len   # umT5 context length used by WAN
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


@dataclass(frozen=True)
class MemoryInputs:
    """Everything the memory model reads, in musubi-tuner's terms."""

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


def _frames(dataset: Mapping[str, Any]) -> int:
    if dataset.get("frame_extraction") == "full":  # each clip whole, up to max_frames (4n+1)
        return wan.kept_frames(int(dataset.get("max_frames", 129)))
    frames = dataset.get("target_frames")
    if frames is None:
        return 1
    if isinstance(frames, (list, tuple)):
        return max(int(f) for f in frames) if frames else 1
    return int(frames)


def _resolution(dataset: Mapping[str, Any]) -> tuple[int, int]:
    res = dataset.get("resolution", [960, 544])
    if isinstance(res, (list, tuple)):
        return int(res[0]), int(res[1])
    return int(res), int(res)


def inputs_from_values(train: Mapping[str, Any], dataset: Mapping[str, Any], task: str = "t2v-A14B",
                       expert: str = "both") -> MemoryInputs:
    """MemoryInputs from musubi option values (absent keys take the trainer's defaults)."""
    width, height = _resolution(dataset)
    return MemoryInputs(
        task=task,
        expert=expert,
        fp8_base=bool(train.get("fp8_base", False)),
        fp8_scaled=bool(train.get("fp8_scaled", False)),
        blocks_to_swap=int(train.get("blocks_to_swap") or 0),
        swap_pinned=bool(train.get("use_pinned_memory_for_block_swap", False)),
        offload_inactive_dit=bool(train.get("offload_inactive_dit", False)),
        frames=_frames(dataset),
        width=width,
        height=height,
        batch=int(dataset.get("batch_size") or 1),
        rank=int(train.get("network_dim") or 4),
        optimizer=str(train.get("optimizer_type") or "adamw"),
        grad_ckpt=bool(train.get("gradient_checkpointing", False)),
        grad_ckpt_cpu_offload=bool(train.get("gradient_checkpointing_cpu_offload", False)),
        split_attn=bool(train.get("split_attn", False)),
        workers=int(train.get("max_data_loader_n_workers", 8) if train.get("max_data_loader_n_workers")
                    is not None else 8),
    )


def lora_params(inp: MemoryInputs) -> int:
    # a module of rank r on an [out, in] Linear: down [r, in] and up [out, r]
    return inp.rank * sum(out + i for out, i in inp.shape.linears(inp.i2v_img)) * inp.shape.blocks


def lora_modules(inp: MemoryInputs) -> int:
    return len(inp.shape.linears(inp.i2v_img)) * inp.shape.blocks


def _optimizer_bytes(inp: MemoryInputs) -> float:
    name = inp.optimizer.lower().replace("_", "").replace(".", "").split("optim")[-1]
    name = name.rsplit("bitsandbytes", 1)[-1]
    if "adafactor" in name:
        # factored second moment: one row and one column vector per LoRA matrix (down and up per module)
        per_block = sum(2 * inp.rank + out + i for out, i in inp.shape.linears(inp.i2v_img))
        return 4.0 * per_block * inp.shape.blocks
    per_param = OPTIMIZER_BYTES.get(name, OPTIMIZER_BYTES["adamw"])
    return per_param * lora_params(inp)


def dit_bytes(inp: MemoryInputs, blocks: int | None = None) -> float:
    """Bytes of one DiT's weights with ``blocks`` blocks (all blocks when None)."""
    s = inp.shape
    n = s.blocks if blocks is None else blocks
    linear_bytes = 1 if inp.fp8_base else 2
    per_block = s.block_linear_params(inp.i2v_img) * linear_bytes + s.block_other_params() * 2
    return n * per_block + s.other_params * 2


def block_bytes(inp: MemoryInputs) -> float:
    return dit_bytes(inp, 1) - inp.shape.other_params * 2


@dataclass(frozen=True)
class Vram:
    parts: Mapping[str, float]       # GiB per component
    total_gib: float


def vram(inp: MemoryInputs) -> Vram:
    s = inp.shape
    resident = s.blocks - inp.swapped
    experts = 2 if inp.dual_resident else 1
    weights = experts * dit_bytes(inp, resident)
    params = lora_params(inp)
    lora = params * (4 + 4 + 2) + _optimizer_bytes(inp)
    tokens = inp.tokens
    if inp.grad_ckpt:
        stored = 0.0 if inp.grad_ckpt_cpu_offload else s.blocks * CKPT_STORED_D * s.dim * tokens
        working = WORKING_SET_D * s.dim * tokens
    else:
        stored = s.blocks * STORED_D * s.dim * tokens
        working = (WORKING_SET_D - STORED_D) * s.dim * tokens
    if inp.split_attn and inp.batch > 1:
        working *= 0.9   # attention runs one sample at a time: only its share of the working set shrinks
    tensors = {"weights": weights, "lora_state": lora, "activations_stored": stored, "block_working_set": working}
    parts = {k: v / GIB for k, v in tensors.items()}
    parts["fragmentation"] = sum(tensors.values()) * FRAGMENTATION / GIB
    parts["cuda_context"] = CUDA_CONTEXT_GIB
    return Vram(parts=parts, total_gib=sum(parts.values()))


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
    # is at start-up: every expert whole in RAM at once. The steady parts above come after it.
    steady = sum(parts.values())
    load_peak = HOST_BASE_GIB + (experts * dit_bytes(inp) / GIB if inp.swapped else 0.0) + parts["inactive_expert"]
    parts["load_transient"] = max(0.0, load_peak - steady)
    parts["total"] = steady + parts["load_transient"]
    return parts


def caching_vram_gib(fp8_t5: bool = False) -> float:
    """Peak VRAM of the text-encoder caching stage (umT5-XXL encoder, 5.7 B parameters)."""
    return 5.7e9 * (1 if fp8_t5 else 2) / GIB + CUDA_CONTEXT_GIB + 0.3


def latent_cache_bytes(inp: MemoryInputs) -> float:
    """One item's latent cache: [16, latent frames, H/8, W/8] bf16 (I2V adds a 20-channel image latent: the
    frame mask and the start image's latents, as the I2V DiT's input takes them)."""
    _, rows, cols = wan.TRAINING_VAE.stride
    per_frame = (inp.height // rows) * (inp.width // cols) * 2
    channels = wan.IN_DIM["i2v"] if inp.model.start_image else wan.TRAINING_VAE.z_dim
    return channels * inp.latent_frames * per_frame


def text_cache_bytes() -> float:
    """Upper bound of one item's text cache: [tokens <= 512, 4096] bf16."""
    return TEXT_TOKENS_MAX * wan.UMT5.dim * 2.0


def lora_file_bytes(inp: MemoryInputs, precision_bytes: int = 2) -> float:
    return lora_params(inp) * precision_bytes + lora_modules(inp) * 4


def state_bytes(inp: MemoryInputs) -> float:
    """A saved accelerate state: fp32 LoRA weights plus the optimizer's state, plus small RNG/scheduler files."""
    return lora_params(inp) * 4 + _optimizer_bytes(inp) + 1e5


# --- time -------------------------------------------------------------------------------------------------
#
# Seconds per step = training FLOPs / (the GPU's dense bf16 peak x an achieved fraction, "mfu"), plus what
# block swap and activation offload cannot hide behind compute. FLOPs per sample (forward): linears
# 2 x tokens x (6 d^2 + 2 d f) x L (cross-attention k/v act on the 512 text tokens only), attention
# 4 x tokens^2 x d x L (q.k and p.v) plus 4 x tokens x 512 x d x L for cross-attention. A LoRA step runs the
# forward once, the backward needs only activation gradients through the frozen linears (1x forward) and
# about 2.5x forward for flash attention, and gradient checkpointing recomputes the forward once more.
# fp8 weights are upcast per linear (about 5 % slower). Block swap copies each swapped block in for the
# forward and again for the backward; copies overlap compute, so only what exceeds the compute time, plus a
# 5 % synchronisation cost, is added. Unpinned copies go through staging buffers at about half the rate.
# The achieved fraction (mfu) is an assumption per GPU (gpus.toml) with an error of about +-50 %; a user's
# own runs correct it (estimate.corrections).

ATTN_BWD = 2.5
FP8_SLOWDOWN = 1.05


def step_flops(inp: MemoryInputs) -> float:
    s = inp.shape
    per_sample = wan.tokens(inp.width, inp.height, inp.frames)
    batch = max(1, inp.batch)
    lin = 2.0 * per_sample * (6 * s.dim**2 + 2 * s.dim * s.ffn) + 2.0 * TEXT_TOKENS_MAX * 2 * s.dim**2
    attn = 4.0 * per_sample**2 * s.dim + 4.0 * per_sample * TEXT_TOKENS_MAX * s.dim
    recompute = 1 if inp.grad_ckpt else 0
    return batch * s.blocks * (lin * (2 + recompute) + attn * (1 + ATTN_BWD + recompute))


def step_seconds(inp: MemoryInputs, bf16_tflops: float, mfu: float, h2d_gbps: float,
                 timestep_boundary: float = 0.875) -> dict[str, float]:
    """Predicted seconds per optimizer step, by component, with "total"."""
    compute = step_flops(inp) / (bf16_tflops * 1e12 * mfu)
    if inp.fp8_base:
        compute *= FP8_SLOWDOWN
    rate = h2d_gbps * 1e9 * (1.0 if inp.swap_pinned else 0.5)
    swap_copy = 2 * inp.swapped * block_bytes(inp) / rate
    swap = max(0.0, swap_copy - compute) + 0.05 * swap_copy
    offload = 0.0
    if inp.grad_ckpt and inp.grad_ckpt_cpu_offload:
        offload = 0.5 * 2 * inp.shape.blocks * CKPT_STORED_D * inp.shape.dim * inp.tokens / (h2d_gbps * 1e9)
    switch = 0.0
    if inp.both_experts and inp.offload_inactive_dit:
        p = 1.0 - timestep_boundary        # chance a step samples the high-noise expert
        switch = 2 * p * (1 - p) * dit_bytes(inp) / rate
    parts = {"compute": compute, "block_swap": swap, "activation_offload": offload, "expert_switch": switch}
    parts["total"] = sum(parts.values())
    return parts
