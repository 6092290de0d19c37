"""Lanczos with full reorthogonalisation for the top eigenpairs of a matrix-free
symmetric positive semi-definite operator (spec §6.3: 50 steps -> the top 25 Ritz pairs).

The operator is any callable ``matvec(v) -> K v`` on 1-D float64 tensors of length ``n``
(e.g. :class:`entk_core.families.causal_lm.operator.KTildeOperator`); nothing here knows
what it computes. The Krylov basis is kept in float64 and every new vector is
orthogonalised twice against all previous ones (classical Gram-Schmidt, twice is
enough), so the Ritz values do not duplicate as in plain Lanczos. The tridiagonal
matrix is diagonalised with ``torch.linalg.eigh`` in float64.

The start vector is ``N(0, I)`` from a ``torch.Generator`` seeded with ``seed``: the same
call gives the same numbers. If the Krylov space becomes invariant (``β`` below
``breakdown_tol · ‖K‖`` estimate) the iteration stops early; the eigenpairs returned
are then exact for that subspace.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["LanczosResult", "Cancelled", "lanczos_topk"]


class Cancelled(RuntimeError):
    """Raised when the ``cancel`` callback asks the iteration to stop."""


@dataclass
class LanczosResult:
    """Top Ritz pairs.

    Attributes:
      eigenvalues: ``(k,)`` float64, descending.
      eigenvectors: ``(n, k)`` float64, orthonormal columns (column ``i`` pairs with
        ``eigenvalues[i]``).
      residuals: ``(k,)`` the residual norms ``‖K y − θ y‖ = |β_m s_{m,i}|`` (a posteriori
        bound on each Ritz pair's error).
      steps: Lanczos steps done (operator products), at most the requested number.
      seconds: wall time; ``matvec_seconds`` of it in the operator.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    steps: int
    seconds: float
    matvec_seconds: float


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
