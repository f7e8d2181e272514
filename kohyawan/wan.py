"""The WAN releases' architectures, and which model each musubi-tuner task trains: one home for each fact.

Pure data and tiny pure helpers (no I/O, only the standard library). Every other table of WAN shapes derives
from this module: the tensor layouts (``modelfiles.layouts``), what a header says a file is
(``modelfiles.identify``), a LoRA's modules and ComfyUI's key map (``lora.keys``), the memory model
(``estimate.memory``), the simulated trainer (``rehearse.model``) and musubi-tuner's per-task limits
(``trainer.musubi``). Sources: musubi-tuner's ``wan/configs`` and ``wan/modules`` (``model.py``, ``vae.py``,
``t5.py``); the 5B model and the Wan 2.2 VAE, which musubi-tuner does not train, follow the upstream Wan 2.2
release as ComfyUI loads it. Design: docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

# ---- the DiT -----------------------------------------------------------------------------------------

PATCH = (1, 2, 2)   # frames, height, width of latent that one DiT token covers (patch_embedding kernel)
FREQ_DIM = 256      # sinusoidal timestep features fed to time_embedding
CLIP_DIM = 1280     # open-clip ViT-H image features, embedded by img_emb (Wan 2.1 image models only)
CLIP_TOKENS = 257   # image tokens per conditioning frame; FLF2V conditions on two frames


@dataclass(frozen=True)
class Dit:
    name: str      # "14B" | "1.3B" | "5B"
    dim: int       # model width
    ffn_dim: int   # feed-forward width
    layers: int    # transformer blocks
    out_dim: int   # latent channels the head predicts (times the patch volume)

    @property
    def head_out(self) -> int:
        return prod(PATCH) * self.out_dim


DITS = {
    "14B": Dit("14B", 5120, 13824, 40, 16),
    "1.3B": Dit("1.3B", 1536, 8960, 30, 16),
    "5B": Dit("5B", 3072, 14336, 30, 48),  # Wan 2.2 TI2V: the 48-channel latents of the Wan 2.2 VAE
}

# Channels into patch_embedding by variant: the noisy latents, plus a 4-channel frame mask and the image
# latents for I2V/FLF2V, plus control latents for Fun-Control; TI2V: the Wan 2.2 VAE's 48 channels.
IN_DIM = {"t2v": 16, "i2v": 36, "flf2v": 36, "fun-control": 48, "ti2v": 48}

# Which DiTs each release has (a layout exists for each combination; not every one was published).
RELEASES = {
    "wan2.1": {"14B": ("t2v", "i2v", "flf2v", "fun-control"), "1.3B": ("t2v", "i2v", "flf2v", "fun-control")},
    "wan2.2": {"14B": ("t2v", "i2v"), "5B": ("ti2v",)},
}
FAMILY_NAMES = {"wan2.1": "Wan 2.1", "wan2.2": "Wan 2.2"}
VARIANT_NAMES = {"t2v": "T2V", "i2v": "I2V", "flf2v": "FLF2V", "fun-control": "Fun-Control", "ti2v": "TI2V"}


def size_of_dim(dim: int) -> str | None:
    """The model size a DiT width means ("14B" for 5120), None for a width no WAN release has."""
    return next((d.name for d in DITS.values() if d.dim == dim), None)


def families_of(size: str) -> tuple[str, ...]:
    """The releases that have a DiT of this size, e.g. ("wan2.1", "wan2.2") for 14B."""
    return tuple(family for family, sizes in RELEASES.items() if size in sizes)


def has_image_attn(family: str, variant: str) -> bool:
    """Wan 2.1 image-conditioned DiTs (I2V, FLF2V, Fun-Control) cross-attend to CLIP image tokens: img_emb and
    cross_attn.k_img/v_img. Wan 2.2 dropped that branch, even for I2V."""
    return family == "wan2.1" and variant in ("i2v", "flf2v", "fun-control")


def block_linears(dit: Dit, image_attn: bool) -> list[tuple[str, tuple[int, int]]]:
    """(path inside a block, (out, in)) of every Linear in one DiT block, in module order."""
    d, f = dit.dim, dit.ffn_dim
    mods = [(f"{attn}.{p}", (d, d)) for attn in ("self_attn", "cross_attn") for p in ("q", "k", "v", "o")]
    if image_attn:
        mods += [("cross_attn.k_img", (d, d)), ("cross_attn.v_img", (d, d))]
    return mods + [("ffn.0", (f, d)), ("ffn.2", (d, f))]


# ---- the VAEs ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Vae:
    version: str   # "2.1" | "2.2"
    z_dim: int     # latent channels
    dim: int       # encoder base width
    dec_dim: int   # decoder base width
    patch: int     # pixels folded into channels before the encoder (2x2 for the Wan 2.2 VAE)

    @property
    def stride(self) -> tuple[int, int, int]:
        """How many frames, rows and columns of pixels one latent covers."""
        return (4, 8 * self.patch, 8 * self.patch)

    @property
    def pixel_channels(self) -> int:
        return 3 * self.patch * self.patch


VAES = {"2.1": Vae("2.1", 16, 96, 96, 1), "2.2": Vae("2.2", 48, 160, 256, 2)}
TRAINING_VAE = VAES["2.1"]  # every musubi-tuner task encodes with the Wan 2.1 VAE


def kept_frames(frames: int) -> int:
    """The frames of a clip the trainer keeps: 4n+1 (one latent frame for the first, one per 4 after)."""
    stride = TRAINING_VAE.stride[0]
    return (frames - 1) // stride * stride + 1


def latent_frames(frames: int) -> int:
    """Latent frames of a clip: the first frame alone, then one per 4 (so the trainer keeps 4n+1 frames)."""
    return (max(1, frames) - 1) // TRAINING_VAE.stride[0] + 1


def tokens(width: int, height: int, frames: int) -> int:
    """DiT tokens of one sample (per latent frame, one per 2x2 latents = 16x16 pixels)."""
    rows = TRAINING_VAE.stride[1] * PATCH[1]
    cols = TRAINING_VAE.stride[2] * PATCH[2]
    return latent_frames(frames) * (height // rows) * (width // cols)


# ---- the text encoder --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TextEncoder:
    vocab: int
    dim: int
    ffn_dim: int
    heads: int
    layers: int
    buckets: int   # relative-position buckets (umT5 keeps one table per layer)
    text_len: int  # tokens the DiT cross-attends to (longer prompts are cut)


UMT5 = TextEncoder(vocab=256384, dim=4096, ffn_dim=10240, heads=64, layers=24, buckets=32, text_len=512)


# ---- musubi-tuner's tasks ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskModel:
    """The model a musubi-tuner WAN task trains."""

    task: str
    size: str
    family: str                 # "wan2.1" | "wan2.2"
    variant: str                # a key of IN_DIM
    start_image: bool = False   # conditioned on a start image: latent caching adds image latents (--i2v)
    boundary: int | None = None  # two experts: the default switch timestep, of 1000

    @property
    def version(self) -> str:
        return self.family[len("wan"):]

    @property
    def dual(self) -> bool:
        """WAN 2.2 A14B: a high-noise and a low-noise expert."""
        return self.family == "wan2.2"

    @property
    def image_attn(self) -> bool:
        return has_image_attn(self.family, self.variant)

    @property
    def in_dim(self) -> int:
        return IN_DIM[self.variant]

    @property
    def dit(self) -> Dit:
        return DITS[self.size]


# musubi's --task values, in its own order of presentation. No 5B task exists in musubi-tuner. The
# Fun-Control tasks all load a Wan 2.1 image model (musubi sets i2v for them: in_dim 48, CLIP branch).
TASKS = {m.task: m for m in (
    TaskModel("t2v-A14B", "14B", "wan2.2", "t2v", boundary=875),
    TaskModel("i2v-A14B", "14B", "wan2.2", "i2v", start_image=True, boundary=900),
    TaskModel("t2v-14B", "14B", "wan2.1", "t2v"),
    TaskModel("t2v-1.3B", "1.3B", "wan2.1", "t2v"),
    TaskModel("i2v-14B", "14B", "wan2.1", "i2v", start_image=True),
    TaskModel("t2i-14B", "14B", "wan2.1", "t2v"),
    TaskModel("flf2v-14B", "14B", "wan2.1", "flf2v", start_image=True),
    TaskModel("t2v-1.3B-FC", "1.3B", "wan2.1", "fun-control"),
    TaskModel("t2v-14B-FC", "14B", "wan2.1", "fun-control"),
    TaskModel("i2v-14B-FC", "14B", "wan2.1", "fun-control", start_image=True),
)}
