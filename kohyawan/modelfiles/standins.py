"""Full-size stand-ins for WAN model files that cost no disk.

Each file gets the real safetensors header of the model it imitates (every tensor name, dtype, shape and
byte offset) and is then extended with ``truncate`` to the real length, so it is sparse: a "28 GB" 14B
DiT occupies a few hundred kilobytes, reads back through ``safetensors.safe_open``, and is identified by
kohyawan exactly as the real file would be. The tensor bytes are zeros. (``safe_open`` maps the whole
file: on a machine with strict overcommit a 28 GB map fails with ENOMEM even though nothing is read, so
code that only needs names and shapes should use ``kohyawan.modelfiles.header.read_header``.) Used by the tests and by
``kohyawan run --rehearse`` when the user has no model files. Design: docs/architecture.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from kohyawan import wan
from kohyawan.files.safetensors import FROM_SHORT, OutSpec
from kohyawan.files.stream import write_sparse
from kohyawan.modelfiles.layouts import dit_layout, t5_layout, vae_layout

ST_DTYPES = {short: FROM_SHORT[short] for short in ("bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e5m2")}
DIT_DTYPES = (*ST_DTYPES, "fp8_scaled")

Entry = tuple[str, str, tuple[int, ...]]  # name, safetensors dtype, shape


def write_safetensors(path: os.PathLike | str, entries: Iterable[Entry],
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Write the header for ``entries`` and extend the file to its full length without writing data.

    Tensors are laid out as the safetensors library lays them out; atomic (a temp file, then rename).
    """
    specs = [OutSpec(name, dtype, tuple(shape)) for name, dtype, shape in entries]
    meta = {str(k): str(v) for k, v in metadata.items()} if metadata else None
    return write_sparse(Path(path), specs, meta)


def _is_block_linear(name: str, shape: tuple[int, ...]) -> bool:
    return name.startswith("blocks.") and name.endswith(".weight") and len(shape) == 2


def write_dit(path: os.PathLike | str, *, size: str = "14B", variant: str = "t2v", family: str = "wan2.2",
              dtype: str = "bf16", prefix: str = "") -> Path:
    """A WAN DiT: size 14B | 1.3B | 5B, variant t2v | i2v | flf2v | fun-control (5B: ti2v), family wan2.1 |
    wan2.2, dtype bf16 | fp16 | fp32 | fp8_e4m3fn | fp8_e5m2 | fp8_scaled (ComfyUI's scaled fp8).
    ``prefix="model.diffusion_model."`` imitates a checkpoint saved by ComfyUI."""
    if dtype not in DIT_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DIT_DTYPES)}")
    if size == "5B" and variant == "t2v":
        variant = "ti2v"  # the only 5B model is TI2V (text and image to video in one)
    entries: list[Entry] = []
    for name, shape in dit_layout(size, variant, family):
        if dtype in ("fp8_e4m3fn", "fp8_e5m2", "fp8_scaled"):
            # fp8 releases quantise the big block matrices; norms, biases, embeddings stay bf16
            if _is_block_linear(name, shape):
                entries.append((prefix + name, "F8_E5M2" if dtype == "fp8_e5m2" else "F8_E4M3", shape))
                if dtype == "fp8_scaled":
                    entries.append((prefix + name[: -len(".weight")] + ".scale_weight", "F32", ()))
            else:
                entries.append((prefix + name, "BF16", shape))
        else:
            entries.append((prefix + name, ST_DTYPES[dtype], shape))
    if dtype == "fp8_scaled":
        entries.append((prefix + "scaled_fp8", "F8_E4M3", (0,)))
    return write_safetensors(path, entries)


def write_vae(path: os.PathLike | str, *, version: str = "2.1", dtype: str = "bf16") -> Path:
    """The Wan 2.1 VAE (z_dim 16) or the Wan 2.2 VAE (z_dim 48)."""
    return write_safetensors(path, [(n, ST_DTYPES[dtype], s) for n, s in vae_layout(version)])


def write_t5(path: os.PathLike | str, *, fmt: str = "wan", dtype: str = "bf16") -> Path:
    """umT5-XXL encoder in Wan's layout (what ``--t5`` loads) or the Hugging Face/ComfyUI one."""
    return write_safetensors(path, [(n, ST_DTYPES[dtype], s) for n, s in t5_layout(fmt)])


def write_task_models(folder: os.PathLike | str, task: str = "t2v-A14B", *, dtype: str = "bf16") -> dict[str, Path]:
    """Every file a musubi task needs, named like the real downloads, as sparse stand-ins.

    Returns {"dit": ..., "dit_high_noise": ... (A14B tasks only), "vae": ..., "t5": ...}; these pass
    ``check_models(task, "both", ..., mixed_precision=<dtype>)``.
    """
    if task not in wan.TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(wan.TASKS)}")
    want = wan.TASKS[task]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    v = want.variant.replace("-", "_")
    files: dict[str, Path] = {}
    if want.dual:
        for key, expert in (("dit", "low"), ("dit_high_noise", "high")):
            files[key] = write_dit(folder / f"wan2.2_{v}_{expert}_noise_14B_{dtype}.safetensors", size="14B",
                                   variant=want.variant, family="wan2.2", dtype=dtype)
    else:
        files["dit"] = write_dit(folder / f"wan2.1_{v}_{want.size}_{dtype}.safetensors", size=want.size,
                                 variant=want.variant, family="wan2.1", dtype=dtype)
    files["vae"] = write_vae(folder / "wan_2.1_vae.safetensors")
    files["t5"] = write_t5(folder / "models_t5_umt5-xxl-enc-bf16.safetensors")
    return files
