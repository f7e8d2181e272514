"""Disk a run needs: one item's latent and text caches, a LoRA file, a saved state (sizes from the same model
shapes as the memory model; see docs/architecture.md, "Estimate")."""

from __future__ import annotations

from kohyawan import wan
from kohyawan.estimate.memory import TEXT_TOKENS_MAX, MemoryInputs, _optimizer_bytes, lora_modules, lora_params


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
