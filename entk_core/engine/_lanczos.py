"""Lanczos eigensolvers for the top eigenpairs of a symmetric PSD operator (a private
module of :mod:`entk_core.engine`; the public entry point is
:func:`entk_core.engine.eigenpairs.top_eigenpairs`).

Both need only products with the operator and return one :class:`LanczosResult`:

* :func:`lanczos_topk` -- plain Lanczos for a fixed number of ``steps`` (the paper's
  method, spec §6.3: 50 steps -> the top 25 Ritz pairs). The operator is any callable
  ``matvec(v) -> K v`` on 1-D float64 tensors of length ``n`` (e.g. a language model's
  compressed kernel, whose products are all the caller can afford). The Krylov basis is kept
  in float64 and every new vector is orthogonalised twice against all previous ones
  (classical Gram-Schmidt, twice is enough), so the Ritz values do not duplicate as in
  plain Lanczos. The start vector is ``N(0, I)`` from a ``torch.Generator`` seeded with
  ``seed``. If the Krylov space becomes invariant (``β`` below ``breakdown_tol · ‖K‖``
  estimate) the iteration stops early; the eigenpairs returned are then exact for that
  subspace.
* :func:`block_lanczos` -- block Lanczos to a tolerance, given ``matmat(V) = A @ V`` for
  ``V (n, b)``: full reorthogonalisation and the projected matrix ``H = Qᵀ A Q`` kept
  explicitly, so a thick restart (keep the best Ritz vectors, continue from the residual
  block) is exact and the basis never exceeds ``max_basis`` columns.

Convergence of :func:`block_lanczos`: the residual of Ritz pair ``(θ_i, y_i)`` is
``‖A y_i − θ_i y_i‖ = ‖R_next s_i^{(last block)}‖`` (the Lanczos relation). Pair ``i < k``
has converged when its residual is at most ``tol · max(θ_i, abs_floor · θ_0)``; for a
symmetric ``A`` the eigenvalue error is then at most ``tol`` relative (Bauer-Fike;
quadratically smaller when the pair is separated from the rest of the spectrum).
Eigenvalues at or below ``abs_floor · θ_0`` count as numerical zeros (an eNTK is usually
rank-deficient).

Progress and cancellation: ``progress(done, total, message)`` is called after every
product (``done`` counts products; for the block solver ``total`` is the current estimate
of products needed, which may grow); an exception raised by the callback propagates and
stops the solver. :func:`lanczos_topk` also polls ``cancel()`` before each product.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

__all__ = ["Cancelled", "LanczosResult", "block_lanczos", "lanczos_topk", "to_numpy_pairs"]

ProgressFn = Callable[[int, int, str], None]


class Cancelled(RuntimeError):
    """Raised when the ``cancel`` callback asks the iteration to stop."""


@dataclass
class LanczosResult:
    """Top Ritz pairs of a Lanczos solver.

    Attributes:
      eigenvalues: ``(k,)`` float64 (the solver's dtype), descending.
      eigenvectors: ``(n, k)``, orthonormal columns (column ``i`` pairs with
        ``eigenvalues[i]``), on the solver's device.
      residuals: ``(k,)`` the residual norms ``‖K y − θ y‖`` (a posteriori bound on each
        Ritz pair's error).
      steps: operator products done (vectors the operator was applied to; a block of
        ``b`` columns counts ``b``).
      seconds: wall time; ``matvec_seconds`` of it in the operator.
      restarts, basis: thick restarts and the largest basis size (block solver).
      converged: every pair within the tolerance (block solver; the fixed-step solver
        reports ``True``: it has no tolerance).
      history: convergence checks ``{"basis", "products", "unconverged"}`` (block solver).
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    steps: int
    seconds: float
    matvec_seconds: float
    restarts: int = 0
    basis: int = 0
    converged: bool = True
    history: list = field(default_factory=list)


def lanczos_topk(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    k: int = 25,
    steps: int = 50,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    breakdown_tol: float = 1e-12,
) -> LanczosResult:
    """Top-``k`` eigenpairs of a symmetric PSD operator from ``steps`` Lanczos steps.

    Args:
      matvec: ``v (n,) float64 -> K v (n,) float64``.
      n: the operator's size.
      k: eigenpairs returned (``k <= steps``).
      steps: Krylov dimension (= operator products); capped at ``n``.
      seed: seed of the start vector.
      progress: ``progress(done, total, message)`` after each product. A callback that
        raises (e.g. Streamlit stopping a script) aborts the iteration.
      cancel: polled before each product; ``True`` raises :class:`Cancelled`.
    """
    n, steps = int(n), int(min(steps, n))
    if n < 1:
        raise ValueError("the operator is empty")
    if not 1 <= k <= steps:
        raise ValueError(f"need 1 <= k <= steps, got k={k}, steps={steps}")
    g = torch.Generator().manual_seed(int(seed))
    q = torch.randn(n, generator=g, dtype=torch.float64).to(device)
    q /= q.norm()
    Q = torch.empty(steps, n, dtype=torch.float64, device=device)
    alpha: list[float] = []
    beta: list[float] = []
    t0, t_mv = time.perf_counter(), 0.0
    scale = 0.0
    m = 0
    for j in range(steps):
        if cancel is not None and cancel():
            raise Cancelled(f"stopped after {j} of {steps} Lanczos steps")
        Q[j] = q
        t = time.perf_counter()
        w = matvec(q).to(device, torch.float64)
        t_mv += time.perf_counter() - t
        if w.shape != (n,) or not torch.isfinite(w).all():
            raise ValueError("the operator returned a non-finite or wrongly shaped vector")
        a = float(w @ q)
        alpha.append(a)
        B = Q[: j + 1]
        for _ in range(2):  # full reorthogonalisation, twice
            w -= B.T @ (B @ w)
        b = float(w.norm())
        m = j + 1
        scale = max(scale, abs(a), b)
        if progress:
            progress(m, steps, f"Lanczos step {m}/{steps}")
        if j == steps - 1:
            beta.append(b)
            break
        if b <= breakdown_tol * max(scale, 1e-300):
            beta.append(b)
            break
        beta.append(b)
        q = w / b
    Tm = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(beta[: m - 1], dtype=torch.float64)
        Tm += torch.diag(off, 1) + torch.diag(off, -1)
    theta, S = torch.linalg.eigh(Tm)
    order = torch.argsort(theta, descending=True)[: min(k, m)]
    theta, S = theta[order], S[:, order]
    Y = Q[:m].T @ S.to(device)
    res = (beta[m - 1] * S[m - 1].abs()) if m else torch.zeros(0)
    return LanczosResult(theta, Y, res.to(torch.float64), m, time.perf_counter() - t0, t_mv)


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
    t0, t_mv = time.perf_counter(), 0.0
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
        t_mv = time.perf_counter() - t0
        A = (A + A.T) * 0.5
        vals, vecs = torch.linalg.eigh(A)
        vals, vecs = vals.flip(0)[:k], vecs.flip(1)[:, :k]
        if progress is not None:
            progress(n, n, "eigenpairs (dense, tiny operator)")
        return LanczosResult(vals, vecs, torch.zeros(k, dtype=dtype), n, time.perf_counter() - t0, t_mv,
                             restarts=0, basis=n, converged=True)

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
        t = time.perf_counter()
        W = matmat(Qj).to(dtype=dtype, device=dev)
        t_mv += time.perf_counter() - t
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
    return LanczosResult(vals, vecs, res, products, time.perf_counter() - t0, t_mv,
                         restarts=restarts, basis=m, converged=converged, history=history)


def to_numpy_pairs(result: LanczosResult, abs_floor: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """``(vals (k,), vecs (n, k))`` float64 numpy; eigenvalues at or below
    ``abs_floor · λ_0`` (and negative round-off) are returned as 0."""
    vals = result.eigenvalues.detach().to("cpu", torch.float64)
    top = max(float(vals[0]), 0.0)
    vals = torch.where(vals <= abs_floor * top, torch.zeros_like(vals), vals)
    vecs = result.eigenvectors.detach().to("cpu", torch.float64)
    vecs = vecs / vecs.norm(dim=0).clamp_min(1e-300)
    return vals.numpy().copy(), np.ascontiguousarray(vecs.numpy())
