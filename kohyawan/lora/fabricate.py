"""LoRA files with a task's real keys at a tiny rank: what the simulated trainer saves, and the files the
tests and benchmarks work on. numpy only (the simulator must not import torch).

Key names and shapes come from ``keys.lora_modules`` (musubi-tuner's ``networks/lora_wan.py``): per module
``.lora_down.weight`` [rank, in], ``.lora_up.weight`` [out, rank] and a scalar ``.alpha`` in the save
dtype. Values are random, seeded per key (any subset of blocks gives the same numbers), and small; the up
matrices can instead hold one value everywhere (0 = musubi's untrained initialisation). ``write_lora``
adds musubi's ``ss_*``/``modelspec.*`` metadata and precomputed ``sshs_*`` hashes, as
``LoRANetwork.save_weights`` does. See docs/architecture.md.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterable, Mapping

from kohyawan.files.safetensors import FROM_SHORT, OutSpec
from kohyawan.files.stream import write_stream
from kohyawan.lora import keys as K


def musubi_metadata(task: str, rank: int, alpha: float, name: str) -> dict[str, str]:
    return {
        "ss_network_module": "networks.lora_wan",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_output_name": name,
        "ss_base_model_version": "wan2.1" if K.TASK_MODELS[task].version == "2.1" else "wan2.2",
        "ss_mixed_precision": "bf16",
        "modelspec.architecture": "wan2.1/lora",
        "modelspec.implementation": "https://github.com/Wan-Video/Wan2.1",
        "modelspec.title": name,
    }


def lora_specs(task: str, rank: int, code: str, blocks: Iterable[int] | None = None) -> list[OutSpec]:
    """Every tensor musubi-tuner saves for ``task`` at ``rank`` in dtype ``code`` (optionally some blocks)."""
    wanted = None if blocks is None else set(blocks)
    specs: list[OutSpec] = []
    for module, (out, inp) in K.lora_modules(task):
        if wanted is not None and int(module.split(".")[1]) not in wanted:
            continue
        name = K.musubi_name(module)
        specs += [OutSpec(name + ".alpha", code, ()), OutSpec(name + ".lora_down.weight", code, (rank, inp)),
                  OutSpec(name + ".lora_up.weight", code, (out, rank))]
    return specs


def save_lora(path: Path, *, task: str, rank: int, alpha: float, code: str, metadata: Mapping[str, str] | None,
              seed: int = 0, scale: float = 0.02, up: float | None = None, blocks: Iterable[int] | None = None,
              musubi_hashes: bool = True, in_place: bool = False) -> Path:
    """Write the LoRA: random ``scale``-sized matrices (up matrices all equal to ``up`` when given).

    ``in_place`` writes straight to ``path`` without a temporary name, as the real trainer saves.
    """
    import numpy as np

    from kohyawan.files.floatcast import from_f32

    def produce(spec: OutSpec):
        if spec.name.endswith(".alpha"):
            return from_f32(np.array([alpha], dtype=np.float32), code)
        if up is not None and spec.name.endswith("lora_up.weight"):
            return from_f32(np.full(spec.shape, up, dtype=np.float32), code)
        rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
        values = rng.standard_normal(spec.shape, dtype=np.float32)
        values *= np.float32(scale)
        return from_f32(values, code)

    path = Path(path)
    write_stream(path, lora_specs(task, rank, code, blocks), metadata, produce, musubi_hashes=musubi_hashes,
                 in_place=in_place)
    return path


def write_lora(path: Path, *, task: str = "t2v-A14B", rank: int = 4, alpha: float | None = None,
               dtype: str = "bf16", metadata: Mapping[str, str] | None = None, zero: bool = False,
               seed: int = 0, blocks: Iterable[int] | None = None, scale: float = 0.02) -> Path:
    """A LoRA as musubi-tuner saves it (metadata and hashes included), written atomically; ``zero``
    leaves the up matrices at 0 like an untrained LoRA. ``metadata`` adds to or overrides musubi's."""
    path = Path(path)
    alpha = 1.0 if alpha is None else float(alpha)  # musubi's default network_alpha
    meta = musubi_metadata(task, rank, alpha, path.stem)
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    return save_lora(path, task=task, rank=rank, alpha=alpha, code=FROM_SHORT[dtype], metadata=meta, seed=seed,
                     scale=scale, up=0.0 if zero else None, blocks=blocks)
