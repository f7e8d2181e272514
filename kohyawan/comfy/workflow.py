"""WAN 2.2 A14B workflows in ComfyUI's API format (pure).

The graph (see docs/architecture.md, "ComfyUI contract"; node and input names as in ComfyUI 0.8):

    CLIPLoader(type="wan") -> CLIPTextEncode x2            VAELoader
    t2v: EmptyHunyuanLatentVideo      i2v: LoadImage -> WanImageToVideo(positive, negative, vae, start_image)
    per expert: UNETLoader -> LoraLoaderModelOnly* -> ModelSamplingSD3(shift)
    KSamplerAdvanced(high, 0..split, add_noise, leftover noise) -> KSamplerAdvanced(low, split..end)
    VAEDecode -> CreateVideo(fps) -> SaveVideo          (or VAEDecode -> SaveAnimatedWEBP)

Node ids are "1", "2", ... in build order, so the same arguments always give the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from kohyawan.errors import BadInput

TASKS = ("t2v-A14B", "i2v-A14B")


@dataclass(frozen=True)
class ModelNames:
    unet_high: str
    unet_low: str
    clip: str
    vae: str


# The file names ComfyUI's own WAN 2.2 templates use (Comfy-Org repackaged fp8_scaled weights).
DEFAULT_MODELS = {
    "t2v-A14B": ModelNames(
        unet_high="wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
        unet_low="wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
        clip="umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        vae="wan_2.1_vae.safetensors",
    ),
    "i2v-A14B": ModelNames(
        unet_high="wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
        unet_low="wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
        clip="umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        vae="wan_2.1_vae.safetensors",
    ),
}

# Sampling defaults of ComfyUI's WAN 2.2 14B templates: 20 steps split at 10, cfg 3.5, shift 8, euler/simple,
# 81 frames at 16 fps (the 14B models' native rate), 640x640.
DEFAULTS: dict[str, Any] = {
    "width": 640,
    "height": 640,
    "frames": 81,
    "steps": 20,
    "cfg": 3.5,
    "shift": 8.0,
    "seed": 0,
    "fps": 16.0,
    "sampler": "euler",
    "scheduler": "simple",
    "output_prefix": "kohyawan/wan",
    "output": "video",
}
DEFAULT_NEGATIVE = "blurry, low quality, jpeg artifacts, static frame, distorted anatomy, extra limbs, watermark, subtitles, text"
OUTPUTS = ("video", "webp")
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def _check(task, width, height, frames, steps, split_step, cfg, shift, seed, fps, image, output, weight_dtype):
    if task not in TASKS:
        raise BadInput(f"unknown task '{task}' (ComfyUI workflows exist for {', '.join(TASKS)})")
    _check_shape(width, height, frames)
    _check_sampling(steps, split_step, cfg, shift, seed, fps)
    _check_inputs(task, image, output, weight_dtype)


def _check_shape(width, height, frames) -> None:
    """Latent sizes: 16-pixel multiples, and 4n+1 frames (the VAE packs 4 frames into one latent frame)."""
    for label, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or value < 16 or value % 16:
            raise BadInput(f"{label} {value} must be a multiple of 16 (at least 16)")
    if not isinstance(frames, int) or frames < 1 or (frames - 1) % 4:
        raise BadInput(f"frames {frames} must be of the form 4n+1 (1, 5, 9, ... 81)")


def _check_sampling(steps, split_step, cfg, shift, seed, fps) -> None:
    """Both experts get at least one step; the numbers stay in the ranges ComfyUI's nodes accept."""
    if not isinstance(steps, int) or steps < 2:
        raise BadInput(f"steps {steps} must be at least 2 (one per expert)")
    if not 0 < split_step < steps:
        raise BadInput(f"split step {split_step} must be between 1 and {steps - 1} so both experts run")
    if not 0.0 <= cfg <= 100.0:
        raise BadInput(f"cfg {cfg} is outside 0..100")
    if not 0.0 <= shift <= 100.0:
        raise BadInput(f"shift {shift} is outside 0..100")
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise BadInput(f"seed {seed} must be an integer between 0 and 2^64-1")
    if not 1.0 <= fps <= 120.0:
        raise BadInput(f"fps {fps} is outside 1..120")


def _check_inputs(task, image, output, weight_dtype) -> None:
    """A start image exactly for i2v; known output and weight-dtype choices."""
    if task == "i2v-A14B" and not image:
        raise BadInput("i2v-A14B needs a start image (--image)")
    if task == "t2v-A14B" and image:
        raise BadInput("--image is only used by i2v-A14B")
    if output not in OUTPUTS:
        raise BadInput(f"unknown output '{output}' (one of {', '.join(OUTPUTS)})")
    if weight_dtype not in WEIGHT_DTYPES:
        raise BadInput(f"unknown weight dtype '{weight_dtype}' (one of {', '.join(WEIGHT_DTYPES)})")


class _Graph:
    def __init__(self):
        self.nodes: dict[str, dict] = {}

    def add(self, class_type: str, title: str, **inputs) -> str:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}
        return node_id


def build_workflow(
    task: str = "t2v-A14B",
    *,
    loras_high: Sequence[tuple[str, float]] = (),
    loras_low: Sequence[tuple[str, float]] = (),
    prompt: str = "",
    negative: str = DEFAULT_NEGATIVE,
    width: int = DEFAULTS["width"],
    height: int = DEFAULTS["height"],
    frames: int = DEFAULTS["frames"],
    steps: int = DEFAULTS["steps"],
    split_step: int | None = None,
    cfg: float = DEFAULTS["cfg"],
    shift: float = DEFAULTS["shift"],
    seed: int = DEFAULTS["seed"],
    image: str | None = None,
    unet_high: str | None = None,
    unet_low: str | None = None,
    clip: str | None = None,
    vae: str | None = None,
    fps: float = DEFAULTS["fps"],
    output_prefix: str = DEFAULTS["output_prefix"],
    sampler: str = DEFAULTS["sampler"],
    scheduler: str = DEFAULTS["scheduler"],
    weight_dtype: str = "default",
    output: str = DEFAULTS["output"],
) -> dict[str, dict]:
    """The API-format prompt dict (what goes under "prompt" in POST /prompt)."""
    split = steps // 2 if split_step is None else split_step
    _check(task, width, height, frames, steps, split, cfg, shift, seed, fps, image, output, weight_dtype)
    names = DEFAULT_MODELS[task]
    g = _Graph()
    cond = _conditioning(g, task, prompt, negative, clip or names.clip, vae or names.vae, image,
                         (width, height, frames))
    model_high = _expert(g, "high", unet_high or names.unet_high, loras_high, weight_dtype, shift)
    model_low = _expert(g, "low", unet_low or names.unet_low, loras_low, weight_dtype, shift)
    sampling = dict(noise_seed=seed, steps=steps, cfg=float(cfg), sampler_name=sampler, scheduler=scheduler)
    latent = _sample(g, cond, model_high, model_low, split, sampling)
    images = [g.add("VAEDecode", "decode", samples=latent, vae=cond.vae), 0]
    _save(g, output, images, fps, output_prefix)
    return g.nodes


@dataclass(frozen=True)
class _Conditioning:
    """Links into the graph: the two prompts as the samplers take them, the starting latent, the VAE."""
    positive: list
    negative: list
    latent: list
    vae: list


def _conditioning(g: _Graph, task: str, prompt: str, negative: str, clip: str, vae: str, image: str | None,
                  shape: tuple[int, int, int]) -> _Conditioning:
    """Text encoder and prompts, VAE, and the starting latent: empty for t2v, from the start image for i2v."""
    width, height, frames = shape
    clip_id = g.add("CLIPLoader", "text encoder", clip_name=clip, type="wan")
    pos_id = g.add("CLIPTextEncode", "positive prompt", text=prompt, clip=[clip_id, 0])
    neg_id = g.add("CLIPTextEncode", "negative prompt", text=negative, clip=[clip_id, 0])
    vae_id = g.add("VAELoader", "VAE", vae_name=vae)
    if task == "i2v-A14B":
        img_id = g.add("LoadImage", "start image", image=image)
        cond_id = g.add(
            "WanImageToVideo", "image to video", positive=[pos_id, 0], negative=[neg_id, 0], vae=[vae_id, 0],
            width=width, height=height, length=frames, batch_size=1, start_image=[img_id, 0],
        )
        return _Conditioning([cond_id, 0], [cond_id, 1], [cond_id, 2], [vae_id, 0])
    lat_id = g.add("EmptyHunyuanLatentVideo", "empty latent", width=width, height=height, length=frames, batch_size=1)
    return _Conditioning([pos_id, 0], [neg_id, 0], [lat_id, 0], [vae_id, 0])


def _expert(g: _Graph, label: str, unet_name: str, loras: Sequence[tuple[str, float]], weight_dtype: str,
            shift: float) -> list:
    """One expert's model: the diffusion model, its LoRA chain, the sampling shift."""
    model = [g.add("UNETLoader", f"{label}-noise expert", unet_name=unet_name, weight_dtype=weight_dtype), 0]
    for i, (lora_name, strength) in enumerate(loras, 1):
        model = [g.add("LoraLoaderModelOnly", f"LoRA {label} {i}", model=model, lora_name=lora_name,
                       strength_model=float(strength)), 0]
    return [g.add("ModelSamplingSD3", f"shift {label}", model=model, shift=float(shift)), 0]


def _sample(g: _Graph, cond: _Conditioning, model_high: list, model_low: list, split: int,
            sampling: dict[str, Any]) -> list:
    """The high-noise expert denoises steps 0..split and hands its noisy latent to the low-noise expert."""
    common = dict(sampling, positive=cond.positive, negative=cond.negative)
    high_id = g.add("KSamplerAdvanced", f"sampler high (steps 0-{split})", model=model_high, add_noise="enable",
                    latent_image=cond.latent, start_at_step=0, end_at_step=split, return_with_leftover_noise="enable",
                    **common)
    # end_at_step=10000 is KSamplerAdvanced's own "until the end" value.
    low_id = g.add("KSamplerAdvanced", f"sampler low (steps {split}-{sampling['steps']})", model=model_low,
                   add_noise="disable", latent_image=[high_id, 0], start_at_step=split, end_at_step=10000,
                   return_with_leftover_noise="disable", **common)
    return [low_id, 0]


def _save(g: _Graph, output: str, images: list, fps: float, prefix: str) -> None:
    if output == "video":
        video_id = g.add("CreateVideo", "video", images=images, fps=float(fps))
        g.add("SaveVideo", "save", video=[video_id, 0], filename_prefix=prefix, format="auto", codec="auto")
    else:
        g.add("SaveAnimatedWEBP", "save", images=images, filename_prefix=prefix, fps=float(fps),
              lossless=False, quality=90, method="default")


def dumps(workflow: dict) -> str:
    """Canonical text of a workflow: same workflow, same bytes."""
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def links(workflow: dict) -> list[tuple[str, str, str, int]]:
    """Every link as (node id, input name, source node id, output slot)."""
    found = []
    for node_id, node in workflow.items():
        for name, value in node["inputs"].items():
            if _is_link(value):
                found.append((node_id, name, str(value[0]), int(value[1])))
    return found


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def loras_in(workflow: dict) -> dict[str, list[tuple[str, float]]]:
    """The LoRA chain on each expert, traced back from the samplers' model inputs (for reports)."""
    result: dict[str, list[tuple[str, float]]] = {"high": [], "low": []}
    for node in workflow.values():
        if node["class_type"] != "KSamplerAdvanced":
            continue
        expert = "high" if node["inputs"].get("add_noise") == "enable" else "low"
        chain = []
        ref = node["inputs"].get("model")
        while _is_link(ref) and ref[0] in workflow:
            upstream = workflow[ref[0]]
            if upstream["class_type"] == "LoraLoaderModelOnly":
                chain.append((upstream["inputs"]["lora_name"], upstream["inputs"]["strength_model"]))
            ref = upstream["inputs"].get("model")
        result[expert] = list(reversed(chain))
    return result
