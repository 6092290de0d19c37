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
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

__all__ = ["hidden_activations", "pca_directions", "random_directions", "baseline_info", "RANDOM_STREAM",
           "PcaProfile", "pca_profile", "pca_profile_key", "PCA_PROFILE_FORMAT"]

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



# ------------------------------------------------------------- over training
PCA_PROFILE_FORMAT = 1
"""Version of the cached PCA profile layout (part of its cache key)."""


class PcaProfile:
    """The PCA baseline over training for every budget and every feature family at once
    (:func:`pca_profile`).

    ``contrib[e, j, f]`` is ``‖u_jᵀ F_f‖²``: the share of mean-centred family ``f`` (an
    orthonormal basis ``F_f``) along principal direction ``j`` of checkpoint ``e``'s hidden
    activations. The directions are orthonormal, so the overlap of the top-``k`` directions
    with a family, ``‖U_kᵀF_f‖²_F``, is the sum of the first ``k`` contributions: one SVD per
    checkpoint answers every window size and every choice of families. ``rank[e]``: how many
    directions checkpoint ``e`` has (a budget above it uses them all, as
    :func:`pca_directions` does)."""

    def __init__(self, contrib: np.ndarray, rank: np.ndarray, families: list[str], meta: dict[str, Any]):
        self.contrib, self.rank, self.families, self.meta = contrib, rank, list(families), meta
        self._cum = np.cumsum(contrib, axis=1)

    def overlaps(self, sizes, families) -> np.ndarray:
        """``(E, len(sizes), len(families))``: the overlap of the top-``size`` principal
        directions with each family at every checkpoint. ``ValueError`` for a family the
        run does not have."""
        missing = [f for f in families if f not in self.families]
        if missing:
            raise ValueError(f"unknown feature families {missing}; choose from {', '.join(self.families)}")
        fi = [self.families.index(f) for f in families]
        E = self.contrib.shape[0]
        out = np.zeros((E, len(sizes), len(fi)))
        for j, k in enumerate(sizes):
            take = np.minimum(int(k), self.rank)  # (E,)
            for e in range(E):
                if take[e] > 0:
                    out[e, j] = self._cum[e, take[e] - 1, fi]
        return out


def pca_profile_key(run) -> str:
    """The cache key of :func:`pca_profile` (the run's family, config and every checkpoint's sha256)."""
    import json
    from dataclasses import asdict

    from ..store.cache import make_key

    digest = hashlib.sha256(json.dumps([(e, run.checkpoint_sha(e)) for e in run.epochs]).encode()).hexdigest()
    return make_key("pca-profile", format=PCA_PROFILE_FORMAT, family=run.family.name, config=asdict(run.config),
                    checkpoints=digest)


def pca_profile(run, *, cache=None, progress=None) -> PcaProfile:
    """The :class:`PcaProfile` of ``run``: at every checkpoint, the hidden activations'
    principal directions over the kernel inputs and their overlap with each feature family
    whose rows match the kernel inputs (the families of the run's final model). Cached once
    per run (keyed by every checkpoint's sha256): it depends on neither the layer group nor
    the families a view picks. ``ValueError`` if the family declares no hidden activations.
    ``progress(done, total, message)`` after each checkpoint."""
    from ..engine.measures import family_bases
    from ..families.features import families_with_rows
    from ..store.cache import default_cache

    if not run.family.offers("pca"):
        raise ValueError(f"the {run.family.name} family declares no hidden activations (no PCA baseline)")
    cache = cache or default_cache()
    key = pca_profile_key(run)

    def compute():
        t0 = time.perf_counter()
        last = run.load_model(run.epochs[-1])
        fams = families_with_rows(run.family.feature_families(run.config, run.data, last), len(run.data.kernel_idx))
        bases = family_bases(fams)
        names = list(bases)
        rows = []
        for i, e in enumerate(run.epochs):
            U = pca_directions(hidden_activations(run, e, model=last if e == run.epochs[-1] else None), 10**9)
            rows.append(np.stack([((U.T @ bases[f]) ** 2).sum(axis=1) for f in names], axis=1)
                        if names else np.zeros((U.shape[1], 0)))
            if progress:
                progress(i + 1, len(run.epochs), f"PCA at epoch {e}")
        R = max((r.shape[0] for r in rows), default=0)
        contrib = np.zeros((len(rows), R, len(names)))
        for i, r in enumerate(rows):
            contrib[i, :r.shape[0]] = r
        rank = np.array([r.shape[0] for r in rows], dtype=np.int64)
        return {"contrib": contrib, "rank": rank}, {"families": names, "compute_s": round(time.perf_counter() - t0, 3)}

    entry = cache.get_or_compute(key, compute)
    return PcaProfile(entry["contrib"], entry["rank"], entry.meta["families"], entry.meta)
