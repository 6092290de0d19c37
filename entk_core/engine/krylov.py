"""Top-k eigenpairs of a symmetric positive semi-definite operator by block Lanczos.

:func:`block_lanczos` needs only products ``A @ V`` for ``V`` of shape ``(n, b)``. It runs
the block Lanczos recurrence with full reorthogonalisation (two classical Gram-Schmidt
passes against the whole basis) and keeps the projected matrix ``H = Qᵀ A Q`` explicitly,
so a thick restart (keep the best Ritz vectors, continue from the residual block) is
exact and the basis never exceeds ``max_basis`` columns.

Convergence: the residual of Ritz pair ``(θ_i, y_i)`` is ``‖A y_i − θ_i y_i‖ =
‖R_next s_i^{(last block)}‖`` (the Lanczos relation). Pair ``i < k`` has converged when its
residual is at most ``tol · max(θ_i, abs_floor · θ_0)``; for a symmetric ``A`` the
eigenvalue error is then at most ``tol`` relative (Bauer-Fike; quadratically smaller when
the pair is separated from the rest of the spectrum). Eigenvalues at or below
``abs_floor · θ_0`` count as numerical zeros (an eNTK is usually rank-deficient).

Conventions follow :mod:`entk_core.engine.spectra`: eigenvalues descending, float64;
eigenvectors ``(n, k)`` float64 with unit columns, largest-magnitude entry positive.

Progress and cancellation: ``progress(done, total, message)`` is called after every block
product (``done`` counts products, ``total`` is the current estimate of products needed,
which may grow); an exception raised by the callback propagates and stops the solver.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

__all__ = ["LanczosResult", "block_lanczos"]

ProgressFn = Callable[[int, int, str], None]


@dataclass
class LanczosResult:
    """``values (k,)`` descending and ``vectors (n, k)`` (torch, the solver's dtype and
    device), plus ``residuals (k,)`` (absolute), ``products`` (operator columns applied),
    ``restarts``, ``basis`` (largest basis size used) and ``converged``."""

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    products: int
    restarts: int
    basis: int
    converged: bool
    history: list = field(default_factory=list)


def _orthonormal_block(W: torch.Tensor, Q: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """QR of ``W`` (already orthogonal to ``Q``); rank-deficient directions are replaced by
    random vectors orthogonal to ``Q`` and to the kept ones (their R rows are zero)."""
    Qn, R = torch.linalg.qr(W)
    d = R.diagonal().abs()
    scale = float(d.max()) if d.numel() else 0.0
    bad = d <= 1e-10 * max(scale, 1e-300)
    if bool(bad.any()):
        idx = bad.nonzero().flatten()
        R[idx, :] = 0.0
        for i in idx.tolist():
            v = torch.randn(W.shape[0], generator=gen, dtype=W.dtype).to(W.device)
            for _ in range(2):
                v -= Q @ (Q.T @ v)
                keep = torch.cat([Qn[:, :i], Qn[:, i + 1:]], 1)
                v -= keep @ (keep.T @ v)
            Qn[:, i] = v / v.norm()
    return Qn, R


def block_lanczos(
    matmat: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    k: int,
    *,
    block: int | None = None,
    tol: float = 1e-6,
    abs_floor: float = 1e-10,
    max_basis: int | None = None,
    max_products: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> LanczosResult:
    """Top-``k`` eigenpairs of a symmetric PSD ``A`` (``n × n``) given ``matmat(V) = A @ V``.

    Args:
      matmat: ``(n, b)`` tensor in ``dtype`` on ``device`` -> ``(n, b)`` tensor (any float
        dtype; cast back to ``dtype``).
      n, k: operator size and number of eigenpairs (``1 <= k <= n``).
      block: block size ``b`` (default: ``clamp(k // 4, 8, 64)``, so clusters of nearly
        equal eigenvalues up to that size converge together).
      tol: relative residual tolerance (see the module docstring).
      abs_floor: eigenvalues below ``abs_floor · θ_0`` are treated as zeros.
      max_basis: largest basis before a thick restart (default ``min(n, max(15k, k + 16b))``,
        at least ``k + 2b``; the basis takes ``8 n · max_basis`` bytes).
      max_products: give up after this many operator columns (default ``max(40 k, 20 b)``);
        the result is returned with ``converged=False``.
      seed: the random start block (deterministic).

    Returns:
      a :class:`LanczosResult`.
    """
    n, k = int(n), int(k)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    b = int(block) if block else max(8, min(64, k // 4))
    b = max(1, min(b, n))
    if max_basis is None:
        max_basis = max(15 * k, k + 16 * b)
    max_basis = int(min(n, max(max_basis, k + 2 * b)))
    max_products = int(max_products) if max_products else max(40 * k, 20 * b)
    gen = torch.Generator().manual_seed(int(seed))
    if n <= max(64, k + 2 * b):
        # tiny problem: the Krylov space is the whole space; apply A to the identity
        E = torch.eye(n, dtype=dtype, device=dev)
        A = matmat(E).to(dtype)
        A = (A + A.T) * 0.5
        vals, vecs = torch.linalg.eigh(A)
        vals, vecs = vals.flip(0)[:k], vecs.flip(1)[:, :k]
        if progress is not None:
            progress(n, n, "eigenpairs (dense, tiny operator)")
        return LanczosResult(vals, vecs, torch.zeros(k, dtype=dtype), n, 0, n, True)

    Q = torch.empty(n, max_basis + b, dtype=dtype, device=dev)
    H = torch.zeros(max_basis + b, max_basis + b, dtype=dtype, device=dev)
    X = torch.randn(n, b, generator=gen, dtype=dtype).to(dev)
    Q[:, :b] = torch.linalg.qr(X)[0]
    m = 0                     # columns of Q whose products are in H
    lo = 0                    # start of the previous block (0 right after a start or restart)
    cur = b                   # columns of Q filled (the last block awaits its product)
    products = restarts = 0
    history: list = []
    est_total = min(max_products, max(4 * k, max_basis))
    next_check = k + b
    R_next = None
    theta = S = None
    converged = False
    res = torch.zeros(k, dtype=dtype)
    while True:
        Qj = Q[:, m:cur]
        W = matmat(Qj).to(dtype=dtype, device=dev)
        products += Qj.shape[1]
        if W.shape != Qj.shape:
            raise ValueError(f"matmat returned shape {tuple(W.shape)} for an input of shape {tuple(Qj.shape)}")
        # projections of the new block on the whole basis (first Gram-Schmidt pass)
        # the block recurrence against the previous and current blocks (or, right after a
        # restart, against the whole basis), then full reorthogonalisation against every
        # column; a second full pass only where the first one cancelled much of a column
        # (Daniel-Gragg-Kaufman-Stewart criterion)
        Qall = Q[:, :cur]
        Qloc = Q[:, lo:cur]
        h = torch.zeros(cur, W.shape[1], dtype=dtype, device=dev)
        hl = Qloc.T @ W
        W -= Qloc @ hl
        h[lo:cur] = hl
        for _ in range(2):
            n0 = W.norm(dim=0)
            h2 = Qall.T @ W
            W -= Qall @ h2
            h += h2
            if not bool((W.norm(dim=0) < 0.7071 * n0).any()):
                break
        H[:cur, m:cur] = h
        H[m:cur, :cur] = h.T
        lo, m = m, cur
        Qn, R_next = _orthonormal_block(W, Qall, gen)
        if progress is not None:
            progress(products, max(est_total, products + b), f"eigenpairs: Lanczos basis {m} ({products} products)")
        need_check = m >= next_check or m + b > max_basis or products >= max_products or m + b > n
        if need_check:
            Hm = H[:m, :m]
            theta, S = torch.linalg.eigh((Hm + Hm.T) * 0.5)
            theta, S = theta.flip(0), S.flip(1)
            res = (R_next @ S[m - R_next.shape[1]:, :k]).norm(dim=0)
            top = max(float(theta[0]), 0.0)
            thr = tol * torch.clamp(theta[:k], min=abs_floor * top)
            ok = res <= thr
            history.append({"basis": m, "products": products, "unconverged": int((~ok).sum())})
            if bool(ok.all()):
                converged = True
                break
            if products >= max_products or m + b > n:
                break
            # next check when the basis has grown by ~25% (checks cost O(m³))
            next_check = m + max(b, int(0.25 * m))
            # estimate of the products still needed, from the fraction converged so far
            frac = float(ok.float().mean())
            est_total = min(max_products, int(products / max(0.05, frac ** 0.5)) + b) if frac > 0 else max(est_total, 2 * products)
        if m + b > max_basis:
            # thick restart: keep the best Ritz vectors, continue from the residual block
            if theta is None or S is None or S.shape[0] != m:
                Hm = H[:m, :m]
                theta, S = torch.linalg.eigh((Hm + Hm.T) * 0.5)
                theta, S = theta.flip(0), S.flip(1)
            keep = int(min(m - b, max(k + b, (k + max_basis) // 2 - b)))
            Y = Q[:, :m] @ S[:, :keep]
            Q[:, :keep] = Y
            Q[:, keep:keep + Qn.shape[1]] = Qn
            H.zero_()
            H[:keep, :keep] = torch.diag(theta[:keep])
            m = keep
            lo = 0
            cur = keep + Qn.shape[1]
            restarts += 1
            next_check = m + b
            theta = S = None
            continue
        Q[:, m:m + Qn.shape[1]] = Qn
        cur = m + Qn.shape[1]
    vals = theta[:k].clone()
    vecs = Q[:, :m] @ S[:, :k]
    return LanczosResult(vals, vecs, res, products, restarts, m, converged, history)


def to_numpy_pairs(result: LanczosResult, abs_floor: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """``(vals (k,), vecs (n, k))`` float64 numpy; eigenvalues at or below
    ``abs_floor · λ_0`` (and negative round-off) are returned as 0."""
    vals = result.values.detach().to("cpu", torch.float64)
    top = max(float(vals[0]), 0.0)
    vals = torch.where(vals <= abs_floor * top, torch.zeros_like(vals), vals)
    vecs = result.vectors.detach().to("cpu", torch.float64)
    vecs = vecs / vecs.norm(dim=0).clamp_min(1e-300)
    return vals.numpy().copy(), np.ascontiguousarray(vecs.numpy())

