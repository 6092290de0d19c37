"""Alignment of eNTK eigenvectors with feature families (paper spec §2.5-§2.7).

Pure numpy/scipy; torch tensors are accepted as inputs; results are float64.

Conventions
-----------
* Eigenvectors are columns: ``vecs`` is ``(N, k)`` (a 1-D ``(N,)`` vector is one column).
* Families are a feature family object (anything with a ``bank`` array and a ``matrix``
  property, e.g. :class:`entk_core.families.base.FeatureFamily`; this module knows no
  family class), a paired bank ``(N, K, 2)`` (e.g. the cos/sin columns of ``K``
  frequencies) or a plain matrix ``(N, D)``; their ``N`` must equal the eigenvectors' rows.
* Rotations of a cliff block (:func:`two_stage_rotation`) take the two symmetric
  operators (graph Laplacians) from the caller: a family knows its inputs' geometry.

Grokking-onset rule (:func:`grokking_onset`)
--------------------------------------------
Accuracies are fractions in ``[0, 1]``; ``chance`` is the chance level (``1/C`` for ``C``
balanced classes). With ``plateau`` = mean of the last ``max(1, ⌈0.1·n⌉)`` logged test
accuracies:

1. if ``plateau − chance < min_rise`` (default 0.25) there is no transition: ``None``;
2. threshold ``τ = chance + frac·(plateau − chance)`` (default ``frac = 0.1``);
3. ``j`` = the first logged index from which the accuracy stays ``>= τ`` at *every*
   later logged epoch (the start of the sustained rise to the plateau; earlier
   transient spikes are ignored); if ``j = 0`` the run never sat below ``τ``: ``None``;
4. onset = the midpoint ``(epochs[j−1] + epochs[j]) / 2`` of the logging interval in
   which the sustained crossing happened (``where="linear"``: linear interpolation of
   the crossing of ``τ`` inside that interval instead).

On the paper's logged accuracies this gives the epochs the paper marks (see
docs/ARCHITECTURE.md, "Spectra conventions").

Linearised predictor (§2.7)
---------------------------
``pure``: ``K(x, X)(K + λI)^{-1} y``; ``expand``: ``f(x) + K(x, X)(K + λI)^{-1}(y − f(X))``.
``ridge`` is an absolute ``λ``. Metrics follow the author's definitions: loss ratio =
loss(linearised)/loss(model); accuracy gap = ``100·(acc_model − acc_lin)`` points;
``R² = 1 − Σ(lin − model)² / Σ(model − mean(model))²`` over all entries.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import scipy.linalg
import torch

from .spectra import fix_signs

__all__ = [
    "to_numpy",
    "orthonormal_basis",
    "family_matrix",
    "family_dimension",
    "subspace_overlap",
    "overlap_percent",
    "family_bases",
    "window_overlaps",
    "windows_overlaps",
    "phase_insensitive_corr",
    "best_phase_corr",
    "max_corr_summary",
    "cosine_heatmap",
    "best_feature",
    "two_stage_rotation",
    "local_first_derivative",
    "grokking_onset",
    "derivative_peak_epoch",
    "flatten_outputs",
    "unflatten_outputs",
    "kernel_regression",
    "linearised_check",
]


# ------------------------------------------------------------------ helpers
def to_numpy(x, dtype=np.float64) -> np.ndarray:
    """``x`` (a torch tensor, array or nested sequence) as a numpy array of ``dtype``
    (``None``: keep the dtype). Tensors are detached and moved to the CPU first."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _is_family(x) -> bool:
    return hasattr(x, "bank") and hasattr(x, "matrix")


def _cols(vecs) -> np.ndarray:
    v = to_numpy(vecs)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2:
        raise ValueError(f"expected vectors of shape (N, k), got {v.shape}")
    return v


def _unit_cols(M: np.ndarray, axis: int = 0) -> np.ndarray:
    n = np.linalg.norm(M, axis=axis, keepdims=True)
    return M / np.where(n > 0, n, 1.0)


def family_matrix(family) -> np.ndarray:
    """A family as an ``(N, D)`` matrix: ``FeatureFamily.matrix``, a bank ``(N, K, 2)``
    flattened to ``(N, 2K)`` (``[cos k1, sin k1, cos k2, ...]``), or a matrix as is."""
    if _is_family(family):
        return to_numpy(family.matrix)
    b = to_numpy(family)
    if b.ndim == 3:
        return b.reshape(b.shape[0], -1)
    if b.ndim == 1:
        return b[:, None]
    if b.ndim != 2:
        raise ValueError(f"a family must be (N, D) or (N, K, 2), got {b.shape}")
    return b


def _bank3(bank) -> np.ndarray:
    b = to_numpy(bank.bank if _is_family(bank) else bank)
    if b.ndim != 3 or b.shape[2] != 2:
        raise ValueError(f"expected a paired bank (N, K, 2), got {b.shape}")
    return b


# --------------------------------------------------------- subspace overlap
def orthonormal_basis(M, *, rtol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis ``(N, r)`` of the column span of ``M`` (``(N, D)``).

    Reduced QR with column pivoting (``scipy.linalg.qr``); directions with
    ``|R_ii| <= rtol·|R_00|`` are numerically zero and dropped, so ``r = rank(M)``.
    """
    M = _cols(M)
    if M.shape[1] == 0 or not np.any(M):
        return np.zeros((M.shape[0], 0))
    Q, R, _ = scipy.linalg.qr(M, mode="economic", pivoting=True)
    d = np.abs(np.diag(R))
    r = int(np.sum(d > rtol * d[0]))
    return Q[:, :r]


def _family_basis(family, center: bool) -> np.ndarray:
    F = family_matrix(family)
    if center:
        F = F - F.mean(axis=0, keepdims=True)
    return orthonormal_basis(F)


def family_dimension(family, *, center: bool = True) -> int:
    """Dimension of the (mean-centred) family subspace (``2K`` for a bank of ``K`` generic
    cos/sin pairs, less where columns are dependent)."""
    return _family_basis(family, center).shape[1]


def subspace_overlap(vecs, family, *, center: bool = True) -> tuple[float, np.ndarray]:
    """Subspace overlap of eigenvectors with a family (spec §2.5.3).

    ``Q = orth(vecs)`` (``vecs`` ``(N, d)``, not centred), ``F = orth(family matrix
    (N, D), mean-centred over rows when center=True)``; returns ``(‖QᵀF‖_F², s)`` with
    ``s`` the singular values of ``QᵀF`` (cosines of the principal angles, descending,
    length ``min(d, D)``). The overlap lies in ``[0, min(rank Q, rank F)]``.
    """
    V = _cols(vecs)
    F = family_matrix(family)
    if F.shape[0] != V.shape[0]:
        raise ValueError(
            f"the family has {F.shape[0]} rows but the vectors have {V.shape[0]}; "
            "compare class-major (flattened) families with a flattened kernel only"
        )
    Q = orthonormal_basis(V)
    Fb = _family_basis(F, center)
    if Q.shape[1] == 0 or Fb.shape[1] == 0:
        return 0.0, np.zeros(0)
    s = np.linalg.svd(Q.T @ Fb, compute_uv=False)
    s = np.clip(s, 0.0, 1.0)
    return float(np.sum(s**2)), s


def overlap_percent(vecs, family, *, center: bool = True) -> float:
    """``100 · overlap / family dimension`` (:func:`family_dimension`)."""
    dim = family_dimension(family, center=center)
    if dim == 0:
        return 0.0
    return 100.0 * subspace_overlap(vecs, family, center=center)[0] / dim


def family_bases(families: dict) -> dict[str, np.ndarray]:
    """Orthonormal bases ``name -> (N, r)`` of the mean-centred families (``name -> family``,
    see the module conventions), as :func:`subspace_overlap` uses them with ``center=True``."""
    out = {}
    for name, fam in families.items():
        F = family_matrix(fam)
        out[name] = np.ascontiguousarray(orthonormal_basis(F - F.mean(axis=0, keepdims=True)))
    return out


def window_overlaps(vecs: np.ndarray, bases: dict[str, np.ndarray]) -> np.ndarray:
    """Subspace overlaps ``‖QᵀF‖²_F`` of ``vecs`` ``(N, d)`` with each basis, ``(len(bases),)``.

    Equals :func:`subspace_overlap` with ``center=True``; see
    :func:`windows_overlaps`.
    """
    V = np.asarray(vecs, dtype=np.float64)
    V = V[:, None] if V.ndim == 1 else V
    return windows_overlaps(V, [(0, V.shape[1] - 1)], bases)[0]


def windows_overlaps(V: np.ndarray, spans: list[tuple[int, int]], bases: dict[str, np.ndarray]) -> np.ndarray:
    """Overlaps of several column windows ``V[:, s:t+1]`` with each basis: ``(len(spans), len(bases))``.

    ``Σ s²`` of the principal cosines is ``‖QᵀF‖²_F`` with ``Q`` an orthonormal basis of the
    window; with ``G = VᵀV = LLᵀ`` (Cholesky) that is ``‖L⁻¹VᵀF‖²_F``, exact for any
    well-conditioned window (eigenvectors from a float32 eigensolver are orthonormal only
    to ~1e-6), so two matrix products per spectrum serve every window and family, and a
    QR (:func:`orthonormal_basis`) is needed only for nearly
    rank-deficient windows. The family bases come from :func:`family_bases` (computed
    once per sweep).
    """
    V = np.asarray(V, dtype=np.float64)
    out = np.zeros((len(spans), len(bases)))
    if not spans or not bases:
        return out
    dims = [b.shape[1] for b in bases.values()]
    cuts = np.cumsum([0, *dims])
    F = np.hstack(list(bases.values()))
    hi = max(t for _, t in spans) + 1
    lo = min(s for s, _ in spans)
    U = V[:, lo:hi]
    G = U.T @ U
    P = U.T @ F
    for w, (s, t) in enumerate(spans):
        a, b = s - lo, t - lo + 1
        X = None
        try:
            L = np.linalg.cholesky(G[a:b, a:b])
            if np.min(np.abs(np.diag(L))) > 1e-6:
                X = scipy.linalg.solve_triangular(L, P[a:b], lower=True)
        except np.linalg.LinAlgError:
            pass
        if X is None:
            Q = orthonormal_basis(V[:, s:t + 1])
            X = Q.T @ F
        sq = np.sum(X**2, axis=0)
        for j, d in enumerate(dims):
            out[w, j] = min(float(sq[cuts[j]:cuts[j + 1]].sum()), float(min(X.shape[0], d)))
    return out


# ------------------------------------------------- phase-insensitive corr
def phase_insensitive_corr(vecs, bank) -> np.ndarray:
    """Phase-insensitive correlation ``(K, k)`` of eigenvectors with a paired bank (§2.5.2).

    ``vecs`` ``(N, k)`` and every bank column (``bank`` ``(N, K, 2)``, e.g. cos/sin pairs, or
    a FeatureFamily with such a bank) are unit-normalised;
    ``H[j, i] = sqrt(<F̂_cos_j, â_i>² + <F̂_sin_j, â_i>²)``. A zero column contributes 0.
    Values lie in ``[0, 1]`` when the two columns of a pair are orthogonal.
    """
    A = _unit_cols(_cols(vecs))
    B = _bank3(bank)
    if B.shape[0] != A.shape[0]:
        raise ValueError(f"the bank has {B.shape[0]} rows but the vectors have {A.shape[0]}")
    B = _unit_cols(B, axis=0)
    c = np.einsum("nkt,ni->kti", B, A)
    return np.sqrt(np.sum(c**2, axis=1))


def best_phase_corr(vecs, bank) -> tuple[np.ndarray, np.ndarray]:
    """Per eigenvector: the best phase-insensitive correlation ``(k,)`` and its bank row ``(k,)``."""
    H = phase_insensitive_corr(vecs, bank)
    return H.max(axis=0), H.argmax(axis=0)


def max_corr_summary(vecs, bank) -> float:
    """Mean over the columns of ``vecs`` of their best phase-insensitive correlation with ``bank``.

    E.g. a cliff block mixes its modes (below 0.5 for raw eigenvectors) until a rotation
    (:func:`two_stage_rotation`) separates them (above 0.9).
    """
    return float(best_phase_corr(vecs, bank)[0].mean())


# ------------------------------------------------------- cosine heatmaps
def cosine_heatmap(vecs, feats, column_normalize: bool = True) -> np.ndarray:
    """Cosine heatmap ``(n, k)`` of eigenvectors ``(M, k)`` against features ``(M, n)`` (§2.5.1).

    ``H[a, i] = |<ẑ_a, ê_i>|`` with unit-normalised columns; with ``column_normalize``
    each eigenvector column ``H[:, i]`` is divided by its L2 norm over the features.
    """
    E = _unit_cols(_cols(vecs))
    Z = _unit_cols(family_matrix(feats))
    if Z.shape[0] != E.shape[0]:
        raise ValueError(f"features have {Z.shape[0]} rows but the vectors have {E.shape[0]}")
    H = np.abs(Z.T @ E)
    if column_normalize:
        H = _unit_cols(H, axis=0)
    return H


def best_feature(heatmap) -> np.ndarray:
    """Index of the best-matching feature for each eigenvector: argmax over axis 0, ``(k,)``."""
    return np.argmax(to_numpy(heatmap), axis=0)


# ------------------------------------------------------------- rotations
def _rayleigh(L, Q: np.ndarray) -> np.ndarray:
    A = Q.T @ np.asarray(L @ Q)
    return (A + A.T) / 2


def two_stage_rotation(block, L1, L2, *, return_info: bool = False):
    """Two-stage diagonalisation of a cliff block (spec §2.6).

    ``block`` ``(N, k)``; ``L1``, ``L2`` symmetric ``(N, N)`` (dense or sparse).

    1. ``Q`` = reduced QR of ``block``;
    2. ``Q1 = Q V`` with ``V`` the eigenvectors (ascending) of ``QᵀL1Q``;
    3. keep the ``h = ⌊k/2⌋`` columns of ``Q1`` with the smallest L1-Rayleigh quotient
       (the directions invariant along L1);
    4. ``Q2 = Q1[:, :h] W`` with ``W`` the eigenvectors (ascending) of
       ``Q1[:, :h]ᵀ L2 Q1[:, :h]``;
    5. return ``U = [Q2, Q1[:, h:]]`` (``(N, k)``, orthonormal columns, same span).

    Signs are fixed as in :mod:`entk_core.engine.spectra` (largest-magnitude entry positive).
    With two Laplacians of complementary symmetries (each penalising variation along one
    direction of the inputs) the first ``h`` columns are the modes invariant along ``L1``
    sorted by their ``L2`` frequency, the rest the modes along ``L1``.
    ``return_info=True`` also returns ``{"stage1": Rayleigh quotients of Q1 (k,),
    "stage2": those of Q2 under L2 (h,)}``.
    """
    C = _cols(block)
    N, k = C.shape
    if k == 0:
        raise ValueError("empty cliff block")
    for L in (L1, L2):
        if L.shape != (N, N):
            raise ValueError(f"Laplacian of shape {L.shape} does not match the block's {N} rows")
    Q, _ = np.linalg.qr(C, mode="reduced")
    w1, V = np.linalg.eigh(_rayleigh(L1, Q))
    Q1 = Q @ V
    h = k // 2
    w2, W = np.linalg.eigh(_rayleigh(L2, Q1[:, :h])) if h else (np.zeros(0), np.zeros((0, 0)))
    Q2 = Q1[:, :h] @ W
    U = fix_signs(np.ascontiguousarray(np.hstack([Q2, Q1[:, h:]])))
    if return_info:
        return U, {"stage1": w1, "stage2": w2}
    return U


# ------------------------------------------------------ time evolution
def local_first_derivative(y) -> np.ndarray:
    """First derivative per logging step (dx = 1), spec §2.5.4.

    Forward difference ``y[1] − y[0]`` at the first point, central ``(y[i+1] − y[i−1])/2``
    inside, backward ``y[-1] − y[-2]`` at the last; shape of ``y`` (1-D). A single
    point has derivative 0.
    """
    y = to_numpy(y).reshape(-1)
    d = np.zeros_like(y)
    if y.size < 2:
        return d
    d[0] = y[1] - y[0]
    d[-1] = y[-1] - y[-2]
    if y.size > 2:
        d[1:-1] = (y[2:] - y[:-2]) / 2
    return d


def grokking_onset(
    epochs,
    test_acc,
    *,
    chance: float = 0.0,
    frac: float = 0.1,
    min_rise: float = 0.25,
    where: str = "midpoint",
) -> float | None:
    """Grokking onset epoch from logged test accuracies (fractions); rule in the module docstring.

    Returns ``None`` when there is no transition in the log (no rise of at least
    ``min_rise`` above chance, or already above threshold at the first logged epoch).
    """
    e = to_numpy(epochs).reshape(-1)
    acc = to_numpy(test_acc).reshape(-1)
    if e.size != acc.size:
        raise ValueError("epochs and test_acc must have the same length")
    if e.size < 2:
        return None
    if np.nanmax(acc) > 1.0 + 1e-9:
        raise ValueError("test accuracies must be fractions in [0, 1]")
    if where not in ("midpoint", "linear"):
        raise ValueError("where must be 'midpoint' or 'linear'")
    n_tail = max(1, math.ceil(0.1 * e.size))
    plateau = float(np.mean(acc[-n_tail:]))
    if plateau - chance < min_rise:
        return None
    tau = chance + frac * (plateau - chance)
    below = np.flatnonzero(~(acc >= tau))
    if below.size == 0:
        return None
    j = int(below[-1]) + 1
    if j >= e.size:
        return None
    if where == "midpoint":
        return float((e[j - 1] + e[j]) / 2)
    a0, a1 = acc[j - 1], acc[j]
    t = 1.0 if a1 == a0 else float(np.clip((tau - a0) / (a1 - a0), 0.0, 1.0))
    return float(e[j - 1] + t * (e[j] - e[j - 1]))


def derivative_peak_epoch(epochs, overlap) -> float:
    """The logged epoch at which :func:`local_first_derivative` of ``overlap`` is largest
    (first one on ties)."""
    e = to_numpy(epochs).reshape(-1)
    y = to_numpy(overlap).reshape(-1)
    if e.size != y.size or e.size == 0:
        raise ValueError("epochs and overlap must be non-empty and of the same length")
    return float(e[int(np.argmax(local_first_derivative(y)))])


# --------------------------------------------------- linearised predictor
def flatten_outputs(Y, layout: str = "class") -> np.ndarray:
    """Outputs ``(N, C)`` in a kernel's row layout: ``"class"`` -> ``(C*N,)`` with row
    ``c*N + n`` (the ``"flat"`` reduction); ``"sample"`` -> ``(N*C,)`` with row ``n*C + c``;
    ``"shared"`` -> unchanged ``(N, C)`` (one ``(N, N)`` kernel for every class)."""
    Y = to_numpy(Y)
    if Y.ndim == 1:
        Y = Y[:, None]
    if layout == "class":
        return Y.T.reshape(-1)
    if layout == "sample":
        return Y.reshape(-1)
    if layout == "shared":
        return Y
    raise ValueError(f"unknown layout {layout!r}; use 'class', 'sample' or 'shared'")


def unflatten_outputs(v, C: int, layout: str = "class") -> np.ndarray:
    """Inverse of :func:`flatten_outputs`: back to ``(N, C)``."""
    v = to_numpy(v)
    if layout == "class":
        return v.reshape(C, -1).T
    if layout == "sample":
        return v.reshape(-1, C)
    if layout == "shared":
        return v
    raise ValueError(f"unknown layout {layout!r}; use 'class', 'sample' or 'shared'")


def kernel_regression(
    K_train,
    K_test_train,
    y_train,
    *,
    f_train=None,
    f_test=None,
    ridge: float = 0.0,
    mode: str = "pure",
) -> np.ndarray:
    """Kernel regression with an eNTK (spec §2.7).

    ``K_train`` ``(n, n)``, ``K_test_train`` ``(m, n)``, ``y_train`` ``(n,)`` or ``(n, r)``
    in the kernel's row layout (see :func:`flatten_outputs`). ``mode="pure"``:
    ``K_*(K + λI)^{-1} y``; ``mode="expand"``: ``f_test + K_*(K + λI)^{-1}(y − f_train)``
    (needs the model outputs ``f_train`` ``(n, ...)``, ``f_test`` ``(m, ...)``). ``ridge`` is
    the absolute ``λ``. Returns ``(m,)`` or ``(m, r)``.
    """
    K = to_numpy(K_train)
    Ks = to_numpy(K_test_train)
    y = to_numpy(y_train)
    n = K.shape[0]
    if K.shape != (n, n) or Ks.ndim != 2 or Ks.shape[1] != n or y.shape[0] != n:
        raise ValueError(f"shapes do not match: K_train {K.shape}, K_test_train {Ks.shape}, y_train {y.shape}")
    if mode == "expand":
        if f_train is None or f_test is None:
            raise ValueError("mode='expand' needs f_train and f_test")
        ft, fs = to_numpy(f_train).reshape(y.shape), to_numpy(f_test)
        rhs = y - ft
    elif mode == "pure":
        rhs, fs = y, None
    else:
        raise ValueError(f"unknown mode {mode!r}; use 'pure' or 'expand'")
    A = (K + K.T) / 2 + ridge * np.eye(n)
    try:
        alpha = scipy.linalg.solve(A, rhs, assume_a="sym")
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        alpha = np.linalg.lstsq(A, rhs, rcond=None)[0]
    out = Ks @ alpha
    if fs is not None:
        out = fs.reshape(out.shape) + out
    return out


def _mse(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean((pred - target) ** 2))


def linearised_check(
    K_train,
    K_test_train,
    Y_train,
    Y_test,
    F_train,
    F_test,
    *,
    ridge: float,
    mode: str = "expand",
    layout: str = "class",
    loss: str | Callable[[np.ndarray, np.ndarray], float] = "mse",
) -> dict[str, float]:
    """Compare the eNTK-linearised predictor with the model (spec §2.7).

    ``Y_train`` ``(N, C)`` regression targets; ``Y_test`` ``(M, C)`` targets or ``(M,)``
    class labels; ``F_train`` ``(N, C)``, ``F_test`` ``(M, C)`` model outputs. The kernels
    are in ``layout`` (``"class"``: flattened class-major ``(C·N, C·N)`` and
    ``(C·M, C·N)``; ``"sample"``: sample-major; ``"shared"``: one ``(N, N)`` kernel used
    for every output, e.g. a trace-reduced kernel). ``loss``: ``"mse"`` against the
    (one-hot if labels) targets, or a callable ``loss(outputs (M, C), Y_test)``.

    Returns ``{"r2", "acc_gap" (points, model − linearised), "loss_ratio"
    (linearised/model), "loss_lin", "loss_model", "acc_lin", "acc_model"}``.
    """
    Ft, Fs = to_numpy(F_train), to_numpy(F_test)
    if Ft.ndim == 1:
        Ft = Ft[:, None]
    if Fs.ndim == 1:
        Fs = Fs[:, None]
    C = Fs.shape[1]
    pred = kernel_regression(
        K_train, K_test_train, flatten_outputs(Y_train, layout),
        f_train=flatten_outputs(Ft, layout), f_test=flatten_outputs(Fs, layout),
        ridge=ridge, mode=mode,
    )
    lin = unflatten_outputs(pred, C, layout).reshape(Fs.shape)
    Yt = to_numpy(Y_test)
    if Yt.ndim == 1:
        labels = Yt.astype(np.int64)
        targets = np.eye(C)[labels]
    else:
        labels, targets = Yt.argmax(axis=1), Yt
    if callable(loss):
        loss_lin, loss_model = float(loss(lin, Yt)), float(loss(Fs, Yt))
    elif loss == "mse":
        loss_lin, loss_model = _mse(lin, targets), _mse(Fs, targets)
    else:
        raise ValueError(f"unknown loss {loss!r}")
    acc_lin = float(np.mean(lin.argmax(axis=1) == labels))
    acc_model = float(np.mean(Fs.argmax(axis=1) == labels))
    den = float(np.sum((Fs - Fs.mean()) ** 2))
    r2 = 1.0 - float(np.sum((lin - Fs) ** 2)) / den if den > 0 else float("nan")
    return {
        "r2": r2,
        "acc_gap": 100.0 * (acc_model - acc_lin),
        "loss_ratio": loss_lin / loss_model if loss_model > 0 else float("inf"),
        "loss_lin": loss_lin,
        "loss_model": loss_model,
        "acc_lin": acc_lin,
        "acc_model": acc_model,
    }
