"""Baselines beside PCA, on the same activations and the same budget (spec §6.5's protocol).

Every baseline gives per-context scores ``(m, N)`` of ``m`` candidate directions; the
evaluation then picks, per label, the best direction and sign by train average precision
and reports it on the test half, exactly as for the eNTK and PCA.

* **ICA** (:func:`ica_scores`): scikit-learn ``FastICA`` on the layer's last-token hidden
  states ``H`` ``(N, d)`` (the PCA baseline's activations), ``k`` components (the budget),
  unit-variance whitening, seeded; the scores are the recovered sources. A run that stops
  at ``max_iter`` without meeting its tolerance is kept and flagged ``converged: false``.
* **Random** (:func:`random_scores`): ``draws`` sets of ``k`` random unit directions in
  ``d``-space (seeded Gaussian, normalised), the scores are projections of the centred
  ``H``; the evaluation reports the mean over draws.
* **SAE**: a TopK sparse autoencoder trained on the layer's activations over every token of
  the probe windows (:mod:`.sae`).
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["ica_scores", "random_scores", "RANDOM_DRAWS"]

RANDOM_DRAWS = 20


def ica_scores(H: np.ndarray, k: int, seed: int = 0, max_iter: int = 1000, tol: float = 1e-4) -> dict[str, Any]:
    """FastICA sources of ``H`` ``(N, d)``: ``{"scores": (k, N), "converged", "n_iter"}``."""
    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    X = np.asarray(H, dtype=np.float64)
    k = int(min(k, X.shape[0] - 1, X.shape[1]))
    ica = FastICA(n_components=k, whiten="unit-variance", random_state=seed, max_iter=max_iter, tol=tol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        S = ica.fit_transform(X)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    S = S.T.copy()
    for i in range(S.shape[0]):  # the sign of a component is arbitrary: largest entry positive, as PCA's
        if S[i][np.argmax(np.abs(S[i]))] < 0:
            S[i] = -S[i]
    return {"scores": S, "converged": bool(converged), "n_iter": int(ica.n_iter_), "max_iter": max_iter}


def random_scores(H: np.ndarray, k: int, draws: int = RANDOM_DRAWS, seed: int = 0) -> np.ndarray:
    """Projections of the centred ``H`` ``(N, d)`` on ``draws`` sets of ``k`` random unit
    directions: ``(draws, k, N)``."""
    X = np.asarray(H, dtype=np.float64)
    X = X - X.mean(0, keepdims=True)
    rng = np.random.default_rng([seed, 0x5EED])
    D = rng.standard_normal((draws, k, X.shape[1]))
    D /= np.linalg.norm(D, axis=2, keepdims=True)
    return np.einsum("rkd,nd->rkn", D, X)
