"""TMS analysis: β-rescaled flattened eNTK spectra and feature heatmaps (spec §3.5-§3.6).

The flattened eNTK of a TMS model is ``K_β = D_β J Jᵀ D_β`` (``C·N × C·N``, class-major,
``C = n`` outputs, ``N`` training points) with ``D_β = diag(I_c^{β/2})`` repeated over the
``N`` rows of class ``c`` (:meth:`entk_core.families.tms.TMSFamily.class_weights`). Its
nonzero eigenvalues are those of the ``P × P`` Gram matrix ``Jᵀ D_β² J`` (``P = mn + n``),
and its eigenvectors are ``D_β J u / √λ``. Neither ``K_β`` nor ``J`` is formed here:

* per checkpoint, :class:`TMSStats` keeps the gated per-class moments of the data
  (``O(n³)`` numbers, kept in memory) from which ``Jᵀ D² J`` follows in closed form for
  any β (:meth:`TMSStats.gram`; tested equal to ``Jᵀ D² J`` from
  :func:`entk_core.engine.operators.flat_jacobian`). Caching the unscaled Jacobian instead and
  forming ``(DJ)ᵀ(DJ)`` per β took 0.2-0.4 s (m = 10) and 0.7-1.7 s (m = 40, 25,000 × 2,050)
  on 2 shared cores, even after dropping the all-zero rows of inactive ReLUs; the closed
  form takes 20-100 ms;
* a β change then costs one ``P × P`` top-``k`` eigendecomposition (LAPACK ``?syevx``
  subset driver, single-threaded: see :func:`_single_threaded_blas`; float32 above
  :data:`LARGE_P` parameters) and an ``(n, P) @ (P, k)`` product for the heatmap
  (:func:`heatmap_from_gram`).

Per-β results (eigenvalues, heatmap) are cached in the :class:`~entk_core.store.cache.ArrayCache`
under the checkpoint's sha256, group, β and k. ``python -m entk_core spectrum --reduction
flat --beta B`` (``entk_core.workflows.analysis.spectrum``, the generic Gram trick on the explicit
Jacobian) gives the same eigenvalues.

Heatmap: ``H[a, i]`` = column-normalised ``|cos|`` between the ground-truth vector of
feature ``a`` (:func:`entk_core.families.features.tms_feature_vectors`) and eigenvector ``i``, as
:func:`entk_core.engine.measures.cosine_heatmap`; ``best_feature[i] = argmax_a H[a, i]``.
Eigenvalues at or below ``1e-10 · λ_0`` (float32: ``100·eps·λ_0``; beyond the rank ``≤ P``)
are numerical zeros: their heatmap columns are zero.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import torch
from threadpoolctl import threadpool_limits

from ...engine.measures import best_feature
from ...engine.spectra import Cliff, detect_cliffs, labelled_cliffs
from ...store.cache import ArrayCache, default_cache, make_key
from ..base import FULL, check_beta
from ..run import Run
from .model import TMSConfig, represented_features

__all__ = ["TMSStats", "TMSSpectrum", "stats", "gram_top_eigenpairs", "heatmap_from_gram", "analyse",
           "sharpest_cliff", "align_report"]

ZERO_RTOL = 1e-10
LARGE_P = 1024
"""Gram matrices with more parameters than this (m = 40: P = 2,050) are built and decomposed in
float32: half the time of float64 (1.0 s vs 1.4-2.0 s on 2 busy cores) for a relative eigenvalue
error of ~1e-7 and eigenvectors with |cos| > 0.99999 to the float64 ones (measured on m = 40)."""
_MEM_ENTRIES = 8


@dataclass
class TMSStats:
    """Sufficient statistics of a TMS checkpoint on its training set, from which the Gram
    matrix ``Jᵀ D² J`` of the flattened Jacobian follows in closed form for any class weights.

    For ``y_c = ReLU(W_cᵀ W x + b_c)`` with gate ``g_cs = [pre_c(x_s) > 0]`` and ``h_s = W x_s``,
    row ``(c, s)`` of ``J`` is ``g_cs (W_c ⊗ x_s + h_s ⊗ e_c ; e_c)`` (parameters ``W`` row-major,
    then ``b``, the order of :func:`entk_core.engine.operators.flat_jacobian`). With the per-class
    gated moments ``S_c = Σ_s g_cs x_s x_sᵀ``, ``u_c = Σ_s g_cs x_s`` and ``cnt_c = Σ_s g_cs``:

    * ``G_WW[(k,i),(l,j)] = Σ_c ω_c W_kc W_lc S_c[i,j] + ω_j W_kj (W S_j)[l,i] + ω_i W_li (W S_i)[k,j]
      + δ_ij ω_i (W S_i Wᵀ)[k,l]``
    * ``G_Wb[(k,i), d] = ω_d (W_kd u_d[i] + δ_id (W u_d)[k])``, ``G_bb = diag(ω_d cnt_d)``

    (``ω_c = w_c²``). The heatmap needs ``Y[a] = J_aᵀ X[:, a]`` (unscaled), with
    ``Y[a][W(k,i)] = W_ka S_a[a,i] + δ_ia (W S_a)[k,a]`` and ``Y[a][b(d)] = δ_da u_a[a]``.
    """

    W: np.ndarray      # (m, n)
    S: np.ndarray      # (C, n, n)
    u: np.ndarray      # (C, n)
    cnt: np.ndarray    # (C,)
    xnorm: np.ndarray  # (n,) norms of the feature columns X[:, a]

    @classmethod
    def from_model(cls, model: torch.nn.Module, X: torch.Tensor) -> "TMSStats":
        with torch.no_grad():
            W = model.W.detach().double()
            b = model.b.detach().double()
            Xd = torch.as_tensor(X).double()
            g = (((Xd @ W.T) @ W + b) > 0).double().T  # (C, N)
        Xn = Xd.numpy()
        gn = g.numpy()
        S = np.einsum("cs,si,sj->cij", gn, Xn, Xn, optimize=True)
        return cls(W=W.numpy(), S=S, u=gn @ Xn, cnt=gn.sum(1), xnorm=np.linalg.norm(Xn, axis=0))

    @property
    def m(self) -> int:
        return self.W.shape[0]

    @property
    def n(self) -> int:
        return self.W.shape[1]

    def _slice(self, group: str) -> slice:
        mn = self.m * self.n
        return {FULL: slice(0, mn + self.n), "W": slice(0, mn), "b": slice(mn, mn + self.n)}[group]

    def n_params(self, group: str = FULL) -> int:
        s = self._slice(group)
        return s.stop - s.start

    def gram(self, weights=None, group: str = FULL, dtype=np.float64) -> np.ndarray:
        """``Jᵀ D² J`` over the parameters of ``group`` (``"full"``, ``"W"`` or ``"b"``), in ``dtype``."""
        m, n = self.m, self.n
        W, S, u = (a.astype(dtype, copy=False) for a in (self.W, self.S, self.u))
        om = (np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1) ** 2).astype(dtype)
        ar = np.arange(n)
        mn = m * n
        G = np.zeros((mn + n, mn + n), dtype=dtype)
        if group != "b":
            A = om[:, None, None] * W.T[:, :, None] * W.T[:, None, :]           # (C, m, m)
            T1 = (A.reshape(n, m * m).T @ S.reshape(n, n * n)).reshape(m, m, n, n)
            GW = T1.transpose(0, 2, 1, 3).copy()                                  # [k, i, l, j]
            HS = np.einsum("kj,jli->kilj", om * W, W @ S)                         # ω_j W_kj (W S_j)[l, i]
            GW += HS + HS.transpose(2, 3, 0, 1)
            GW[:, ar, :, ar] += om[:, None, None] * (W @ S @ W.T)                 # δ_ij ω_i (W S_i Wᵀ)[k, l]
            G[:mn, :mn] = GW.reshape(mn, mn)
        if group == FULL:
            GWb = np.einsum("d,kd,di->kid", om, W, u)
            GWb[:, ar, ar] += (om[:, None] * (u @ W.T)).T                         # δ_id ω_d (W u_d)[k]
            G[:mn, mn:] = GWb.reshape(mn, n)
            G[mn:, :mn] = G[:mn, mn:].T
        G[mn:, mn:] = np.diag(om * self.cnt.astype(dtype))
        return G[self._slice(group), self._slice(group)]

    def projections(self, group: str = FULL) -> np.ndarray:
        """``Y (n, P)``: row ``a`` = ``J_aᵀ X[:, a]`` (unscaled) over the parameters of ``group``."""
        m, n, W = self.m, self.n, self.W
        ar = np.arange(n)
        Sa = self.S[ar, ar, :]                                                  # S_a[a, i]   (n, n)
        YW = W.T[:, :, None] * Sa[:, None, :]                                   # (a, k, i)
        YW[ar, :, ar] += (W @ self.S)[ar, :, ar]                                # (W S_a)[k, a]
        Y = np.concatenate([YW.reshape(n, m * n), np.diag(self.u[ar, ar])], axis=1)
        return Y[:, self._slice(group)]


_mem: "OrderedDict[str, TMSStats]" = OrderedDict()
_mem_lock = threading.Lock()


def _base(run: Run, epoch: int, group: str) -> dict[str, Any]:
    return {"family": run.family.name, "config": asdict(run.config), "checkpoint": run.checkpoint_sha(epoch),
            "group": group}


def _require_tms(run: Run) -> None:
    if not isinstance(run.config, TMSConfig):
        raise ValueError(f"run '{run.name}' is a {run.family.name} run, not a TMS run")


def stats(run: Run, epoch: int | None = None, *, model: torch.nn.Module | None = None) -> TMSStats:
    """The :class:`TMSStats` of ``run`` at ``epoch`` (kept in memory, keyed by the checkpoint's sha256)."""
    _require_tms(run)
    epoch = run.resolve_epoch(epoch)
    key = f"{run.path}|{epoch}|{run.checkpoint_sha(epoch)}"
    with _mem_lock:
        if key in _mem:
            _mem.move_to_end(key)
            return _mem[key]
    m = model if model is not None else run.load_model(epoch)
    st = TMSStats.from_model(m, run.data.kernel_x)
    with _mem_lock:
        _mem[key] = st
        while len(_mem) > _MEM_ENTRIES:
            _mem.popitem(last=False)
    return st


def _single_threaded_blas():
    """Run BLAS/LAPACK on one thread (threadpoolctl). A 550 x 550 subset ``?syevx`` is too
    small to gain from threads, and on a busy 2-core machine spinning threads made it 5-50x
    slower (0.4-6 s against 0.06-0.12 s)."""
    return threadpool_limits(limits=1, user_api="blas")


def gram_top_eigenpairs(G: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` eigenpairs of a symmetric PSD ``(P, P)`` Gram matrix: ``(vals (k,), U (P, k))``,
    descending, float64; numerical zeros (``<= 1e-10·λ_0`` in float64, ``<= 100·eps·λ_0`` in
    float32, and any ``k`` beyond ``P``) get eigenvalue 0 and a zero vector."""
    P = G.shape[0]
    k = max(1, int(k))
    kk = min(k, P)
    vals, U = np.zeros(k), np.zeros((P, k))
    if P == 0:
        return vals, U
    G = (G + G.T) * 0.5
    with _single_threaded_blas():
        lam, V = scipy.linalg.eigh(G, subset_by_index=[P - kk, P - 1], driver="evx", check_finite=False)
    lam, V = lam[::-1].astype(np.float64), V[:, ::-1].astype(np.float64)
    rtol = max(ZERO_RTOL, 100 * float(np.finfo(G.dtype).eps))
    ok = lam > rtol * max(lam[0], 0.0)
    vals[:kk] = np.where(ok, lam, 0.0)
    U[:, :kk] = np.where(ok[None, :], V, 0.0)
    return vals, U


def heatmap_from_gram(Y: np.ndarray, xnorm: np.ndarray, weights, vals: np.ndarray, U: np.ndarray) -> np.ndarray:
    """Column-normalised ``|cos|`` heatmap ``(n, k)`` of the flattened eigenvectors
    ``e_i = D J u_i / √λ_i`` (unit) against the feature vectors ``z_a`` (``‖z_a‖ = ‖X[:, a]‖``):
    ``<z_a, e_i> = w_a (Y[a] · u_i) / √λ_i``. Equals :func:`entk_core.engine.measures.cosine_heatmap`
    on the explicit eigenvectors."""
    n = Y.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    root = np.sqrt(np.where(vals > 0, vals, np.inf))
    H = np.abs((w / np.where(xnorm > 0, xnorm, np.inf))[:, None] * (Y @ U) / root[None, :])
    norms = np.linalg.norm(H, axis=0)
    return H / np.where(norms > 0, norms, 1.0)


def sharpest_cliff(cliffs: list[Cliff]) -> Cliff | None:
    """The detected cliff with the largest drop ratio (``None`` without cliffs)."""
    return max(cliffs, key=lambda c: c.ratio) if cliffs else None


@dataclass
class TMSSpectrum:
    """β-rescaled flattened spectrum of one TMS checkpoint and its feature heatmap.

    ``eigenvalues (k,)``, ``heatmap (n, k)`` (column-normalised ``|cos|``),
    ``best_feature (k,)`` and ``max_cosine (k,)`` (column maxima of the heatmap).
    """

    beta: float
    group: str
    eigenvalues: np.ndarray
    cliffs: list[Cliff]
    heatmap: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def best_feature(self) -> np.ndarray:
        return best_feature(self.heatmap)

    @property
    def max_cosine(self) -> np.ndarray:
        return self.heatmap.max(axis=0) if self.heatmap.size else np.zeros(0)

    @property
    def sharpest(self) -> Cliff | None:
        return sharpest_cliff(self.cliffs)

    def in_order(self, upto: int | None = None) -> int:
        """How many of eigenvectors ``0 .. upto−1`` (default ``min(k, n)``) match feature ``i`` exactly."""
        bf = self.best_feature
        upto = min(len(bf), self.heatmap.shape[0]) if upto is None else min(int(upto), len(bf))
        return int((bf[:upto] == np.arange(upto)).sum())


def analyse(run: Run, epoch: int | None = None, *, beta: float = 0.0, top: int | None = None,
            group: str = FULL, model: torch.nn.Module | None = None,
            cache: ArrayCache | None = None) -> TMSSpectrum:
    """β-rescaled top-``top`` spectrum and feature heatmap of ``run`` at ``epoch``, cached."""
    t_start = time.perf_counter()
    _require_tms(run)
    epoch = run.resolve_epoch(epoch)
    beta = check_beta(beta)
    top = int(top or run.family.default_top)
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    run.group_members(group)  # validates the group
    cache = cache or default_cache()
    key = make_key("tms-spectrum", **_base(run, epoch, group), beta=round(beta, 6), top=top)

    def compute():
        t0 = time.perf_counter()
        st = stats(run, epoch, model=model)
        w = run.family.class_weights(run.config, beta).double().numpy()
        dtype = np.float32 if st.n_params(group) > LARGE_P else np.float64
        with _single_threaded_blas():
            G = st.gram(w, group, dtype=dtype)
            t1 = time.perf_counter()
            vals, U = gram_top_eigenpairs(G, top)
            t2 = time.perf_counter()
            H = heatmap_from_gram(st.projections(group), st.xnorm, w, vals, U)
        return {"eigenvalues": vals, "heatmap": H}, {
            "gram_s": round(t1 - t0, 4), "eig_s": round(t2 - t1, 4),
            "heatmap_s": round(time.perf_counter() - t2, 4), "P": int(G.shape[0]), "dtype": np.dtype(dtype).name,
        }

    entry = cache.get_or_compute(key, compute)
    vals = entry["eigenvalues"]
    meta = {"run": run.name, "epoch": epoch, "top": int(len(vals)), "n": int(entry["heatmap"].shape[0]),
            "cache": entry.meta.get("cache"), **{k: v for k, v in entry.meta.items() if k != "cache"},
            "total_s": round(time.perf_counter() - t_start, 4)}
    return TMSSpectrum(beta=beta, group=group, eigenvalues=vals, cliffs=detect_cliffs(vals),
                       heatmap=entry["heatmap"], meta=meta)


def align_report(run: Run, epoch: int | None = None, *, beta: float | None = None, group: str | None = None,
                 top: int | None = None, cache: ArrayCache | None = None) -> dict[str, Any]:
    """JSON report for ``python -m entk_core align`` on a TMS run (β defaults to 0: no rescaling,
    like ``spectrum`` without ``--beta``)."""
    epoch = run.resolve_epoch(epoch)
    res = analyse(run, epoch, beta=0.0 if beta is None else beta, top=top, group=group or FULL,
                  cache=cache)
    vals = res.eigenvalues
    pos = vals[vals > 0]
    ratios = pos[:-1] / pos[1:] if len(pos) > 1 else np.zeros(0)
    sharp = res.sharpest
    n = res.heatmap.shape[0]
    upto = min(n, len(vals))
    W = run.load_state(epoch)["W"]
    return {
        "beta": res.beta,
        "group": res.group,
        "top": int(len(vals)),
        "n_features": n,
        "represented_features": represented_features(W),
        "eigenvalues": [float(v) for v in vals],
        "cliffs": labelled_cliffs(res.cliffs, None),
        "sharpest_cliff": sharp.to_dict() if sharp else None,
        "largest_drop": {"after": int(np.argmax(ratios)), "ratio": float(ratios.max())} if ratios.size else None,
        "best_feature": [int(i) for i in res.best_feature],
        "max_cosine": [round(float(v), 4) for v in res.max_cosine],
        "mean_max_cosine": float(res.max_cosine[:upto].mean()) if upto else None,
        "in_order": {"matched": res.in_order(), "of": upto,
                     "description": f"eigenvectors i < {upto} whose best feature is i"},
        "timing": {k: res.meta.get(k) for k in ("gram_s", "eig_s", "heatmap_s", "total_s")},
        "cache": res.meta.get("cache"),
    }
