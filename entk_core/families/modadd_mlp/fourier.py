"""The modular-addition torus: its grid, Fourier banks, graph Laplacians and the cliff rotation.

Every modular-arithmetic quantity of the ``modadd-mlp`` and ``modadd-transformer`` families
is evaluated on all ``N = p**2`` pairs in row order ``i = a*p + b`` (``a = i // p``,
``b = i % p``; :func:`modadd_grid`, and the order of :func:`.data.modadd_pairs`).

* **Fourier banks** have shape ``(N, K, 2)``: ``bank[:, j, 0] = cos(2π k_j v / p)`` and
  ``bank[:, j, 1] = sin(2π k_j v / p)`` for the frequencies ``k_j`` (default
  ``1 .. ⌊p/2⌋``). ``FeatureFamily.matrix`` flattens them to ``(N, 2K)`` in the order
  ``[cos k_1, sin k_1, cos k_2, ...]``. For even ``p`` the sine column of ``k = p/2`` is
  identically zero; the alignment code drops such numerically zero directions.
* **Laplacians** of the ``p x p`` torus: :func:`cycle_laplacian` (1-D), the axis pair
  :func:`axis_laplacians` ``(L_a, L_b)`` and the diagonal pair :func:`sum_diff_laplacians`
  ``(L_s, L_d)``, all in the row order above.
* :func:`rotate_cliff` -- the engine's generic two-stage rotation
  (:func:`entk_core.engine.measures.two_stage_rotation`) with the axis pair (first cliff:
  ``b`` modes, then ``a`` modes) or the sum/diff pair (second cliff: ``diff`` modes, then
  ``sum`` modes).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from ...engine.measures import to_numpy, two_stage_rotation

__all__ = [
    "axis_laplacians",
    "check_freqs",
    "cycle_laplacian",
    "default_freqs",
    "fourier_bank",
    "freq_labels",
    "modadd_grid",
    "rotate_cliff",
    "sum_diff_laplacians",
]


def default_freqs(p: int) -> list[int]:
    """The default frequencies ``1 .. ⌊p/2⌋``."""
    return list(range(1, p // 2 + 1))


def check_freqs(p: int, freqs: Iterable[int] | None) -> list[int]:
    """``freqs`` as a list of ints (default :func:`default_freqs`); a multiple of ``p`` (the
    constant mode) is an error."""
    if freqs is None:
        return default_freqs(p)
    out = [int(k) for k in freqs]
    if not out:
        raise ValueError("need at least one frequency")
    for k in out:
        if k % p == 0:
            raise ValueError(f"frequency {k} is the constant mode mod p={p}")
    return out


def fourier_bank(v, p: int, freqs: Iterable[int] | None = None) -> np.ndarray:
    """Fourier features of integer values ``v`` (shape ``(N,)``) mod ``p``.

    Returns ``(N, K, 2)`` float64 with ``[..., 0] = cos(2π k v / p)`` and
    ``[..., 1] = sin(2π k v / p)`` for ``k`` in ``freqs`` (default ``1 .. ⌊p/2⌋``).
    Columns are *not* normalised (each has squared norm ``N/2`` on a full grid).
    """
    if p < 2:
        raise ValueError(f"p must be at least 2, got {p}")
    ks = np.asarray(check_freqs(p, freqs), dtype=np.float64)
    v = to_numpy(v).reshape(-1)
    theta = 2.0 * np.pi * np.outer(v, ks) / p  # (N, K)
    return np.stack([np.cos(theta), np.sin(theta)], axis=-1)


def modadd_grid(p: int) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` for all ``p**2`` pairs in row order ``i = a*p + b`` (int64, shape ``(N,)``)."""
    if p < 2:
        raise ValueError(f"p must be at least 2, got {p}")
    i = np.arange(p * p)
    return i // p, i % p


def freq_labels(freqs: Sequence[int], prefix: str = "") -> tuple[str, ...]:
    """``("k=1", "k=2", ...)`` (with ``prefix`` before each)."""
    return tuple(f"{prefix}k={k}" for k in freqs)


# ------------------------------------------------------------ Laplacians
def _shift(p: int, d: int) -> sp.csr_array:
    """Cyclic shift ``(S x)[i] = x[(i + d) mod p]`` as a sparse ``p x p`` matrix."""
    i = np.arange(p)
    return sp.csr_array((np.ones(p), (i, (i + d) % p)), shape=(p, p))


def cycle_laplacian(p: int, *, dense: bool = True):
    """1-D cycle Laplacian ``2I − S(+1) − S(−1)`` (``p x p``); dense ndarray by default."""
    if p < 2:
        raise ValueError(f"p must be at least 2, got {p}")
    L = 2 * sp.identity(p, format="csr") - _shift(p, 1) - _shift(p, -1)
    L = sp.csr_array(L)
    return L.toarray() if dense else L


def axis_laplacians(p: int, *, dense: bool = False):
    """``(L_a, L_b)`` on the ``p x p`` torus, index ``a*p + b`` (``p² x p²``).

    ``L_a = kron(L1d, I_p)`` penalises variation along ``a``; ``L_b = kron(I_p, L1d)``
    along ``b``. Sparse CSR by default (``dense=True`` for ndarrays).
    """
    L1 = cycle_laplacian(p, dense=False)
    I = sp.identity(p, format="csr")
    La, Lb = sp.csr_array(sp.kron(L1, I)), sp.csr_array(sp.kron(I, L1))
    return (La.toarray(), Lb.toarray()) if dense else (La, Lb)


def _torus_shift(p: int, da: int, db: int) -> sp.csr_array:
    a, b = np.divmod(np.arange(p * p), p)
    j = ((a + da) % p) * p + (b + db) % p
    return sp.csr_array((np.ones(p * p), (np.arange(p * p), j)), shape=(p * p, p * p))


def sum_diff_laplacians(p: int, *, dense: bool = False):
    """``(L_s, L_d)`` on the ``p x p`` torus (index ``a*p + b``), spec §2.6.

    ``L_s = 2I − S(+1,+1) − S(−1,−1)``, ``L_d = 2I − S(+1,−1) − S(−1,+1)`` with
    ``S(da,db)`` the shift ``(a, b) -> (a+da, b+db) mod p``. ``L_s`` penalises variation
    along the diagonal ``(1, 1)``, i.e. in ``a + b``: functions of ``a − b`` are in its
    kernel (and functions of ``a + b`` in the kernel of ``L_d``).
    """
    N = p * p
    I = sp.identity(N, format="csr")
    Ls = sp.csr_array(2 * I - _torus_shift(p, 1, 1) - _torus_shift(p, -1, -1))
    Ld = sp.csr_array(2 * I - _torus_shift(p, 1, -1) - _torus_shift(p, -1, 1))
    return (Ls.toarray(), Ld.toarray()) if dense else (Ls, Ld)


@lru_cache(maxsize=8)
def _laplacians(p: int, kind: str):
    if kind == "axis":
        return axis_laplacians(p)
    if kind == "sumdiff":
        return sum_diff_laplacians(p)
    raise ValueError(f"unknown rotation kind {kind!r}; use 'axis' or 'sumdiff'")


def rotate_cliff(vecs, p: int, kind: str = "axis") -> np.ndarray:
    """Rotate a modular-arithmetic cliff ``(p², k)`` with the two-stage diagonalisation.

    ``kind="axis"``: ``(L_a, L_b)``, for the first cliff (output: b-modes then a-modes).
    ``kind="sumdiff"``: ``(L_s, L_d)``, for the second cliff (output: diff-modes then
    sum-modes).
    """
    V = to_numpy(vecs)
    V = V[:, None] if V.ndim == 1 else V
    if V.shape[0] != p * p:
        raise ValueError(f"vectors have {V.shape[0]} rows, expected p² = {p * p}")
    L1, L2 = _laplacians(int(p), kind)
    return two_stage_rotation(V, L1, L2)
