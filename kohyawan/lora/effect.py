"""How much a LoRA changes the model: the norm of each module's update scale * up @ down.

||up @ down||_F^2 = sum((up^T up) * (down down^T)), two rank x rank Gram matrices: the dense update is
never formed, so a 14B LoRA is measured in the time it takes to read it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from kohyawan.lora.modules import LoraModules, load_modules

# Per-element RMS of a module's update below which it cannot visibly change a WAN DiT: its weights
# are O(1e-2) per element, so 1e-5 is a 0.1 % change. A freshly initialised LoRA (up = 0) is exactly 0.
NEGLIGIBLE_RMS = 1e-5


@dataclass
class Effect:
    modules: int
    zero_modules: int        # update exactly zero
    total_norm: float        # sqrt of the sum of squared module norms
    mean_rms: float          # mean over modules of ||update||_F / sqrt(out * in)
    max_rms: float
    max_module: str | None

    @property
    def negligible(self) -> bool:
        return self.max_rms < NEGLIGIBLE_RMS

    def to_dict(self) -> dict:
        return dict(asdict(self), negligible=self.negligible)


def measure(lm: LoraModules) -> Effect:
    from kohyawan.lora import tensors as T

    norms2: list[float] = []
    rms: list[tuple[float, str]] = []
    zero = 0
    with T.opened(lm.header, digest=False) as source:
        for m in lm.modules:
            up = source.fp32(m.up).reshape(m.out, m.rank)
            down = source.fp32(m.down).reshape(m.rank, m.in_features)
            scale = source.scalar(m.alpha, m.rank) / m.rank
            n2 = float(((up.T @ up) * (down @ down.T)).sum()) * scale * scale
            n2 = max(n2, 0.0)  # rounding can make a zero norm slightly negative
            zero += n2 == 0.0
            norms2.append(n2)
            rms.append((math.sqrt(n2 / (m.out * m.in_features)), m.path))
    top = max(rms) if rms else (0.0, None)
    return Effect(len(lm.modules), zero, math.sqrt(sum(norms2)),
                  sum(r for r, _ in rms) / len(rms) if rms else 0.0, top[0], top[1])


def measure_file(path: Path) -> Effect:
    return measure(load_modules(path))
