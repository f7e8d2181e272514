"""Tensor layouts of the WAN model files musubi-tuner loads: names and shapes, nothing else.

Built from the architecture facts in ``kohyawan.wan`` for two users: ``kohyawan.modelfiles.standins``
writes sparse files with these headers, and ``check`` compares a user's DiT against the layout the trainer
will ``load_state_dict(strict=True)``. Each layout was checked against the real module definitions
instantiated on torch's meta device; the tests pin tensor counts, parameter counts and a digest of every
name and shape. Design: docs/architecture.md.
"""

from __future__ import annotations

from kohyawan import wan

Layout = list[tuple[str, tuple[int, ...]]]


def _linear(name: str, out_f: int, in_f: int, bias: bool = True) -> Layout:
    items = [(f"{name}.weight", (out_f, in_f))]
    if bias:
        items.append((f"{name}.bias", (out_f,)))
    return items


def _norm(name: str, ch: int) -> Layout:
    return [(f"{name}.weight", (ch,)), (f"{name}.bias", (ch,))]


def _check_dit(size: str, variant: str, family: str) -> None:
    if size not in wan.DITS:
        raise ValueError(f"unknown DiT size {size!r}; expected one of {', '.join(wan.DITS)}")
    if variant not in wan.IN_DIM:
        raise ValueError(f"unknown DiT variant {variant!r}; expected one of {', '.join(wan.IN_DIM)}")
    if family not in wan.RELEASES:
        raise ValueError(f"unknown family {family!r}; expected {' or '.join(wan.RELEASES)}")
    if variant not in wan.RELEASES[family].get(size, ()):
        have = "; ".join(f"{s}: {', '.join(v)}" for s, v in wan.RELEASES[family].items())
        raise ValueError(f"there is no {wan.FAMILY_NAMES[family]} {size} {variant} DiT ({family} has {have})")


def _block(i: int, dit: wan.Dit, image_attn: bool) -> Layout:
    b, d = f"blocks.{i}", dit.dim
    out: Layout = [(f"{b}.modulation", (1, 6, d))]
    linears = dict(wan.block_linears(dit, image_attn))
    for attn in ("self_attn", "cross_attn"):
        if attn == "cross_attn":
            out += _norm(f"{b}.norm3", d)
        for p in ("q", "k", "v", "o"):
            out += _linear(f"{b}.{attn}.{p}", *linears[f"{attn}.{p}"])
        out += [(f"{b}.{attn}.norm_q.weight", (d,)), (f"{b}.{attn}.norm_k.weight", (d,))]
    if image_attn:
        out += _linear(f"{b}.cross_attn.k_img", d, d) + _linear(f"{b}.cross_attn.v_img", d, d)
        out.append((f"{b}.cross_attn.norm_k_img.weight", (d,)))
    return out + _linear(f"{b}.ffn.0", *linears["ffn.0"]) + _linear(f"{b}.ffn.2", *linears["ffn.2"])


def _img_emb(dim: int, flf: bool) -> Layout:
    c = wan.CLIP_DIM
    out: Layout = [("img_emb.emb_pos", (1, 2 * wan.CLIP_TOKENS, c))] if flf else []
    out += _norm("img_emb.proj.0", c) + _linear("img_emb.proj.1", c, c) + _linear("img_emb.proj.3", dim, c)
    return out + _norm("img_emb.proj.4", dim)


def dit_layout(size: str = "14B", variant: str = "t2v", family: str = "wan2.2") -> Layout:
    """The state dict of a WAN DiT as saved without a prefix (musubi strips ``model.diffusion_model.``)."""
    _check_dit(size, variant, family)
    dit = wan.DITS[size]
    d = dit.dim
    image_attn = wan.has_image_attn(family, variant)
    out: Layout = [("patch_embedding.weight", (d, wan.IN_DIM[variant], *wan.PATCH)), ("patch_embedding.bias", (d,))]
    out += _linear("text_embedding.0", d, wan.UMT5.dim) + _linear("text_embedding.2", d, d)
    out += _linear("time_embedding.0", d, wan.FREQ_DIM) + _linear("time_embedding.2", d, d)
    out += _linear("time_projection.1", 6 * d, d)
    for i in range(dit.layers):
        out += _block(i, dit, image_attn)
    out += [("head.modulation", (1, 2, d))] + _linear("head.head", dit.head_out, d)
    if image_attn:
        out += _img_emb(d, flf=variant == "flf2v")
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
    if version not in wan.VAES:
        raise ValueError(f"unknown VAE version {version!r}; expected {' or '.join(wan.VAES)}")
    vae = wan.VAES[version]
    # The Wan 2.1 VAE numbers its stages' blocks in one flat list; the Wan 2.2 VAE nests them per stage
    # (``downsamples.<stage>.downsamples.<block>``), and its decoder keeps the channels across upsamples.
    nested = version == "2.2"
    mult = [1, 2, 4, 4]
    temporal = [False, True, True]
    dims = [vae.dim * m for m in [1] + mult]
    ddims = [vae.dec_dim * m for m in [mult[-1]] + mult[::-1]]
    z, top = vae.z_dim, dims[-1]
    out = _conv3("encoder.conv1", dims[0], vae.pixel_channels)
    out += _stages("encoder.downsamples", dims, 2, temporal, nested=nested, up=False)
    out += _middle("encoder.middle", top) + _rms("encoder.head.0", top) + _conv3("encoder.head.2", 2 * z, top)
    out += _conv3("conv1", 2 * z, 2 * z, (1, 1, 1)) + _conv3("conv2", z, z, (1, 1, 1))
    out += _conv3("decoder.conv1", ddims[0], z) + _middle("decoder.middle", ddims[0])
    out += _stages("decoder.upsamples", ddims, 3, temporal[::-1], nested=nested, up=True)
    return out + _rms("decoder.head.0", ddims[-1]) + _conv3("decoder.head.2", vae.pixel_channels, ddims[-1])


def _stages(prefix: str, dims: list[int], blocks: int, temporal: list[bool], *, nested: bool, up: bool) -> Layout:
    """Residual blocks per stage, then a resampler between stages (none after the last)."""
    out: Layout = []
    halve = up and not nested  # the Wan 2.1 decoder's spatial upsamplers halve the channels they hand on
    kind = prefix.rsplit(".", 1)[1]
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        first = i * (blocks + 1)
        names = [f"{prefix}.{i}.{kind}.{j}" if nested else f"{prefix}.{first + j}" for j in range(blocks + 1)]
        if halve and i > 0:
            a //= 2
        for name in names[:blocks]:
            out += _resblock(name, a, b)
            a = b
        if i != len(dims) - 2:
            out += _resample(names[blocks], b, b // 2 if halve else b, temporal[i], up=up)
    return out


# ---- T5 --------------------------------------------------------------------------------------------

def t5_layout(fmt: str = "wan") -> Layout:
    """umT5-XXL encoder: Wan's own layout (what musubi's ``--t5`` loads strictly) or the Hugging Face one."""
    t5 = wan.UMT5
    d, f, rel = t5.dim, t5.ffn_dim, (t5.buckets, t5.heads)
    if fmt == "wan":
        out: Layout = [("token_embedding.weight", (t5.vocab, d))]
        for i in range(t5.layers):
            b = f"blocks.{i}"
            out.append((f"{b}.norm1.weight", (d,)))
            out += [(f"{b}.attn.{p}.weight", (d, d)) for p in "qkvo"]
            out.append((f"{b}.norm2.weight", (d,)))
            out += [(f"{b}.ffn.gate.0.weight", (f, d)), (f"{b}.ffn.fc1.weight", (f, d)), (f"{b}.ffn.fc2.weight", (d, f))]
            out.append((f"{b}.pos_embedding.embedding.weight", rel))  # one relative-position table per layer
        out.append(("norm.weight", (d,)))
        return out
    if fmt == "hf":
        out = [("shared.weight", (t5.vocab, d))]
        for i in range(t5.layers):
            b = f"encoder.block.{i}.layer"
            out += [(f"{b}.0.SelfAttention.{p}.weight", (d, d)) for p in "qkvo"]
            out.append((f"{b}.0.SelfAttention.relative_attention_bias.weight", rel))
            out.append((f"{b}.0.layer_norm.weight", (d,)))
            out += [(f"{b}.1.DenseReluDense.wi_0.weight", (f, d)), (f"{b}.1.DenseReluDense.wi_1.weight", (f, d)),
                    (f"{b}.1.DenseReluDense.wo.weight", (d, f))]
            out.append((f"{b}.1.layer_norm.weight", (d,)))
        out.append(("encoder.final_layer_norm.weight", (d,)))
        return out
    raise ValueError(f"unknown T5 format {fmt!r}; expected 'wan' or 'hf'")
