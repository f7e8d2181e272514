"""Tensor layouts of the WAN model files musubi-tuner loads: names and shapes, nothing else.

One source of truth for two users: ``kohyawan.modelfiles.standins`` writes sparse files with these headers, and
``check`` compares a user's DiT against the layout the trainer will ``load_state_dict(strict=True)``.
The numbers are the model configurations of musubi-tuner's ``wan/configs`` (and, for the 5B model and the
Wan 2.2 VAE, which musubi does not train, the upstream Wan 2.2 architecture as ComfyUI loads it).
Each layout was checked against the real module definitions instantiated on torch's meta device; the
tests pin tensor counts, parameter counts and a digest of every name and shape.
"""

from __future__ import annotations

from dataclasses import dataclass

Layout = list[tuple[str, tuple[int, ...]]]


@dataclass(frozen=True)
class DitShape:
    size: str
    dim: int
    ffn_dim: int
    num_layers: int
    out_dim: int


DIT_SHAPES = {
    "14B": DitShape("14B", 5120, 13824, 40, 16),
    "1.3B": DitShape("1.3B", 1536, 8960, 30, 16),
    "5B": DitShape("5B", 3072, 14336, 30, 48),  # Wan 2.2 TI2V: 48-channel latents of the Wan 2.2 VAE
}

# in_dim (channels into patch_embedding) by variant: latents, plus mask + image latents for I2V/FLF2V,
# plus control latents for Fun-Control.
IN_DIM = {"t2v": 16, "i2v": 36, "flf2v": 36, "fun-control": 48, "ti2v": 48}

TEXT_DIM = 4096  # umT5-XXL
FREQ_DIM = 256
CLIP_DIM = 1280  # open-clip ViT-H image features (Wan 2.1 I2V/FLF2V only)
FLF_TOKENS = 257 * 2


def _linear(name: str, out_f: int, in_f: int, bias: bool = True) -> Layout:
    items = [(f"{name}.weight", (out_f, in_f))]
    if bias:
        items.append((f"{name}.bias", (out_f,)))
    return items


def dit_layout(size: str = "14B", variant: str = "t2v", family: str = "wan2.2") -> Layout:
    """The state dict of a WAN DiT as saved without a prefix (musubi strips ``model.diffusion_model.``)."""
    if size not in DIT_SHAPES:
        raise ValueError(f"unknown DiT size {size!r}; expected one of {', '.join(DIT_SHAPES)}")
    if variant not in IN_DIM:
        raise ValueError(f"unknown DiT variant {variant!r}; expected one of {', '.join(IN_DIM)}")
    if family not in ("wan2.1", "wan2.2"):
        raise ValueError(f"unknown family {family!r}; expected wan2.1 or wan2.2")
    if size == "5B" and (family != "wan2.2" or variant != "ti2v"):
        raise ValueError("the 5B DiT exists only as Wan 2.2 TI2V (variant 'ti2v')")
    if variant == "ti2v" and size != "5B":
        raise ValueError("variant 'ti2v' is the Wan 2.2 5B model only")
    if family == "wan2.2" and variant in ("flf2v", "fun-control"):
        raise ValueError(f"there is no Wan 2.2 {variant} DiT in this layout table")
    if family == "wan2.2" and size == "1.3B":
        raise ValueError("there is no Wan 2.2 1.3B DiT")
    s = DIT_SHAPES[size]
    d = s.dim
    # Wan 2.1 image-conditioned models cross-attend to CLIP image tokens; Wan 2.2 I2V dropped CLIP.
    clip_branch = family == "wan2.1" and variant in ("i2v", "flf2v", "fun-control")
    out: Layout = [("patch_embedding.weight", (d, IN_DIM[variant], 1, 2, 2)), ("patch_embedding.bias", (d,))]
    out += _linear("text_embedding.0", d, TEXT_DIM) + _linear("text_embedding.2", d, d)
    out += _linear("time_embedding.0", d, FREQ_DIM) + _linear("time_embedding.2", d, d)
    out += _linear("time_projection.1", 6 * d, d)
    for i in range(s.num_layers):
        b = f"blocks.{i}"
        out.append((f"{b}.modulation", (1, 6, d)))
        for attn in ("self_attn", "cross_attn"):
            if attn == "cross_attn":
                out += [(f"{b}.norm3.weight", (d,)), (f"{b}.norm3.bias", (d,))]
            for p in ("q", "k", "v", "o"):
                out += _linear(f"{b}.{attn}.{p}", d, d)
            out += [(f"{b}.{attn}.norm_q.weight", (d,)), (f"{b}.{attn}.norm_k.weight", (d,))]
        if clip_branch:
            out += _linear(f"{b}.cross_attn.k_img", d, d) + _linear(f"{b}.cross_attn.v_img", d, d)
            out.append((f"{b}.cross_attn.norm_k_img.weight", (d,)))
        out += _linear(f"{b}.ffn.0", s.ffn_dim, d) + _linear(f"{b}.ffn.2", d, s.ffn_dim)
    out += [("head.modulation", (1, 2, d))] + _linear("head.head", 4 * s.out_dim, d)
    if clip_branch:
        if variant == "flf2v":
            out.append(("img_emb.emb_pos", (1, FLF_TOKENS, CLIP_DIM)))
        out += [("img_emb.proj.0.weight", (CLIP_DIM,)), ("img_emb.proj.0.bias", (CLIP_DIM,))]
        out += _linear("img_emb.proj.1", CLIP_DIM, CLIP_DIM) + _linear("img_emb.proj.3", d, CLIP_DIM)
        out += [("img_emb.proj.4.weight", (d,)), ("img_emb.proj.4.bias", (d,))]
    return out


# ---- VAE -------------------------------------------------------------------------------------------

def _rms(name: str, ch: int, images: bool = False) -> Layout:
    return [(f"{name}.gamma", (ch, 1, 1) if images else (ch, 1, 1, 1))]


def _conv3(name: str, out_c: int, in_c: int, k=(3, 3, 3)) -> Layout:
    return [(f"{name}.weight", (out_c, in_c, *k)), (f"{name}.bias", (out_c,))]


def _resblock(name: str, in_c: int, out_c: int) -> Layout:
    out = _rms(f"{name}.residual.0", in_c) + _conv3(f"{name}.residual.2", out_c, in_c)
    out += _rms(f"{name}.residual.3", out_c) + _conv3(f"{name}.residual.6", out_c, out_c)
    if in_c != out_c:
        out += _conv3(f"{name}.shortcut", out_c, in_c, (1, 1, 1))
    return out


def _attn(name: str, ch: int) -> Layout:
    return (_rms(f"{name}.norm", ch, images=True) + _conv3(f"{name}.to_qkv", 3 * ch, ch, (1, 1))
            + _conv3(f"{name}.proj", ch, ch, (1, 1)))


def _resample(name: str, in_c: int, out_c: int, temporal: bool, up: bool) -> Layout:
    out = _conv3(f"{name}.resample.1", out_c, in_c, (3, 3))
    if temporal:
        # the temporal upsampler doubles channels and splits them into two frames
        out += _conv3(f"{name}.time_conv", 2 * in_c if up else in_c, in_c, (3, 1, 1))
    return out


def _middle(name: str, ch: int) -> Layout:
    return _resblock(f"{name}.0", ch, ch) + _attn(f"{name}.1", ch) + _resblock(f"{name}.2", ch, ch)


def vae_layout(version: str = "2.1") -> Layout:
    """Wan 2.1 VAE (z_dim 16, what every 14B task uses) or Wan 2.2 VAE (z_dim 48, the 5B model's)."""
    if version == "2.1":
        return _vae21()
    if version == "2.2":
        return _vae22()
    raise ValueError(f"unknown VAE version {version!r}; expected 2.1 or 2.2")


def _vae21(dim: int = 96, z: int = 16) -> Layout:
    mult = [1, 2, 4, 4]
    temporal_down = [False, True, True]
    dims = [dim * m for m in [1] + mult]
    out = _conv3("encoder.conv1", dims[0], 3)
    idx = 0
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(2):
            out += _resblock(f"encoder.downsamples.{idx}", a, b)
            a = b
            idx += 1
        if i != len(mult) - 1:
            out += _resample(f"encoder.downsamples.{idx}", b, b, temporal_down[i], up=False)
            idx += 1
    out += _middle("encoder.middle", dims[-1])
    out += _rms("encoder.head.0", dims[-1]) + _conv3("encoder.head.2", 2 * z, dims[-1])
    out += _conv3("conv1", 2 * z, 2 * z, (1, 1, 1)) + _conv3("conv2", z, z, (1, 1, 1))
    ddims = [dim * m for m in [mult[-1]] + mult[::-1]]
    temporal_up = temporal_down[::-1]
    out += _conv3("decoder.conv1", ddims[0], z)
    out += _middle("decoder.middle", ddims[0])
    idx = 0
    for i, (a, b) in enumerate(zip(ddims[:-1], ddims[1:])):
        if i in (1, 2, 3):
            a = a // 2  # each spatial upsample halves the channels it hands on
        for _ in range(3):
            out += _resblock(f"decoder.upsamples.{idx}", a, b)
            a = b
            idx += 1
        if i != len(mult) - 1:
            out += _resample(f"decoder.upsamples.{idx}", b, b // 2, temporal_up[i], up=True)
            idx += 1
    out += _rms("decoder.head.0", ddims[-1]) + _conv3("decoder.head.2", 3, ddims[-1])
    return out


def _vae22(dim: int = 160, dec_dim: int = 256, z: int = 48) -> Layout:
    mult = [1, 2, 4, 4]
    temporal_down = [False, True, True]
    dims = [dim * m for m in [1] + mult]
    # 2x2 pixel patches: 12 = 3 colours x 4
    out = _conv3("encoder.conv1", dims[0], 12)
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        name = f"encoder.downsamples.{i}.downsamples"
        for j in range(2):
            out += _resblock(f"{name}.{j}", a, b)
            a = b
        if i != len(mult) - 1:
            out += _resample(f"{name}.2", b, b, temporal_down[i], up=False)
    out += _middle("encoder.middle", dims[-1])
    out += _rms("encoder.head.0", dims[-1]) + _conv3("encoder.head.2", 2 * z, dims[-1])
    out += _conv3("conv1", 2 * z, 2 * z, (1, 1, 1)) + _conv3("conv2", z, z, (1, 1, 1))
    ddims = [dec_dim * m for m in [mult[-1]] + mult[::-1]]
    temporal_up = temporal_down[::-1]
    out += _conv3("decoder.conv1", ddims[0], z)
    out += _middle("decoder.middle", ddims[0])
    for i, (a, b) in enumerate(zip(ddims[:-1], ddims[1:])):
        name = f"decoder.upsamples.{i}.upsamples"
        for j in range(3):
            out += _resblock(f"{name}.{j}", a, b)
            a = b
        if i != len(mult) - 1:
            out += _resample(f"{name}.3", b, b, temporal_up[i], up=True)
    out += _rms("decoder.head.0", ddims[-1]) + _conv3("decoder.head.2", 12, ddims[-1])
    return out


# ---- T5 --------------------------------------------------------------------------------------------

T5_VOCAB, T5_DIM, T5_FFN, T5_HEADS, T5_LAYERS, T5_BUCKETS = 256384, 4096, 10240, 64, 24, 32


def t5_layout(fmt: str = "wan") -> Layout:
    """umT5-XXL encoder: Wan's own layout (what musubi's ``--t5`` loads strictly) or the Hugging Face one."""
    d, f = T5_DIM, T5_FFN
    if fmt == "wan":
        out: Layout = [("token_embedding.weight", (T5_VOCAB, d))]
        for i in range(T5_LAYERS):
            b = f"blocks.{i}"
            out.append((f"{b}.norm1.weight", (d,)))
            out += [(f"{b}.attn.{p}.weight", (d, d)) for p in "qkvo"]
            out.append((f"{b}.norm2.weight", (d,)))
            out += [(f"{b}.ffn.gate.0.weight", (f, d)), (f"{b}.ffn.fc1.weight", (f, d)), (f"{b}.ffn.fc2.weight", (d, f))]
            # umT5 keeps one relative-position table per layer (no sharing)
            out.append((f"{b}.pos_embedding.embedding.weight", (T5_BUCKETS, T5_HEADS)))
        out.append(("norm.weight", (d,)))
        return out
    if fmt == "hf":
        out = [("shared.weight", (T5_VOCAB, d))]
        for i in range(T5_LAYERS):
            b = f"encoder.block.{i}.layer"
            out += [(f"{b}.0.SelfAttention.{p}.weight", (d, d)) for p in "qkvo"]
            out.append((f"{b}.0.SelfAttention.relative_attention_bias.weight", (T5_BUCKETS, T5_HEADS)))
            out.append((f"{b}.0.layer_norm.weight", (d,)))
            out += [(f"{b}.1.DenseReluDense.wi_0.weight", (f, d)), (f"{b}.1.DenseReluDense.wi_1.weight", (f, d)),
                    (f"{b}.1.DenseReluDense.wo.weight", (d, f))]
            out.append((f"{b}.1.layer_norm.weight", (d,)))
        out.append(("encoder.final_layer_norm.weight", (d,)))
        return out
    raise ValueError(f"unknown T5 format {fmt!r}; expected 'wan' or 'hf'")
