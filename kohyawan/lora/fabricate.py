"""Tiny LoRA files in musubi-tuner's exact key format, for tests and the rehearsal trainer.

Key names, shapes, alpha as a scalar in the save dtype, ``ss_*`` metadata and the precomputed
``sshs_*`` hashes follow what ``networks/lora_wan.py`` + ``LoRANetwork.save_weights`` write. Values are
random (seeded per key, so any subset of blocks gives the same numbers) and small.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterable, Mapping

from kohyawan.lora import keys as K
from kohyawan.files.safetensors import FROM_SHORT as DTYPE_FROM_SHORT, OutSpec, write_stream


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


def write_lora(path: Path, *, task: str = "t2v-A14B", rank: int = 4, alpha: float | None = None,
               dtype: str = "bf16", metadata: Mapping[str, str] | None = None, zero: bool = False,
               seed: int = 0, blocks: Iterable[int] | None = None, scale: float = 0.02) -> Path:
    import torch

    from kohyawan.lora.tensors import to_bytes

    path = Path(path)
    alpha = 1.0 if alpha is None else float(alpha)  # musubi's default network_alpha
    code = DTYPE_FROM_SHORT[dtype]
    wanted = None if blocks is None else set(blocks)
    specs: list[OutSpec] = []
    for module, (out, inp) in K.lora_modules(task):
        if wanted is not None and int(module.split(".")[1]) not in wanted:
            continue
        name = K.musubi_name(module)
        specs += [OutSpec(name + ".alpha", code, ()), OutSpec(name + ".lora_down.weight", code, (rank, inp)),
                  OutSpec(name + ".lora_up.weight", code, (out, rank))]

    def produce(spec: OutSpec) -> bytes:
        if spec.name.endswith(".alpha"):
            return to_bytes(torch.tensor(alpha), code)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(spec.name.encode()))
        t = torch.randn(spec.shape, generator=gen) * scale
        if zero and spec.name.endswith("lora_up.weight"):
            t.zero_()  # musubi initialises lora_up to zero: an untrained LoRA has no effect
        return to_bytes(t, code)

    meta = musubi_metadata(task, rank, alpha, path.stem)
    meta.update(metadata or {})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small tensors: see tensors.opened
    try:
        write_stream(path, specs, meta, produce)
    finally:
        torch.set_num_threads(threads)
    return path
