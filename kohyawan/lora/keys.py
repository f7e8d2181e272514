"""What a WAN LoRA's keys mean: musubi-tuner's names, the model's weight shapes, ComfyUI's loading rules.

Pure data and functions (no I/O, no torch). Sources of truth, checked by reading their code:
- musubi-tuner ``networks/lora_wan.py`` wraps every ``nn.Linear`` inside ``WanAttentionBlock`` and names it
  ``lora_unet_`` + the module path with dots replaced by underscores; each module saves
  ``.lora_down.weight`` [rank, in], ``.lora_up.weight`` [out, rank] and a scalar ``.alpha``.
- ComfyUI builds its key map from the model's state dict: every parameter ``P.weight`` is reachable as
  ``lora_unet_<P with _>`` and ``diffusion_model.<P>``; a parameter without ``.weight`` only as
  ``diffusion_model.<name>``. Keys outside the map are logged "lora key not loaded" and dropped; a key
  in the map whose matrices do not fit the weight is logged as an ERROR and dropped.
- Wan 2.1 image models (i2v-14B, flf2v-14B, Fun-Control) have ``cross_attn.k_img/v_img``; Wan 2.2
  A14B models (t2v and i2v) do not, so those keys are dropped on them.
Model shapes and which model a task trains come from ``kohyawan.wan``. Design: docs/architecture.md.
"""

from __future__ import annotations

import re
from functools import lru_cache

from kohyawan import wan
from kohyawan.modelfiles.layouts import dit_layout


# The model shapes and the tasks' models come from kohyawan.wan; these names are this module's interface.
ModelSize = wan.Dit            # name, dim, ffn_dim, layers, out_dim
SIZES = wan.DITS               # "14B", "1.3B" and (no musubi task, known so a 5B LoRA is named) "5B"
TaskModel = wan.TaskModel      # task, size, version, image_attn (cross_attn.k_img / v_img exist), in_dim, ...
TASK_MODELS = wan.TASKS
TASKS = tuple(TASK_MODELS)
block_linears = wan.block_linears  # (size, image_attn) -> [(path inside a block, (out, in))]


def lora_modules(task: str) -> list[tuple[str, tuple[int, int]]]:
    """Every module path musubi-tuner trains for ``task``, with its weight's (out, in), in block order:
    musubi puts a LoRA on every Linear of every DiT block."""
    tm = TASK_MODELS[task]
    return [(f"blocks.{i}.{p}", shape) for i in range(tm.dit.layers)
            for p, shape in block_linears(tm.dit, tm.image_attn)]


@lru_cache(maxsize=None)
def model_params(task: str) -> dict[str, tuple[int, ...]]:
    """The DiT's parameters for ``task`` (name -> shape), as ComfyUI's WAN model holds them (the same names
    and shapes musubi-tuner loads)."""
    tm = TASK_MODELS[task]
    return dict(dit_layout(tm.size, tm.variant, tm.family))


@lru_cache(maxsize=None)
def comfy_key_map(task: str) -> dict[str, str]:
    """ComfyUI's LoRA target names for this model -> the parameter each one patches."""
    key_map: dict[str, str] = {}
    for name in model_params(task):
        if name.endswith(".weight"):
            path = name[: -len(".weight")]
            key_map["lora_unet_" + path.replace(".", "_")] = name
            key_map["diffusion_model." + path] = name
        else:
            key_map["diffusion_model." + name] = name
    return key_map


# Suffixes ComfyUI's loader consumes for one target, grouped by what they carry.
LORA_PAIRS = {  # up name -> down name (ComfyUI's spellings; musubi writes the first)
    "lora_up.weight": "lora_down.weight",
    "lora_B.weight": "lora_A.weight",
    "lora.up.weight": "lora.down.weight",
    "lora_B": "lora_A",
    "lora_linear_layer.up.weight": "lora_linear_layer.down.weight",
    "lora_B.default.weight": "lora_A.default.weight",
}
SCALAR_SUFFIXES = ("alpha", "dora_scale")
DIFF_SUFFIXES = ("diff", "diff_b", "set_weight", "w_norm", "b_norm")
# LyCORIS adapters ComfyUI also loads (shapes not checked by kohyawan).
OTHER_ADAPTER_SUFFIXES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
                          "lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
                          "lora_mid.weight", "reshape_weight")
ALL_SUFFIXES = tuple(LORA_PAIRS) + tuple(LORA_PAIRS.values()) + SCALAR_SUFFIXES + DIFF_SUFFIXES + OTHER_ADAPTER_SUFFIXES
# longest first so "lora_B.default.weight" wins over "lora_B"
_SUFFIXES_BY_LEN = sorted(ALL_SUFFIXES, key=len, reverse=True)


def split_key(key: str) -> tuple[str, str]:
    """'lora_unet_blocks_0_ffn_0.lora_up.weight' -> ('lora_unet_blocks_0_ffn_0', 'lora_up.weight')."""
    for suffix in _SUFFIXES_BY_LEN:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    target, _, suffix = key.rpartition(".")
    return target, suffix


def comfy_prepare(keys: list[str]) -> dict[str, str]:
    """ComfyUI's own renaming before loading (comfy/lora_convert.py): original key -> key it loads as.

    Only one rule applies to WAN: VideoX-Fun LoRAs spell the prefix ``lora_unet__`` (double underscore).
    """
    if "lora_unet__blocks_0_cross_attn_k.lora_down.weight" in keys:
        return {k: ("lora_unet_" + k[len("lora_unet__"):] if k.startswith("lora_unet__") else k) for k in keys}
    return {k: k for k in keys}


# ---- naming families and module paths


FAMILY_PREFIXES = (  # prefix -> family name; order matters ("model.diffusion_model." before "diffusion_model.")
    ("lora_unet__", "videox-fun"),
    ("lora_unet_", "musubi"),
    ("model.diffusion_model.", "model.diffusion_model"),
    ("diffusion_model.", "diffusion_model"),
    ("base_model.model.", "peft"),
    ("lora_transformer_", "lora_transformer"),
    ("transformer.", "diffusers"),
    ("blocks.", "bare"),
)
LOADED_FAMILIES = ("musubi", "diffusion_model", "videox-fun")

_UNDERSCORE_MODULE = re.compile(
    r"^blocks_(\d+)_(self_attn|cross_attn)_(q|k|v|o|k_img|v_img)$|^blocks_(\d+)_ffn_(0|2)$"
    r"|^(text_embedding|time_embedding)_(0|2)$|^time_projection_1$|^head_head$|^img_emb_proj_(1|3)$"
)


def family_of(key: str) -> str:
    for prefix, family in FAMILY_PREFIXES:
        if key.startswith(prefix):
            return family
    return "unknown"


def module_path(target: str) -> str | None:
    """The dotted module path a LoRA target names, for any family kohyawan can rename; None if unknown.

    'lora_unet_blocks_3_cross_attn_k_img' -> 'blocks.3.cross_attn.k_img';
    'diffusion_model.blocks.3.ffn.0' -> 'blocks.3.ffn.0'.
    """
    family = family_of(target)
    if family in ("musubi", "videox-fun"):
        rest = target[len("lora_unet__") if family == "videox-fun" else len("lora_unet_"):]
        if not _UNDERSCORE_MODULE.match(rest):
            return None
        m = re.match(r"^blocks_(\d+)_(self_attn|cross_attn|ffn)_(.+)$", rest)
        if m:
            return f"blocks.{m.group(1)}.{m.group(2)}.{m.group(3)}"
        for dotted in ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
                       "time_projection.1", "head.head", "img_emb.proj.1", "img_emb.proj.3"):
            if dotted.replace(".", "_") == rest:
                return dotted
        return None  # pragma: no cover - the regex and the list agree
    for prefix, fam in FAMILY_PREFIXES:
        if fam == family and fam not in ("lora_transformer",):
            rest = target[len(prefix):] if fam != "bare" else target
            if fam == "diffusers" and rest.startswith("blocks.") is False:
                return None
            return rest if _UNDERSCORE_MODULE.match(rest.replace(".", "_")) else None
    return None


def musubi_name(path: str) -> str:
    return "lora_unet_" + path.replace(".", "_")


def comfy_name(path: str) -> str:
    return "diffusion_model." + path


# ---- sizes


def expected_bytes(task: str, rank: int, dtype_size: int) -> int:
    """Tensor bytes of a full musubi LoRA for ``task`` at ``rank`` (down + up + alpha per module)."""
    total = 0
    for _path, (out, inp) in lora_modules(task):
        total += (rank * inp + out * rank + 1) * dtype_size
    return total


def group_targets(names: list[str]) -> dict[str, dict[str, str]]:
    """Keys grouped by LoRA target: {target: {suffix: key}}."""
    groups: dict[str, dict[str, str]] = {}
    for name in names:
        target, suffix = split_key(name)
        groups.setdefault(target, {})[suffix] = name
    return groups


def lora_pair(suffixes: dict[str, str]) -> tuple[str, str] | None:
    """(up key, down key) of a target if it holds a plain LoRA pair in any spelling ComfyUI reads."""
    for up, down in LORA_PAIRS.items():
        if up in suffixes and down in suffixes:
            return suffixes[up], suffixes[down]
    return None
