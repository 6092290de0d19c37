"""Baselines for the alignment measures: the top principal directions of a model's hidden
activations (PCA) and random subspaces, over the same inputs as the eNTK.

Convention: the eNTK's eigenvectors are vectors over the kernel inputs (``N`` rows, the
order of ``run.data.kernel_x``), and so are the feature families. The PCA baseline is
expressed the same way: with ``H`` the ``(N, d)`` hidden activations declared by the family
(:meth:`entk_core.families.base.ModelFamily.hidden_activations`), centred over the inputs,
``H_c = U S Vᵀ``; its ``k`` top principal directions *over the inputs* are the first ``k``
columns of ``U`` (the unit-norm principal-component scores). Given the same budget ``k``
as an eNTK window (its size) they are measured with the same overlap
(:func:`entk_core.workflows.sweep.windows_overlaps`, ``‖QᵀF‖²_F`` against the mean-centred
families). A random baseline is an orthonormal basis of ``k`` seeded Gaussian vectors.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

__all__ = ["hidden_activations", "pca_directions", "random_directions", "baseline_info", "RANDOM_STREAM"]

RANDOM_STREAM = 0x5EED_BA5E
"""Second word of the random baseline's seed."""


def hidden_activations(run, epoch: int, *, model: torch.nn.Module | None = None) -> np.ndarray | None:
    """The family's hidden activations ``(N, d)`` (float64) of the model at ``epoch`` on the
    kernel inputs, or ``None`` when the family declares none."""
    fam = run.family
    if not fam.offers("pca"):
        return None
    m = model if model is not None else run.load_model(epoch)
    with torch.no_grad():
        H = fam.hidden_activations(m, run.data.kernel_x)
    if H is None:
        return None
    H = H.detach().double().reshape(H.shape[0], -1).cpu().numpy()
    if not np.isfinite(H).all():
        raise ValueError("the hidden activations contain NaN or inf")
    return H


_PCA_MEMO: "OrderedDict[str, np.ndarray]" = OrderedDict()
_PCA_LOCK = threading.Lock()
_PCA_MEMO_SIZE = 8


def _principal_basis(H: np.ndarray) -> np.ndarray:
    """Every principal direction of ``H`` ``(N, d)`` float64 over the inputs, sign-fixed,
    read-only; the last few are kept in memory (keyed by a digest of ``H``), since the pages
    ask for the same checkpoint's directions on every rerun and the SVD is most of their time."""
    key = f"{H.shape}:{hashlib.sha1(np.ascontiguousarray(H).tobytes(), usedforsecurity=False).hexdigest()}"
    with _PCA_LOCK:
        if key in _PCA_MEMO:
            _PCA_MEMO.move_to_end(key)
            return _PCA_MEMO[key]
    Hc = H - H.mean(axis=0, keepdims=True)
    U, s, _ = np.linalg.svd(Hc, full_matrices=False)
    r = int((s > 1e-10 * max(s[0], 1e-300)).sum()) if s.size else 0
    U = U[:, :r]
    sign = np.sign(U[np.argmax(np.abs(U), axis=0), np.arange(U.shape[1])])
    U = U * np.where(sign == 0, 1.0, sign)
    U.flags.writeable = False
    with _PCA_LOCK:
        _PCA_MEMO[key] = U
        while len(_PCA_MEMO) > _PCA_MEMO_SIZE:
            _PCA_MEMO.popitem(last=False)
    return U


def pca_directions(H: np.ndarray, k: int) -> np.ndarray:
    """The top-``k`` principal directions over the inputs of ``H`` ``(N, d)``: ``(N, k)``
    orthonormal columns (left singular vectors of the centred ``H``; fewer when the rank is
    smaller). Signs are fixed so that each column's largest entry is positive. The SVD of a
    recently seen ``H`` is reused (every ``k`` is a slice of the same directions)."""
    U = _principal_basis(np.asarray(H, dtype=np.float64))
    return U[:, : min(int(k), U.shape[1])].copy()


def random_directions(n: int, k: int, seed: int = 0) -> np.ndarray:
    """``(n, k)`` orthonormal columns spanning a seeded random Gaussian subspace (its own
    stream, ``default_rng([seed, RANDOM_STREAM])``, so it never repeats data drawn from a
    plain ``default_rng(seed)``)."""
    g = np.random.default_rng([int(seed), RANDOM_STREAM])
    Q, _ = np.linalg.qr(g.standard_normal((n, k)))
    return Q


def baseline_info(H: np.ndarray | None) -> dict[str, Any]:
    """Facts about the PCA baseline for reports: ``{"dim": d, "rank": r}`` or ``None``-valued."""
    if H is None:
        return {"dim": None, "rank": None}
    s = np.linalg.svd(H - H.mean(axis=0, keepdims=True), compute_uv=False)
    return {"dim": int(H.shape[1]), "rank": int((s > 1e-10 * max(s[0] if s.size else 0, 1e-300)).sum())}

