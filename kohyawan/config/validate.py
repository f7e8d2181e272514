"""Cross-field rules a RunSpec must meet before anything is written (see docs/architecture.md,
"Planning").

Single values are checked as they are set (``spec``); here live the rules between values and the model
files. Every failure is a ConfigError/ModelFileError with one line; warnings are returned.
"""

from __future__ import annotations

from kohyawan.errors import ConfigError, ModelFileError
from kohyawan.config.spec import RunSpec
from kohyawan.trainer import musubi


def check(spec: RunSpec, *, need_models: bool = True) -> list[str]:
    """Raise on the first rule broken (in a fixed order); return the warnings."""
    _check_required(spec.train)
    _check_memory_savers(spec)
    _check_experts(spec)
    _check_lengths(spec.train, spec.dataset)
    warnings = _warnings(spec)
    if need_models:
        warnings += _check_models(spec)
    return warnings


def _check_required(t) -> None:
    """What musubi-tuner needs set, and set right, to train a WAN LoRA at all."""
    if t.get("sage_attn"):
        raise ConfigError("sage_attn is for inference only in musubi-tuner; use sdpa, xformers, flash_attn or flash3")
    attention = [a for a in musubi.ATTENTION_FLAGS if t.get(a)]
    if len(attention) != 1:
        raise ConfigError(f"exactly one attention flag must be on ({', '.join(musubi.ATTENTION_FLAGS)}); "
                          f"got {', '.join(attention) or 'none'}")
    if not t.get("optimizer_type"):
        raise ConfigError("optimizer_type must be set (musubi-tuner's empty default crashes), e.g. AdamW8bit")
    if t.get("network_module") != "networks.lora_wan":
        raise ConfigError(f"network_module must be networks.lora_wan for WAN, got {t.get('network_module')!r}")
    if not t.get("save_precision"):
        raise ConfigError("save_precision must be set (the trainer's default saves fp32, twice the size)")
    if not isinstance(t.get("network_dim"), int):
        raise ConfigError("network_dim must be set")


def _check_memory_savers(spec: RunSpec) -> None:
    """fp8, checkpointing, block swap and expert offload: what each needs and what excludes what."""
    t = spec.train
    if t.get("fp8_scaled") and not t.get("fp8_base"):
        raise ConfigError("fp8_scaled needs fp8_base")
    if t.get("gradient_checkpointing_cpu_offload") and not t.get("gradient_checkpointing"):
        raise ConfigError("gradient_checkpointing_cpu_offload needs gradient_checkpointing")
    swap = t.get("blocks_to_swap") or 0
    top = musubi.max_blocks_to_swap(spec.task)
    if swap > top or swap < 0:
        raise ConfigError(f"blocks_to_swap must be between 0 and {top} for a {musubi.task_size(spec.task)} model, got {swap}")
    if swap and t.get("offload_inactive_dit"):
        raise ConfigError("offload_inactive_dit cannot be combined with blocks_to_swap; choose one")


def _check_experts(spec: RunSpec) -> None:
    """Expert modes exist only for the two-expert tasks; offloading the idle expert needs both resident."""
    dual = spec.task in musubi.DUAL_EXPERT_TASKS
    if spec.expert != "both" and not dual:
        raise ConfigError(f"--expert {spec.expert} is for the WAN 2.2 two-expert tasks "
                          f"({', '.join(musubi.DUAL_EXPERT_TASKS)}), not {spec.task}")
    if spec.train.get("offload_inactive_dit") and not (dual and spec.expert == "both"):
        raise ConfigError("offload_inactive_dit only applies when both experts train in one run (--expert both)")


def _check_lengths(t, d) -> None:
    """Timestep range, clip length and training length."""
    if t.get("min_timestep") is not None and t.get("max_timestep") is not None \
            and t["min_timestep"] >= t["max_timestep"]:
        raise ConfigError("min_timestep must be below max_timestep")
    if d.get("frame_extraction") == "full" and (d.get("max_frames", 129) - 1) % 4:
        raise ConfigError(f"max_frames must be 4n+1 (the trainer cuts {d['max_frames']} to "
                          f"{(d['max_frames'] - 1) // 4 * 4 + 1})")
    if t.get("max_train_epochs") is None and t.get("max_train_steps") is None:
        raise ConfigError("set max_train_epochs or max_train_steps")


def _warnings(spec: RunSpec) -> list[str]:
    """Settings that train, but not as the user probably expects."""
    d = spec.dataset
    warnings: list[str] = []
    if d.get("frame_extraction") == "full" and spec.origin.get("dataset.target_frames", "base") not in ("base",) \
            and "target_frames" in d:
        warnings.append("target_frames has no effect with frame_extraction = full (each clip is used whole, up to "
                        "max_frames); set frame_extraction = \"head\" to cut clips to target_frames")
    if spec.train.get("no_metadata"):
        warnings.append("no_metadata: the trainer then saves only minimal metadata, so the checkpoints will not record "
                        "the task and expert kohyawan gives it in training_comment")
    if d.get("batch_size", 1) > 1 and spec.expert == "both":
        warnings.append("batch_size above 1 with both experts resident needs far more VRAM; see kohyawan estimate")
    return warnings


def model_roles(spec: RunSpec) -> dict[str, object]:
    """Which files each training run needs, by expert mode (absolute: the trainer runs elsewhere)."""
    m = spec.models.absolute()
    if spec.expert in ("both", "sequential") and spec.task in musubi.DUAL_EXPERT_TASKS:
        return {"dit": m.dit, "dit_high_noise": m.dit_high_noise, "vae": m.vae, "t5": m.t5}
    if spec.expert == "high":
        return {"dit_high_noise": m.dit_high_noise or m.dit, "vae": m.vae, "t5": m.t5}
    return {"dit": m.dit, "vae": m.vae, "t5": m.t5}


def _check_models(spec: RunSpec) -> list[str]:
    flags = {"dit": "--dit", "dit_high_noise": "--dit-high-noise", "vae": "--vae", "t5": "--t5"}
    for role, path in model_roles(spec).items():
        if path is None:
            what = {"dit": "the low-noise DiT" if spec.expert in ("both", "sequential", "low") else "the DiT",
                    "dit_high_noise": "the high-noise DiT", "vae": "the Wan 2.1 VAE",
                    "t5": "the umT5-XXL text encoder"}[role]
            extra = " (both experts train, so both DiT files are needed)" if role == "dit_high_noise" \
                and spec.expert in ("both", "sequential") else ""
            raise ModelFileError(f"{flags[role]} is required: {what}{extra}")
        if not path.is_file():
            raise ModelFileError(f"{flags[role]}: file not found: {path}")
    try:
        from kohyawan.modelfiles.check import check_models
    except ImportError:
        return []
    roles = model_roles(spec)
    t = spec.train
    return check_models(spec.task, spec.expert, dit=roles.get("dit"),
                        dit_high_noise=roles.get("dit_high_noise"), vae=roles.get("vae"),
                        t5=roles.get("t5"), mixed_precision=t.get("mixed_precision", "bf16"),
                        fp8_base=bool(t.get("fp8_base")), fp8_scaled=bool(t.get("fp8_scaled")))
