"""Lower a LoRA's rank by truncated SVD of each module's update, reporting the energy kept.

For a module, update = s * up @ down with s = alpha / rank; ``svd.truncated_svd`` gets its SVD from the
factors' Gram matrices, for a batch of modules of one shape at a time, on the CPU or (``device``) the GPU,
so even the 13824 x 5120 FFN matrices of a 14B model are never formed. Keeping the top R singular values
gives the best rank-R approximation (Eckart-Young); retained energy = sum of kept sigma^2 / sum of all
sigma^2. The new alpha keeps the old scale (alpha * R / rank), so the file trains on like the original.
Modules are computed in the order the output file needs them, a batch at a time, so memory stays near
one batch however big the file.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kohyawan.errors import BadInput, WorkFailed
from kohyawan.files.safetensors import OutSpec, library_order, placeholder, short_name
from kohyawan.files.stream import write_stream
from kohyawan.lora import metadata as M
from kohyawan.lora.modules import Module, load_modules

# input bytes (float32 factors) of one batch: small on the CPU, where batching saves only Python calls
BATCH_BYTES = {"cpu": 16 << 20, "cuda": 512 << 20}


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
    device: str = "cpu"

    def to_dict(self) -> dict:
        return asdict(self)


def pick_device(device: str | None) -> str:
    """'auto' (or None): the GPU when torch sees one, else the CPU; 'cpu'; 'cuda' or 'cuda:N'."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        try:
            index = torch.device(device).index or 0
        except RuntimeError:
            raise BadInput(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise BadInput(f"--device {device}: torch sees no such GPU here; use --device cpu")
        return device
    raise BadInput(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")


def resize_file(src: Path, dst: Path, *, rank: int, dtype: str | None = None,
                device: str | None = "auto") -> ResizeResult:
    src, dst = Path(src), Path(dst)
    if rank < 1:
        raise BadInput("--rank must be at least 1")
    if dst.resolve() == src.resolve():
        raise BadInput("the output must be a new file, not the input")
    lm = load_modules(src)
    old = max(m.rank for m in lm.modules)
    if rank >= old:
        raise BadInput(f"{src.name} has rank {old}; resize only lowers the rank (asked for {rank})")
    device = pick_device(device)
    from kohyawan.lora import tensors as T

    code = T.dtype_code(dtype, lm.dtype)
    specs, by_key = _resize_specs(lm, rank, code)
    # the CPU's SVD work is matrix products (threads help) and tiny eigh calls (threads hurt when busy)
    threads = max(1, min(8, (os.cpu_count() or 1) - 2)) if device == "cpu" else 1
    try:
        with T.opened(lm.header, threads=threads) as source:
            job = _Resize(lm, source, rank, device, [by_key[s.name][1] for s in library_order(specs)])

            def produce(spec: OutSpec):
                what, m = by_key[spec.name]
                return T.to_buffer(job.take(m, what), code)

            sha = placeholder("sha256", 64)  # the source's, hashed while it is read
            meta, late = _resized_metadata(lm, src.name, sha, rank, old,
                                           {job.new_alpha(m) for m in lm.modules if m.alpha}, job.overall)
            write_stream(dst, specs, meta, produce, late={**late, sha: source.sha256})
    except RuntimeError as e:     # torch's CUDA errors (out of memory, a busy exclusive-mode GPU) are these
        if not device.startswith("cuda"):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WorkFailed(f"the SVD on {device} failed ({first}); --device cpu runs it on the CPU") from None
    mods = [job.energies[m.path] for m in lm.modules]
    return ResizeResult(str(dst), str(src), old, rank, short_name(code), job.overall(),
                        min(e.retained for e in mods), mods, device)


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


def _resized_metadata(lm, name: str, sha: str, rank: int, old: int, alphas: set[float], overall):
    """The source's metadata with the new rank and alpha and a ``resized_from`` fact; the retained energy
    is known only once every module went through, so it is a placeholder patched in after the tensors."""
    updates = {}
    if M.SS_NETWORK_DIM in lm.header.metadata:
        updates[M.SS_NETWORK_DIM] = str(rank)
    if M.SS_NETWORK_ALPHA in lm.header.metadata and len(alphas) == 1:
        updates[M.SS_NETWORK_ALPHA] = str(float(alphas.pop()))
    energy_token = placeholder("energy", 8)
    fact = {"file": name, "sha256": sha, "rank": old, "to_rank": rank,
            "retained_energy": energy_token}
    meta = M.extended(lm.header.metadata, M.RESIZED_FROM, fact, updates)
    return meta, {energy_token: lambda: f"{overall():.6f}"[:8]}


class _Resize:
    """Each module's truncated SVD with the energy it keeps, computed a batch of same-shape modules at a
    time in the order the output file asks for them, and dropped once written."""

    def __init__(self, lm, source, rank: int, device: str, wanted: list[Module]):
        self.source, self.rank, self.device = source, rank, device
        self.order = list(dict.fromkeys(m.path for m in wanted))   # module paths, first use first
        self.by_path = {m.path: m for m in lm.modules}
        self.left = {p: sum(1 for m in wanted if m.path == p) for p in self.order}   # keys still to write
        self.done: dict[str, dict] = {}
        self.energies: dict[str, ModuleEnergy] = {}
        self.kept = self.total = 0.0
        self._next = 0

    def new_alpha(self, m: Module) -> float:
        return self.source.scalar(m.alpha, m.rank) * min(self.rank, m.rank) / m.rank

    def overall(self) -> float:
        return self.kept / self.total if self.total > 0 else 1.0

    def take(self, m: Module, what: str):
        while m.path not in self.done:
            if self._next >= len(self.order):
                raise RuntimeError(f"{m.path}: asked for after it was written")
            self._batch()
        out = self.done[m.path][what]
        self.left[m.path] -= 1
        if self.left[m.path] == 0:
            del self.done[m.path]
        return out

    def _batch(self) -> None:
        """The next modules in file order, up to the batch budget, grouped by shape and computed."""
        budget, chunk = BATCH_BYTES["cuda" if self.device.startswith("cuda") else "cpu"], []
        while self._next < len(self.order) and (not chunk or budget > 0):
            m = self.by_path[self.order[self._next]]
            chunk.append(m)
            budget -= 4 * m.rank * (m.out + m.in_features)
            self._next += 1
        groups: dict[tuple, list[Module]] = {}
        for m in chunk:
            groups.setdefault((m.out, m.rank, m.in_features), []).append(m)
        for mods in groups.values():
            self._compute(mods)

    def _compute(self, mods: list[Module]) -> None:
        import torch

        from kohyawan.lora.svd import truncated_svd

        m0 = mods[0]
        k = min(self.rank, m0.rank)
        up = torch.stack([self.source.fp32(m.up).reshape(m.out, m.rank) for m in mods]).to(self.device)
        down = torch.stack([self.source.fp32(m.down).reshape(m.rank, m.in_features) for m in mods]).to(self.device)
        u, sigma, vh = (x.cpu() for x in truncated_svd(up, down, k))
        for i, m in enumerate(mods):
            self.done[m.path] = self._factors(m, k, u[i], sigma[i], vh[i])

    def _factors(self, m: Module, k: int, u, sigma, vh) -> dict:
        """The module's new up, down and alpha: sigma split evenly between the factors."""
        import torch

        scale = self.source.scalar(m.alpha, m.rank) / m.rank
        energy = (sigma * scale).square()
        total, kept = float(energy.sum()), float(energy[:k].sum())
        if m.path not in self.energies:
            self.energies[m.path] = ModuleEnergy(m.path, m.rank, k, kept / total if total > 0 else 1.0)
            self.kept += kept
            self.total += total
        new_alpha = self.new_alpha(m) if m.alpha else 0.0
        new_scale = new_alpha / k if m.alpha else 1.0
        if new_scale == 0:
            root = torch.zeros(k, dtype=torch.float64)
        else:
            root = (sigma[:k] * abs(scale) / abs(new_scale)).sqrt()
        sign = -1.0 if scale * new_scale < 0 else 1.0
        root = root.to(torch.float32)
        return {"up": (u * root * sign).reshape(m.out, k), "down": (root[:, None] * vh).reshape(k, *m.inp),
                "alpha": torch.tensor(new_alpha)}
