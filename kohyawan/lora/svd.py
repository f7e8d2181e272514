"""The SVD of a LoRA module's update ``up @ down`` from its factors alone, for many modules at once.

With r the rank (64 at most in practice) the update is out x in but has rank r, so everything it has to
say is in two r x r Gram matrices: ``up^T up = P diag(lambda) P^T`` (eigen-decomposition) makes
``C = diag(sqrt(lambda)) P^T down`` an r x in matrix with the same singular values and right singular
vectors as ``up @ down``, and ``C C^T = diag(sqrt(lambda)) P^T (down down^T) P diag(sqrt(lambda))`` is
r x r: its eigen-decomposition ``W diag(sigma^2) W^T`` gives the singular values, and
``U = up P diag(lambda)^-1/2 W``, ``V^T = diag(sigma)^-1 W^T C``. The cost per module is two Gram
products and two skinny products (out x r x k, k x r x in): about a quarter of the QR route's
arithmetic, in matrix products a CPU or GPU runs near its peak, and nothing out x in is ever formed.

On the CPU the Gram matrices are float32 products of the stored factors, on a GPU float64 ones; the
r x r work (two eigen-decompositions) is float64 on the CPU either way, where many tiny matrices go
faster than through a GPU's solver. Directions of ``up`` below ``NOISE`` of its largest singular value
are within float32 rounding of zero and count as zero (a rank-deficient ``up``, e.g. an untrained LoRA's
zeros, is handled exactly). Modules of one shape are stacked into a batch: torch's batched matmul and
eigh run them together, the products on the GPU when asked.
See docs/architecture.md.
"""

from __future__ import annotations

NOISE = 1e-3


def truncated_svd(up, down, k: int):
    """(U_k [B, out, k], sigma [B, r] descending, Vh_k [B, k, in]) of ``up @ down`` for a batch of
    factor pairs up [B, out, r], down [B, r, in] (float32, any device)."""
    import torch

    # on a GPU float64 products cost little and match the CPU's float32 accuracy; eigh of many tiny
    # matrices is faster on the CPU than through the GPU's solver, so the r x r work always runs there
    gram = torch.float64 if up.is_cuda else torch.float32
    gram_up = (up.to(gram).mT @ up.to(gram)).cpu().double()
    gram_down = (down.to(gram) @ down.to(gram).mT).cpu().double()
    lam, p = torch.linalg.eigh(gram_up)                     # ascending
    root = lam.clamp(min=0).sqrt()
    inv = torch.where(root > root[..., -1:] * NOISE, 1.0 / root.clamp(min=1e-300), 0.0)
    inner = root[..., :, None] * (p.mT @ gram_down @ p) * root[..., None, :]
    s2, w = torch.linalg.eigh(inner)
    sigma, w = s2.flip(-1).clamp(min=0).sqrt(), w.flip(-1)
    wk, sk = w[..., :k], sigma[..., :k]
    left = p @ (inv[..., :, None] * wk)                                          # U_k = up @ left
    sinv = torch.where(sk > 0, 1.0 / sk.clamp(min=1e-300), 0.0)
    right = (sinv[..., :, None] * wk.mT * root[..., None, :]) @ p.mT             # Vh_k = right @ down
    return (up.to(gram) @ left.to(up.device, gram)).to(up.dtype), sigma, \
        (right.to(down.device, gram) @ down.to(gram)).to(down.dtype)


def reference_svd(up, down):
    """(U, sigma, Vh) of ``up @ down`` for one module by QR of both factors, in float64: the exact route
    the benchmark and the tests measure ``truncated_svd`` against."""
    import torch

    q_up, r_up = torch.linalg.qr(up.double())
    q_dn, r_dn = torch.linalg.qr(down.double().T)
    a, s, bh = torch.linalg.svd(r_up @ r_dn.T)
    return q_up @ a, s, bh @ q_dn.T
