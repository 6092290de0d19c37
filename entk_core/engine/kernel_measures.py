"""Model-agnostic measures of kernels and of how they move (no feature families needed).

Pure numpy; kernels are symmetric ``(N, N)`` arrays (float32 or float64, torch tensors
accepted), or a :class:`Gram` ``K = J Jᵀ`` given by its factor ``J`` ``(N, P)`` (a flattened
eNTK is the Gram matrix of the flattened Jacobian; when ``P < N`` every measure below is
computed from ``P × P`` products, never forming ``K``). Every reduction is accumulated in
float64, block by block, so a float32 kernel is never copied whole into float64. Results
are Python floats.

Formulas
--------
* **Frobenius inner product** ``⟨A, B⟩_F = Σ_ij A_ij B_ij`` (:func:`frobenius_inner`); for
  Gram matrices ``⟨J₁J₁ᵀ, J₂J₂ᵀ⟩_F = ‖J₁ᵀJ₂‖²_F``, and ``⟨K, JJᵀ⟩_F = tr(JᵀKJ)``.
* **Kernel distance** (Fort et al. 2020, "Deep learning versus kernel learning"):
  ``d(K₁, K₂) = 1 − ⟨K₁, K₂⟩_F / (‖K₁‖_F ‖K₂‖_F)`` (:func:`kernel_distance`). 0 for kernels
  that are positive multiples of each other, at most 2; ``nan`` when either kernel is zero.
  :func:`distance_from_products` gives it from the inner product and the two norms, so a
  caller streaming kernels needs only the scalars.
* **Centred kernel-target alignment** (Cortes, Mohri and Rostamizadeh 2012):
  ``A(K, Y) = ⟨HKH, HYYᵀH⟩_F / (‖HKH‖_F ‖HYYᵀH‖_F)`` with ``H = I − 11ᵀ/N`` and ``Y``
  ``(N, r)`` the targets (one-hot labels, or regression targets) of the kernel's rows
  (:func:`centred_alignment`). Computed without forming ``YYᵀ``: with ``Yc = HY`` (the
  column-centred targets) and ``Kc = HKH``, ``⟨Kc, YcYcᵀ⟩ = tr(Ycᵀ Kc Yc)`` and
  ``‖YcYcᵀ‖_F = ‖YcᵀYc‖_F``; for a Gram matrix ``Kc = Jc Jcᵀ`` with ``Jc = HJ``, so
  ``⟨Kc, YcYcᵀ⟩ = ‖Jcᵀ Yc‖²_F`` and ``‖Kc‖_F = ‖JcᵀJc‖_F``. In ``[−1, 1]``; ``nan`` when
  ``Kc`` or ``Yc`` is zero (a constant kernel, or a single class).
* **Effective rank** (Roy and Vetterli 2007): ``exp(−Σ_i p_i log p_i)`` with
  ``p_i = λ_i / Σ_j λ_j`` over the given eigenvalues (:func:`effective_rank`); eigenvalues
  below zero (rounding of a PSD kernel) count as 0, and ``0 log 0 = 0``. Between 1 (one
  non-zero eigenvalue) and the number of eigenvalues (all equal); ``nan`` when none is
  positive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Gram",
    "centred_alignment",
    "distance_from_products",
    "effective_rank",
    "frobenius_inner",
    "frobenius_norm",
    "kernel_distance",
]

_BLOCK = 1024
"""Rows per block of the float64 accumulations (bounds the temporary copies to ``_BLOCK · N``)."""


@dataclass(frozen=True)
class Gram:
    """The kernel ``K = J Jᵀ`` of a factor ``J`` ``(N, P)`` (e.g. a flattened Jacobian), never formed."""

    J: np.ndarray

    def __post_init__(self):
        J = np.asarray(self.J.detach().cpu().numpy() if hasattr(self.J, "detach") else self.J)
        if J.ndim != 2:
            raise ValueError(f"a Gram factor must be a matrix (N, P), got shape {J.shape}")
        object.__setattr__(self, "J", J)

    @property
    def shape(self) -> tuple[int, int]:
        """The kernel's shape ``(N, N)``."""
        return (self.J.shape[0], self.J.shape[0])

    def small(self) -> np.ndarray:
        """``JᵀJ`` ``(P, P)`` in float64 (same non-zero eigenvalues and Frobenius norm as ``K``)."""
        J = self.J.astype(np.float64, copy=False)
        return J.T @ J

    def dense(self) -> np.ndarray:
        """``J Jᵀ`` ``(N, N)`` in float64 (for small kernels and tests)."""
        J = self.J.astype(np.float64, copy=False)
        return J @ J.T


def _square(K, name: str = "kernel") -> np.ndarray:
    A = np.asarray(K.detach().cpu().numpy() if hasattr(K, "detach") else K)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {A.shape}")
    return A


def frobenius_inner(A, B) -> float:
    """``⟨A, B⟩_F = Σ_ij A_ij B_ij`` of two ``(N, N)`` kernels (arrays or :class:`Gram`),
    accumulated in float64."""
    if isinstance(A, Gram) or isinstance(B, Gram):
        if A.shape != B.shape:
            raise ValueError(f"kernels of different shapes: {A.shape} and {B.shape}")
        if isinstance(A, Gram) and isinstance(B, Gram):
            M = A.J.astype(np.float64, copy=False).T @ B.J.astype(np.float64, copy=False)
            return float(np.sum(M * M))
        K, G = (A, B) if isinstance(B, Gram) else (B, A)
        K = _square(K)
        J = G.J.astype(np.float64, copy=False)
        total = 0.0
        for i in range(0, K.shape[0], _BLOCK):  # tr(Jᵀ K J) by row blocks of K
            total += float(np.sum(J[i:i + _BLOCK] * (K[i:i + _BLOCK].astype(np.float64, copy=False) @ J)))
        return total
    A, B = _square(A, "A"), _square(B, "B")
    if A.shape != B.shape:
        raise ValueError(f"kernels of different shapes: {A.shape} and {B.shape}")
    total = 0.0
    for i in range(0, A.shape[0], _BLOCK):
        a = A[i:i + _BLOCK].astype(np.float64, copy=False).ravel()
        b = B[i:i + _BLOCK].astype(np.float64, copy=False).ravel()
        total += float(a @ b)
    return total


def frobenius_norm(A) -> float:
    """``‖A‖_F``, accumulated in float64."""
    return math.sqrt(max(frobenius_inner(A, A), 0.0))


def distance_from_products(inner: float, norm1: float, norm2: float) -> float:
    """``1 − inner / (norm1 · norm2)`` (Fort et al. 2020); ``nan`` if a norm is 0."""
    if not (norm1 > 0 and norm2 > 0):
        return float("nan")
    return 1.0 - float(inner) / (float(norm1) * float(norm2))


def kernel_distance(K1, K2) -> float:
    """Kernel distance ``1 − ⟨K₁, K₂⟩_F / (‖K₁‖_F ‖K₂‖_F)`` (module docstring)."""
    return distance_from_products(frobenius_inner(K1, K2), frobenius_norm(K1), frobenius_norm(K2))


def _targets(Y, n: int) -> np.ndarray:
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or Y.shape[0] != n:
        raise ValueError(f"targets must have shape ({n},) or ({n}, r), got {Y.shape}")
    if not np.isfinite(Y).all():
        raise ValueError("targets contain NaN or infinite values")
    return Y


def centred_alignment(K, Y) -> float:
    """Centred kernel-target alignment of ``K`` ``(N, N)`` (an array, read as ``(K + Kᵀ)/2``,
    or a :class:`Gram`) with targets ``Y`` ``(N,)`` or ``(N, r)`` (module docstring)."""
    if isinstance(K, Gram):
        Yc = _targets(Y, K.shape[0])
        Yc = Yc - Yc.mean(axis=0, keepdims=True)
        Jc = K.J.astype(np.float64)
        Jc -= Jc.mean(axis=0, keepdims=True)
        num = float(np.sum((Jc.T @ Yc) ** 2))
        den = float(np.linalg.norm(Jc.T @ Jc)) * float(np.linalg.norm(Yc.T @ Yc))
        return num / den if den > 0 else float("nan")
    K = _square(K)
    n = K.shape[0]
    Yc = _targets(Y, n)
    Yc = Yc - Yc.mean(axis=0, keepdims=True)
    # centring HKH = K - r 1ᵀ - 1 cᵀ + m, with r, c the row and column means, m the grand mean
    rows = np.zeros(n)
    cols = np.zeros(n)
    for i in range(0, n, _BLOCK):
        blk = K[i:i + _BLOCK].astype(np.float64, copy=False)
        rows[i:i + _BLOCK] = blk.mean(axis=1)
        cols += blk.sum(axis=0)
    cols /= n
    rows = (rows + cols) / 2  # the symmetrised kernel's row means
    grand = float(rows.mean())
    norm2 = 0.0
    KY = np.zeros_like(Yc)
    for i in range(0, n, _BLOCK):
        blk = K[i:i + _BLOCK].astype(np.float64, copy=False)
        blk = (blk + K[:, i:i + _BLOCK].astype(np.float64, copy=False).T) / 2
        kc = blk - rows[i:i + _BLOCK, None] - rows[None, :] + grand
        norm2 += float(np.sum(kc * kc))
        KY[i:i + _BLOCK] = kc @ Yc
    num = float(np.sum(Yc * KY))  # tr(Ycᵀ Kc Yc)
    ny = float(np.linalg.norm(Yc.T @ Yc))
    if not (norm2 > 0 and ny > 0):
        return float("nan")
    return num / (math.sqrt(norm2) * ny)


def effective_rank(eigenvalues) -> float:
    """Effective rank ``exp(−Σ p log p)``, ``p = λ / Σλ`` (Roy and Vetterli 2007; module docstring)."""
    lam = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
    if not np.isfinite(lam).all():
        raise ValueError("eigenvalues contain NaN or infinite values")
    lam = np.clip(lam, 0.0, None)
    total = float(lam.sum())
    if not total > 0:
        return float("nan")
    p = lam / total
    p = p[p > 0]  # (a positive eigenvalue may still underflow to p = 0: 0 log 0 = 0)
    return float(math.exp(-float(np.sum(p * np.log(p)))))
