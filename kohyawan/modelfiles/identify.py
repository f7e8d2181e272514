"""Turn a safetensors header into a ``ModelInfo``: what the file is, from tensor names and shapes only.

The rules follow what the loaders themselves look at: musubi-tuner reads the DiT dtype from
``blocks.0.cross_attn.k.weight`` and strips a ``model.diffusion_model.`` prefix; ComfyUI tells Wan 2.1
image models by ``img_emb``, the 2.2 VAE by its nested ``upsamples.N.upsamples`` blocks, and scaled fp8 by a
``scaled_fp8`` marker with per-layer ``scale_weight`` tensors (newer files: ``weight_scale`` +
``comfy_quant``, or ``_quantization_metadata``). Which width means which model, and every other WAN shape,
come from ``kohyawan.wan``. Design: docs/architecture.md.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import asdict, dataclass, field
from math import prod
from typing import Any, Mapping

from kohyawan import wan
from kohyawan.errors import ModelFileError
from kohyawan.modelfiles import hints, layouts, torchpickle
from kohyawan.modelfiles.header import Header, read_header, shown

DTYPE_NAMES = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F8_E4M3": "fp8_e4m3fn", "F8_E5M2": "fp8_e5m2",
               "F64": "fp64"}
COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_SCALE_SUFFIXES = (".scale_weight", ".scale_input", ".weight_scale", ".input_scale", ".comfy_quant")


@dataclass(frozen=True)
class ModelInfo:
    path: str
    kind: str                      # "dit" | "vae" | "t5" | "clip" | "lora" | "unknown"
    family: str | None = None      # "wan2.1" | "wan2.2" | None (unknown or ambiguous)
    size: str | None = None        # "14B" | "1.3B" | "5B"
    variant: str | None = None     # "t2v" | "i2v" | "flf2v" | "fun-control" | "ti2v" | other WAN add-ons
    dtype: str | None = None       # "bf16" | "fp16" | "fp32" | "fp8_e4m3fn" | "fp8_e5m2" | "fp8_scaled" | ...
    t5_format: str | None = None   # "wan" | "hf"
    vae_version: str | None = None  # "2.1" | "2.2"
    expert_hint: str | None = None  # "high" | "low" | None, from the name only
    params: int = 0
    tensors: int = 0
    file_size: int = 0
    key_prefix: str = ""           # e.g. "model.diffusion_model." for ComfyUI-saved checkpoints
    layout_ok: bool | None = None  # DiT/VAE/T5: names and shapes are exactly what the trainer loads
    arch: Mapping[str, int] = field(default_factory=dict)   # dim, layers, in_dim, out_dim, z_dim, rank, ...
    notes: tuple[str, ...] = ()
    file_format: str = "safetensors"  # or "torch-pickle" for .pth files read without unpickling

    @property
    def description(self) -> str:
        return describe(self)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch"] = dict(self.arch)
        d["notes"] = list(self.notes)
        d["description"] = self.description
        return d


def identify(path: os.PathLike | str) -> ModelInfo:
    """Identify one model file. Raises ModelFileError (one line) when it cannot be read as a model."""
    magic = _magic(path)
    if magic == b"PK\x03\x04":
        tensors = torchpickle.read_pth(path)
        return classify(os.fspath(path), {n: t.shape for n, t in tensors.items()},
                        {n: t.dtype for n, t in tensors.items()}, {}, file_size=os.stat(path).st_size,
                        file_format="torch-pickle")
    if magic == b"GGUF":
        raise ModelFileError(f"{shown(path)}: a GGUF file (a quantised model for ComfyUI-GGUF); musubi-tuner "
                             f"needs a safetensors checkpoint (bf16 or fp16)")
    if magic[:1] == b"\x80" and os.fspath(path).lower().endswith((".pth", ".pt", ".bin", ".ckpt")):
        raise ModelFileError(f"{shown(path)}: an old-style (non-zip) torch file, which kohyawan does not read "
                             f"because that would mean unpickling it; use the .safetensors version")
    return identify_header(read_header(path), os.fspath(path))


def _magic(path) -> bytes:
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            # a FIFO or device would block or never end: refuse before reading a byte
            raise ModelFileError(f"{shown(path)}: not a regular file")
        with open(path, "rb") as fh:
            return fh.read(4)
    except OSError:
        return b""  # read_header reports the real problem with one clear line


def identify_header(h: Header, path: str) -> ModelInfo:
    return classify(path, {n: t.shape for n, t in h.tensors.items()}, {n: t.dtype for n, t in h.tensors.items()},
                    dict(h.metadata), file_size=h.file_size)


_LORA_MARKS = (".lora_down.", ".lora_A.", ".lora_up.", ".lora_B.")
_CLIP_PREFIXES = ("visual.", "vision_model.", "log_scale", "textual.")
_WAN_T5_Q = "blocks.0.attn.q.weight"
_HF_T5_Q = "encoder.block.0.layer.0.SelfAttention.q.weight"


def classify(path: str, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str],
             metadata: Mapping[str, str], *, file_size: int = 0, file_format: str = "safetensors") -> ModelInfo:
    """Pure: names -> shapes and names -> safetensors dtype strings in, ModelInfo out."""
    params = sum(_numel(s) for s in shapes.values())
    base = dict(path=path, params=params, tensors=len(shapes), file_size=file_size, file_format=file_format)
    scaled = _is_scaled_fp8(shapes, metadata)
    names = set(shapes)
    if any(mark in n for n in names for mark in _LORA_MARKS):
        return _lora(shapes, dtypes, base)
    prefix = _dit_prefix(names)
    if prefix is not None:
        return _dit(path, prefix, shapes, dtypes, scaled, base)
    diffusers = next((n for n in names if n.endswith("blocks.0.attn1.to_q.weight")), None)
    if diffusers and any("condition_embedder." in n for n in names):
        return _diffusers_dit(path, diffusers, shapes, dtypes, scaled, base)
    if "decoder.middle.0.residual.0.gamma" in names and "conv2.weight" in names:
        return _vae(shapes, dtypes, base)
    t5 = _t5_kind(shapes, dtypes)
    if t5 is not None:
        return _t5(*t5, scaled, base)
    if any(n.startswith(_CLIP_PREFIXES) for n in names):
        return ModelInfo(kind="clip", dtype=_major_dtype(shapes, dtypes, scaled), family="wan2.1",
                         notes=("CLIP image encoder: only Wan 2.1 I2V/FLF2V tasks use it (--clip)",), **base)
    return ModelInfo(kind="unknown", dtype=_major_dtype(shapes, dtypes, scaled) if shapes else None,
                     notes=("no WAN DiT, VAE, T5, CLIP or LoRA tensor names found",), **base)


def _t5_kind(shapes, dtypes):
    """(shapes, dtypes, format, query key, embedding key) of a umT5 encoder in either layout, else None."""
    if "encoder." + _WAN_T5_Q in shapes:
        # musubi drops every "encoder." from Wan-format T5 keys before its strict load; so do we
        shapes = {n.replace("encoder.", ""): s for n, s in shapes.items()}
        dtypes = {n.replace("encoder.", ""): d for n, d in dtypes.items()}
    if "token_embedding.weight" in shapes and _WAN_T5_Q in shapes:
        return shapes, dtypes, "wan", _WAN_T5_Q, "token_embedding.weight"
    if _HF_T5_Q in shapes:
        emb = "shared.weight" if "shared.weight" in shapes else "encoder.embed_tokens.weight"
        return shapes, dtypes, "hf", _HF_T5_Q, emb
    return None


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def _dtype_name(st: str | None) -> str | None:
    return None if st is None else DTYPE_NAMES.get(st, st.lower())


def _is_scaled_fp8(shapes: Mapping[str, Any], metadata: Mapping[str, str]) -> bool:
    if "_quantization_metadata" in metadata:
        return True
    return any(n == "scaled_fp8" or n.endswith(".scaled_fp8") or n.endswith(_SCALE_SUFFIXES) for n in shapes)


def _major_dtype(shapes, dtypes, scaled: bool) -> str | None:
    if scaled:
        return "fp8_scaled"
    weight: dict[str, int] = {}
    for n, s in shapes.items():
        weight[dtypes[n]] = weight.get(dtypes[n], 0) + _numel(s)
    return _dtype_name(max(weight, key=weight.get)) if weight else None


def _dit_prefix(names: set[str]) -> str | None:
    for n in names:
        if n.endswith("blocks.0.self_attn.q.weight"):
            prefix = n[: -len("blocks.0.self_attn.q.weight")]
            if f"{prefix}patch_embedding.weight" in names or f"{prefix}head.modulation" in names or prefix in ("",) + COMFY_PREFIXES:
                return prefix
    return None


_ADDONS = {  # ComfyUI's WAN add-on models: not plain DiTs, musubi's strict load refuses them
    "vace_patch_embedding.weight": "vace", "control_adapter.conv.weight": "camera",
    "casual_audio_encoder.encoder.final_linear.weight": "s2v", "audio_proj.audio_proj_glob_1.layer.bias": "humo",
    "face_adapter.fuser_blocks.0.k_norm.weight": "animate",
}


def _dit(path, prefix, shapes, dtypes, scaled, base) -> ModelInfo:
    sd = {n[len(prefix):]: s for n, s in shapes.items() if n.startswith(prefix)}
    arch = _dit_arch(sd)
    size = wan.size_of_dim(arch["dim"])
    addon = next((v for k, v in _ADDONS.items() if k in sd), None)
    variant = addon or _dit_variant(sd, size, arch)
    notes: list[str] = []
    family = _dit_family(path, size, variant, "img_emb.proj.0.weight" in sd, addon, notes)
    if prefix:
        notes.append(f"ComfyUI-style key prefix '{prefix}' (musubi strips it when loading)")
    # dtype as musubi detects it: from one cross-attention weight
    dtype = "fp8_scaled" if scaled else _dtype_name(dtypes.get(f"{prefix}blocks.0.cross_attn.k.weight"))
    if scaled:
        notes.append("ComfyUI scaled-fp8 checkpoint (scale tensors beside fp8 weights)")
    expert, why = hints.expert_hint(path)
    if why:
        notes.append(why)
    if family == "wan2.1" or size in ("1.3B", "5B"):
        expert = None  # only Wan 2.2 A14B has experts
    layout_ok = None
    if size and variant in wan.IN_DIM and not addon:
        layout_ok, problem = _layout_check(sd, size, variant, family or "wan2.2", scaled)
        if problem:
            notes.append(problem)
    if re.search(r"-\d{5}-of-\d{5}\.", os.path.basename(path)):
        notes.append("one shard of a split checkpoint: musubi-tuner needs the whole model in one file")
    return ModelInfo(kind="dit", family=family, size=size, variant=variant, dtype=dtype, expert_hint=expert,
                     key_prefix=prefix, layout_ok=layout_ok, arch=arch, notes=tuple(notes), **base)


def _dit_arch(sd) -> dict[str, int]:
    """dim and layers, and in_dim/out_dim where the patch embedding and the head are there."""
    arch = {"dim": sd["blocks.0.self_attn.q.weight"][0],
            "layers": len({n.split(".")[1] for n in sd if n.startswith("blocks.") and n.split(".")[1].isdigit()})}
    pe = sd.get("patch_embedding.weight", ())
    if len(pe) > 1:
        arch["in_dim"] = pe[1]
    head = sd.get("head.head.weight", ())
    if head:
        arch["out_dim"] = head[0] // prod(wan.PATCH)
    return arch


# in_dim -> variant for the 14B and 1.3B models (FLF2V has I2V's in_dim; its img_emb.emb_pos tells it apart)
_VARIANT_OF_IN_DIM = {wan.IN_DIM[v]: v for v in ("t2v", "i2v", "fun-control")}


def _dit_variant(sd, size, arch) -> str | None:
    if size == "5B" or arch.get("out_dim") == wan.DITS["5B"].out_dim:
        return "ti2v"
    variant = _VARIANT_OF_IN_DIM.get(arch.get("in_dim"))
    if variant != "fun-control" and "img_emb.emb_pos" in sd:
        return "flf2v"
    return variant


def _dit_family(path, size, variant, has_img, addon, notes: list[str]) -> str | None:
    """What the weights' layout proves, else what the name says (with a note saying so)."""
    if (size and wan.families_of(size) == ("wan2.2",)) or (variant == "i2v" and not has_img) \
            or addon in ("s2v", "animate"):
        return "wan2.2"
    if has_img or (size and wan.families_of(size) == ("wan2.1",)):
        return "wan2.1"
    named = hints.family_hint(path)
    if named:
        other = "Wan 2.1 T2V 14B" if named == "wan2.2" else "the Wan 2.2 T2V experts"
        notes.append(f"{wan.FAMILY_NAMES[named]} by name (same layout as {other})")
    elif size == "14B" and variant == "t2v":
        notes.append("Wan 2.1 T2V 14B or a Wan 2.2 T2V expert: same layout, and the name does not say which")
    return named


def _diffusers_dit(path, qkey, shapes, dtypes, scaled, base) -> ModelInfo:
    dim = shapes[qkey][0]
    size = wan.size_of_dim(dim)
    expert, _ = hints.expert_hint(path)
    return ModelInfo(kind="dit", size=size, dtype="fp8_scaled" if scaled else _dtype_name(dtypes[qkey]),
                     family=hints.family_hint(path), expert_hint=expert, layout_ok=False, arch={"dim": dim},
                     notes=("differs from the layout musubi loads: Diffusers layout (blocks.N.attn1.to_q...); "
                            "use the original or ComfyUI-repackaged single-file checkpoint",), **base)


def _layout_check(sd, size, variant, family, scaled) -> tuple[bool, str | None]:
    try:
        want = dict(layouts.dit_layout(size, variant, family))
    except ValueError:
        return False, None
    have = {n: s for n, s in sd.items() if not (scaled and (n == "scaled_fp8" or n.endswith(_SCALE_SUFFIXES)))}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = sorted(n for n in set(want) & set(have) if tuple(want[n]) != tuple(have[n]))
    if not (missing or extra or wrong):
        return True, None
    parts = []
    for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)):
        if items:
            parts.append(f"{len(items)} {label} (e.g. {items[0]})")
    return False, "differs from the layout musubi loads: " + ", ".join(parts)


def _vae(shapes, dtypes, base) -> ModelInfo:
    z = shapes["conv2.weight"][0]
    nested = "decoder.upsamples.0.upsamples.0.residual.2.weight" in shapes
    version = "2.2" if (z == wan.VAES["2.2"].z_dim or nested) else "2.1" if z == wan.VAES["2.1"].z_dim else None
    notes = []
    layout_ok = None
    if version:
        layout_ok = {n: tuple(s) for n, s in shapes.items()} == dict(layouts.vae_layout(version))
        if not layout_ok:
            notes.append("tensor layout differs from the reference Wan VAE")
    if version == "2.2":
        notes.append("Wan 2.2 VAE: for the 5B model only; musubi's tasks use the Wan 2.1 VAE")
    return ModelInfo(kind="vae", family={"2.1": "wan2.1", "2.2": "wan2.2"}.get(version), vae_version=version,
                     dtype=_major_dtype(shapes, dtypes, False), layout_ok=layout_ok, arch={"z_dim": z},
                     notes=tuple(notes), **base)


def _t5(shapes, dtypes, fmt, qkey, emb, scaled, base) -> ModelInfo:
    vocab = shapes[emb][0] if emb in shapes else None
    dim = shapes[qkey][1]
    blocks = set()
    for n in shapes:
        parts = n.split(".")
        if parts[0] == "blocks" and len(parts) > 1:
            blocks.add(parts[1])
        elif parts[:2] == ["encoder", "block"] and len(parts) > 2:
            blocks.add(parts[2])
    layers = len(blocks)
    notes = []
    if vocab is not None and vocab != wan.UMT5.vocab:
        notes.append(f"vocabulary of {vocab} tokens: not umT5-XXL (WAN's text encoder has {wan.UMT5.vocab})")
    if fmt == "hf":
        notes.append("Hugging Face / ComfyUI layout: musubi's --t5 needs the Wan-format encoder")
    layout_ok = None
    if vocab == wan.UMT5.vocab:
        layout_ok = {n: tuple(s) for n, s in shapes.items() if not n.endswith(_SCALE_SUFFIXES) and n != "scaled_fp8"
                     and n != "spiece_model"} == dict(layouts.t5_layout(fmt))
    arch = {"dim": dim, "layers": layers}
    if vocab:
        arch["vocab"] = vocab
    return ModelInfo(kind="t5", t5_format=fmt, dtype="fp8_scaled" if scaled else _dtype_name(dtypes[qkey]),
                     layout_ok=layout_ok, arch=arch, notes=tuple(notes), **base)


def _lora(shapes, dtypes, base) -> ModelInfo:
    downs = {n: s for n, s in shapes.items() if ".lora_down." in n or ".lora_A." in n}
    rank = max((s[0] for s in downs.values()), default=0)
    dims = [s[1] for n, s in downs.items() if "self_attn_q" in n or "self_attn.q" in n]
    size = wan.size_of_dim(dims[0]) if dims else None
    variant = "i2v" if any("k_img" in n for n in downs) else None
    notes = [f"{len(downs)} modules"]
    if variant:
        notes.append("has k_img/v_img modules: trained on Wan 2.1 I2V")
    return ModelInfo(kind="lora", size=size, variant=variant, family="wan2.1" if variant else None,
                     dtype=_major_dtype(shapes, dtypes, False), arch={"rank": rank, "modules": len(downs)},
                     notes=tuple(notes), **base)


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def describe(i: ModelInfo) -> str:
    fam = wan.FAMILY_NAMES.get(i.family or "", "Wan 2.1/2.2?")
    if i.kind == "dit":
        var = wan.VARIANT_NAMES.get(i.variant or "", i.variant or "unknown variant")
        size = "A14B" if i.family == "wan2.2" and i.size == "14B" else (i.size or "unknown-size")
        text = f"{fam} {var} {size} DiT"
        if i.expert_hint:
            text += f" ({i.expert_hint}-noise expert by name)"
    elif i.kind == "vae":
        text = f"Wan {i.vae_version or '?'} VAE (z_dim {i.arch.get('z_dim')})"
    elif i.kind == "t5":
        umt5 = i.arch.get("vocab", wan.UMT5.vocab) == wan.UMT5.vocab
        text = f"{'umT5-XXL' if umt5 else 'T5'} text encoder, {'Wan' if i.t5_format == 'wan' else 'Hugging Face'} format"
    elif i.kind == "lora":
        text = f"LoRA rank {i.arch.get('rank')} for {i.size or 'unknown-size'} WAN"
    elif i.kind == "clip":
        text = "CLIP image encoder (Wan 2.1 I2V)"
    else:
        text = "not a recognised WAN model file"
    if i.dtype:
        text += f", {i.dtype}"
    if i.params:
        text += f", {_human(i.params)} parameters"
    return text
