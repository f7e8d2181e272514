"""Lower a LoRA's rank by truncated SVD of each module's update, reporting the energy kept.

For a module, update = s * up @ down with s = alpha / rank. Its SVD comes cheaply from the factors:
QR of up and of down^T reduce it to the SVD of a rank x rank matrix, so even the 13824 x 5120 FFN
matrices of a 14B model are never formed. Keeping the top R singular values gives the best rank-R
approximation (Eckart-Young); retained energy = sum of kept sigma^2 / sum of all sigma^2.
The new alpha keeps the old scale (alpha * R / rank), so the file trains on like the original.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from kohyawan.errors import BadInput
from kohyawan.lora import metadata as M
from kohyawan.files.digest import sha256_file
from kohyawan.files.safetensors import OutSpec, placeholder, short_name, write_stream
from kohyawan.lora.modules import Module, load_modules


@dataclass
class ModuleEnergy:
    module: str
    rank: int
    new_rank: int
    retained: float


@dataclass
class ResizeResult:
    path: str
    source: str
    rank: int
    new_rank: int
    dtype: str
    retained: float                  # overall, energy-weighted over modules
    min_retained: float
    modules: list[ModuleEnergy] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def low_rank_svd(up, down, scale: float):
    """(U, S, Vh) of scale * up @ down from its factors: U [out, r], S [r], Vh [r, in]."""
    import torch

    q_up, r_up = torch.linalg.qr(up)
    q_dn, r_dn = torch.linalg.qr(down.T)
    a, s, bh = torch.linalg.svd(scale * (r_up @ r_dn.T))
    return q_up @ a, s, bh @ q_dn.T


def resize_file(src: Path, dst: Path, *, rank: int, dtype: str | None = None) -> ResizeResult:
    src, dst = Path(src), Path(dst)
    if rank < 1:
        raise BadInput("--rank must be at least 1")
    if dst.resolve() == src.resolve():
        raise BadInput("the output must be a new file, not the input")
    lm = load_modules(src)
    old = max(m.rank for m in lm.modules)
    if rank >= old:
        raise BadInput(f"{src.name} has rank {old}; resize only lowers the rank (asked for {rank})")
    from kohyawan.lora import tensors as T

    code = T.dtype_code(dtype, lm.dtype)
    with T.opened(lm.header) as handle:
        job = _Resize(lm, handle, rank)
        cache = T.ModuleCache(job.compute)
        specs, by_key = _resize_specs(lm, rank, code)

        def produce(spec: OutSpec) -> bytes:
            what, m = by_key[spec.name]
            return T.to_bytes(cache.get(m.path)[what], code)

        meta, late = _resized_metadata(lm, src, rank, old, {job.new_alpha(m) for m in lm.modules if m.alpha},
                                       job.overall)
        write_stream(dst, specs, meta, produce, late=late)
    mods = [job.energies[m.path] for m in lm.modules]
    return ResizeResult(str(dst), str(src), old, rank, short_name(code), job.overall(),
                        min(e.retained for e in mods), mods)


def _resize_specs(lm, rank: int, code: str) -> tuple[list[OutSpec], dict[str, tuple[str, Module]]]:
    """The resized file's tensors (same names, rank min(rank, module rank)) and which part each one is."""
    by_key: dict[str, tuple[str, Module]] = {}
    specs: list[OutSpec] = []
    for m in lm.modules:
        k = min(rank, m.rank)
        specs += [OutSpec(m.up, code, (m.out, k)), OutSpec(m.down, code, (k, *m.inp))]
        by_key[m.up], by_key[m.down] = ("up", m), ("down", m)
        if m.alpha:
            specs.append(OutSpec(m.alpha, code, ()))
            by_key[m.alpha] = ("alpha", m)
    return specs, by_key


def _resized_metadata(lm, src: Path, rank: int, old: int, alphas: set[float], overall):
    """The source's metadata with the new rank and alpha and a ``resized_from`` fact; the retained energy
    is known only once every module went through, so it is a placeholder patched in after the tensors."""
    updates = {}
    if M.SS_NETWORK_DIM in lm.header.metadata:
        updates[M.SS_NETWORK_DIM] = str(rank)
    if M.SS_NETWORK_ALPHA in lm.header.metadata and len(alphas) == 1:
        updates[M.SS_NETWORK_ALPHA] = str(float(alphas.pop()))
    energy_token = placeholder("energy", 8)
    fact = {"file": src.name, "sha256": sha256_file(src), "rank": old, "to_rank": rank,
            "retained_energy": energy_token}
    meta = M.extended(lm.header.metadata, M.RESIZED_FROM, fact, updates)
    return meta, {energy_token: lambda: f"{overall():.6f}"[:8]}


class _Resize:
    """Each module's truncated SVD, computed once, with the energy it keeps."""

    def __init__(self, lm, handle, rank: int):
        self.lm, self.handle, self.rank = lm, handle, rank
        self.by_path = {m.path: m for m in lm.modules}
        self.energies: dict[str, ModuleEnergy] = {}
        self.kept = self.total = 0.0

    def new_alpha(self, m: Module) -> float:
        from kohyawan.lora import tensors as T

        return T.scalar(self.handle, m.alpha, m.rank) * min(self.rank, m.rank) / m.rank

    def overall(self) -> float:
        return self.kept / self.total if self.total > 0 else 1.0

    def compute(self, path: str):
        import torch

        from kohyawan.lora import tensors as T

        m = self.by_path[path]
        k = min(self.rank, m.rank)
        up = T.fp32(self.handle, m.up).reshape(m.out, m.rank)
        down = T.fp32(self.handle, m.down).reshape(m.rank, m.in_features)
        u, s, vh = low_rank_svd(up, down, T.scalar(self.handle, m.alpha, m.rank) / m.rank)
        energy = s.square()
        total, kept = float(energy.sum()), float(energy[:k].sum())
        if path not in self.energies:
            self.energies[path] = ModuleEnergy(path, m.rank, k, kept / total if total > 0 else 1.0)
            self.kept += kept
            self.total += total
        new_scale = self.new_alpha(m) / k if m.alpha else 1.0
        # split sigma evenly between the factors; a negative alpha keeps its sign on up
        root = (s[:k] / abs(new_scale)).sqrt() if new_scale != 0 else torch.zeros(k)
        sign = -1.0 if new_scale < 0 else 1.0
        return {"up": (u[:, :k] * root * sign).reshape(m.out, k),
                "down": (root[:, None] * vh[:k]).reshape(k, *m.inp),
                "alpha": torch.tensor(self.new_alpha(m) if m.alpha else 0.0)}
