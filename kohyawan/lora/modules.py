"""A LoRA file seen as modules (path, up, down, alpha) whatever its naming: the common input of the
tensor tools. Header only; tensors are read later, one module at a time."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from kohyawan.lora import keys as K
from kohyawan.files.safetensors import Header
from kohyawan.lora.io import LoraFileError, read_header
from kohyawan.lora.verify import require_lora


@dataclass(frozen=True)
class Module:
    path: str               # dotted module path, e.g. "blocks.0.self_attn.q"
    up: str                 # key names in the source file
    down: str
    alpha: str | None
    rank: int
    out: int
    inp: tuple[int, ...]    # down's trailing dims ((in,) for Linear)

    @property
    def in_features(self) -> int:
        return math.prod(self.inp)


@dataclass(frozen=True)
class LoraModules:
    header: Header
    modules: list[Module]
    dtype: str              # dominant safetensors dtype of the matrices
    has_alpha: bool

    @property
    def name(self) -> str:
        return self.header.path.name


def load_modules(path: Path) -> LoraModules:
    header = read_header(Path(path))
    require_lora(header)
    return modules_of(header)


def modules_of(header: Header) -> LoraModules:
    modules: list[Module] = []
    unsupported: list[str] = []
    for target, suffixes in K.group_targets(list(header.tensors)).items():
        pair = K.lora_pair(suffixes)
        path = K.module_path(target)
        extra = set(suffixes) - set(K.LORA_PAIRS) - set(K.LORA_PAIRS.values()) - {"alpha"}
        if pair is None or path is None or extra:
            unsupported.extend(suffixes.values())
            continue
        up, down = header.tensors[pair[0]].shape, header.tensors[pair[1]].shape
        modules.append(Module(path, pair[0], pair[1], suffixes.get("alpha"), down[0], up[0], tuple(down[1:])))
    if unsupported:
        raise LoraFileError(
            f"{header.path.name}: {len(unsupported)} keys are not plain LoRA pairs on known WAN modules "
            f"(e.g. {sorted(unsupported)[0]}); the LoRA tools handle lora_down/lora_up pairs only")
    if len({m.path for m in modules}) != len(modules):
        raise LoraFileError(f"{header.path.name}: a module appears under two names")
    dtypes = [header.tensors[m.up].dtype for m in modules]
    dtype = max(set(dtypes), key=dtypes.count)
    has_alpha = any(m.alpha for m in modules)
    modules.sort(key=lambda m: _natural(m.path))
    return LoraModules(header, modules, dtype, has_alpha)


def _natural(text: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]
