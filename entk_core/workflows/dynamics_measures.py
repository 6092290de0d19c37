"""One checkpoint's kernel and the measures that need no other kernel (the per-checkpoint half
of :mod:`entk_core.workflows.dynamics`, which documents the fields and formulas).

:func:`checkpoint_unit` is the unit a worker runs: it opens the run
(:func:`entk_core.workflows.checkpoint_units.open_unit_run`), computes the kernel
(:func:`compute_checkpoint_kernel`: the reduced kernel, or for a flattened kernel with fewer
parameters than rows its Jacobian, ``K = J Jᵀ``) and :func:`measure_kernel`, and returns both
to the driver, which caches them under :func:`kernel_store_key` and :func:`checkpoint_key`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse.linalg
import torch
from threadpoolctl import threadpool_limits

from ..engine import kernel_measures as km
from ..engine.kernels import param_group
from ..engine.measures import kernel_regression
from ..engine.operators import flat_jacobian
from ..engine.spectra import detect_cliffs, labelled_cliffs
from ..families.base import FULL
from ..families.run import Run
from ..store.cache import make_key
from . import analysis
from .checkpoint_units import open_unit_run
from .sweep_result import json_number

__all__ = ["Request", "request", "checkpoint_key", "kernel_store_key", "compute_checkpoint_kernel", "pack_kernel",
           "unpack_kernel", "measure_kernel", "checkpoint_unit", "DYNAMICS_FORMAT", "FULL_SPECTRUM_MAX",
           "DEFAULT_RIDGE"]

DYNAMICS_FORMAT = 2
"""Version of the cached layouts (part of their keys)."""

FULL_SPECTRUM_MAX = 4096
"""Kernels with at most this many rows get all their eigenvalues (the effective rank uses all)."""

DEFAULT_RIDGE = 1e-6
"""Kernel regression's ridge, relative to the mean of the train kernel's diagonal."""

# ------------------------------------------------------------------ the request
@dataclass(frozen=True)
class Request:
    group: str
    reduction: str
    top: int
    n: int
    ridge: float
    factored: bool  # a "flat" kernel with fewer parameters than rows: kept as its Jacobian (K = J Jᵀ)
    n_params: int  # parameters of the group (columns of that Jacobian)

    def options(self) -> dict[str, Any]:
        return {"group": self.group, "reduction": self.reduction, "top": self.top, "ridge": self.ridge}


def request(run: Run, group: str | None, reduction: str | None, top: int | None, ridge: float) -> Request:
    group = group or FULL
    reduction = analysis.check_reduction(run, reduction)
    run.group_members(group)  # ValueError naming the groups
    n = analysis.kernel_size(run, reduction)
    top = min(run.family.default_top, n) if top is None else int(top)
    if not 1 <= top <= n:
        raise ValueError(f"top must be between 1 and n = {n} (the kernel's size), got {top}")
    if not (math.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
    n_params = _n_params(run, group)
    return Request(group, reduction, top, n, float(ridge), reduction == "flat" and n_params < n, n_params)


def _n_params(run: Run, group: str) -> int:
    members = run.group_members(group)
    model = run.family.build_model(run.config)
    return sum(p.numel() for name, p in model.named_parameters() if members is None or param_group(name) in members)


def checkpoint_key(run: Run, epoch: int, req: Request) -> str:
    """Cache key of one checkpoint's measures (everything but the distances)."""
    return make_key("dynamics-checkpoint", format=DYNAMICS_FORMAT, family=run.family.name, config=asdict(run.config),
                    checkpoint=run.checkpoint_sha(epoch), **req.options())


# ------------------------------------------------------------ one checkpoint
def kernel_store_key(run: Run, epoch: int, req: Request) -> str:
    """Where a checkpoint's kernel is cached: :func:`analysis.kernel_key` (shared with
    ``kernel_matrix``), or for a factored flat kernel its Jacobian's key."""
    if req.factored:
        return make_key("flat-jacobian", family=run.family.name, config=asdict(run.config),
                        checkpoint=run.checkpoint_sha(epoch), group=req.group)
    return analysis.kernel_key(run, epoch, group=req.group, reduction=req.reduction)


def compute_checkpoint_kernel(run: Run, epoch: int, req: Request) -> np.ndarray | km.Gram:
    if req.factored:
        J = flat_jacobian(run.load_model(epoch), run.data.kernel_x, groups=run.group_members(req.group))
        return km.Gram(J.detach().cpu().numpy())
    return analysis.compute_kernel(run, epoch, group=req.group, reduction=req.reduction)


def pack_kernel(K: np.ndarray | km.Gram) -> dict[str, np.ndarray]:
    return {"J": K.J} if isinstance(K, km.Gram) else {"K": K}


def unpack_kernel(entry) -> np.ndarray | km.Gram:
    return km.Gram(entry["J"]) if "J" in entry else entry["K"]


def _n_outputs(run: Run) -> int:
    with torch.no_grad():
        return int(run.family.build_model(run.config)(run.data.kernel_x[:1]).shape[-1])


def _kernel_targets(run: Run, reduction: str) -> tuple[np.ndarray | None, str | None]:
    """The targets of the kernel's rows, ``(rows, r)``, or ``(None, why not)``."""
    C = _n_outputs(run)
    T = run.family.targets(run.config, run.data, C)
    if T is None:
        return None, (f"the {run.family.name} family declares no targets for its inputs "
                      f"(its y has shape {list(run.data.y.shape)}: neither class labels nor (N, {C}) regression targets)")
    Y = np.asarray(T.detach().cpu().numpy() if hasattr(T, "detach") else T, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    Y = Y[run.data.kernel_idx.numpy()]
    if reduction == "flat":
        if Y.shape[1] != C:
            return None, f"the targets have {Y.shape[1]} columns, the flattened kernel needs one per output ({C})"
        Y = Y.T.reshape(-1, 1)  # class-major, as the flattened kernel's rows
    return Y, None


def _regression_split(run: Run, reduction: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | str:
    """``(train rows, test rows, test labels, C)`` in the kernel, or why there is no accuracy."""
    fam, data = run.family, run.data
    y = data.y
    if not fam.offers("accuracy") or y.ndim != 1 or y.is_floating_point() or y.dtype == torch.bool:
        return f"the {fam.name} family has no class labels (no accuracy to compare)"
    pos = {int(i): r for r, i in enumerate(data.kernel_idx.tolist())}
    tr = np.array([pos[int(i)] for i in data.train_idx.tolist() if int(i) in pos], dtype=np.int64)
    te = np.array([pos[int(i)] for i in data.test_idx.tolist() if int(i) in pos], dtype=np.int64)
    if tr.size == 0 or te.size == 0:
        which = "training" if tr.size == 0 else "test"
        return f"the kernel inputs of the {fam.name} family include no {which} examples"
    labels = y[data.kernel_idx].numpy().astype(np.int64)
    return tr, te, labels[te], _n_outputs(run)


def _regression_accuracy(K: np.ndarray | km.Gram, Y: np.ndarray, split, reduction: str, ridge: float) -> float:
    tr, te, labels, C = split
    N = K.shape[0] // C if reduction == "flat" else K.shape[0]
    if reduction == "flat":  # class-major rows c·N + n
        rows_tr = (np.arange(C)[:, None] * N + tr[None, :]).reshape(-1)
        rows_te = (np.arange(C)[:, None] * N + te[None, :]).reshape(-1)
        y_tr = Y[rows_tr, 0]
    else:
        rows_tr, rows_te, y_tr = tr, te, Y[tr]
    if isinstance(K, km.Gram):  # ridge regression in parameter space: the same predictor for λ > 0
        J_tr = K.J[rows_tr].astype(np.float64)
        J_te = K.J[rows_te].astype(np.float64)
        lam = ridge * float(np.mean(np.sum(J_tr * J_tr, axis=1)))
        A = J_tr.T @ J_tr + lam * np.eye(J_tr.shape[1])
        pred = J_te @ np.linalg.lstsq(A, J_tr.T @ y_tr, rcond=None)[0]
    else:
        K_tr = K[np.ix_(rows_tr, rows_tr)].astype(np.float64)
        K_te = K[np.ix_(rows_te, rows_tr)].astype(np.float64)
        lam = ridge * float(np.mean(np.diag(K_tr)))
        pred = kernel_regression(K_tr, K_te, y_tr, ridge=lam, mode="pure")
    if reduction == "flat":
        pred = pred.reshape(C, te.size).T
    return float(np.mean(pred.argmax(axis=1) == labels))


def _eigenvalues(K: np.ndarray | km.Gram, top: int) -> tuple[np.ndarray, bool]:
    """Descending eigenvalues: all of them (``True``) up to :data:`FULL_SPECTRUM_MAX` rows,
    else the top ``top``. A Gram kernel's come from ``JᵀJ`` (the rest are zeros)."""
    n = K.shape[0]
    if isinstance(K, km.Gram):
        vals = np.linalg.eigvalsh(K.small())[::-1]
        vals = np.concatenate([vals, np.zeros(max(0, n - vals.size))])[:n]
        return (vals, True) if n <= FULL_SPECTRUM_MAX else (vals[:top].copy(), False)
    S = np.asarray(K, dtype=np.float64)
    S = (S + S.T) / 2
    if n <= FULL_SPECTRUM_MAX:  # LAPACK's divide and conquer (?syevd), as torch's eigvalsh
        return np.linalg.eigvalsh(S)[::-1].copy(), True
    vals = scipy.sparse.linalg.eigsh(S, k=top, which="LA", v0=np.ones(n), return_eigenvectors=False)
    return np.sort(vals)[::-1].copy(), False


def _top_vector(K: np.ndarray | km.Gram) -> np.ndarray:
    """The top eigenvector (Lanczos from the all-ones vector: deterministic)."""
    if isinstance(K, km.Gram):
        w, U = np.linalg.eigh(K.small())
        v = K.J.astype(np.float64) @ U[:, -1]
        return v / max(float(np.linalg.norm(v)), 1e-300)
    S = np.asarray(K, dtype=np.float64)
    _, v = scipy.sparse.linalg.eigsh((S + S.T) / 2, k=1, which="LA", v0=np.ones(S.shape[0]))
    return v[:, 0]


def measure_kernel(run: Run, K: np.ndarray | km.Gram, *, reduction: str, top: int, ridge: float = DEFAULT_RIDGE
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The measures of one checkpoint's kernel ``K`` that need no other kernel:
    ``({"eigenvalues"}, {"norm", "target_alignment", "effective_rank", "cliffs",
    "kernel_regression_test_accuracy", "all_eigenvalues", "notes"})`` (module docstring).
    numpy's BLAS and LAPACK run on one thread here (torch's threads are left alone): these
    are small products, solves and ``N ≤ 4096`` eigendecompositions, which a second thread
    barely speeds up on a quiet machine while spinning threads slow them 10-100x on a busy one;
    one thread also makes the numbers identical whichever executor ran the unit."""
    with threadpool_limits(limits=1, user_api="blas"):
        return _measure_kernel(run, K, reduction=reduction, top=top, ridge=ridge)


def _measure_kernel(run: Run, K: np.ndarray | km.Gram, *, reduction: str, top: int, ridge: float
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    t0 = time.perf_counter()
    vals, full = _eigenvalues(K, top)
    topv = vals[:top]
    cliffs = detect_cliffs(topv)
    vecs = None
    if cliffs and cliffs[0].start == 0 and cliffs[0].size == 1:  # the constant mode? needs the top vector
        vecs = _top_vector(K)[:, None]  # (labelled_cliffs tests it)
    notes: dict[str, str] = {}
    Y, why = _kernel_targets(run, reduction)
    if Y is None:
        notes["target_alignment"] = why
        alignment = None
    else:
        alignment = json_number(km.centred_alignment(K, Y))
    split = _regression_split(run, reduction)
    if isinstance(split, str):
        notes["kernel_regression_test_accuracy"] = split
        kr = None
    elif Y is None:
        notes["kernel_regression_test_accuracy"] = why
        kr = None
    else:
        kr = _regression_accuracy(K, Y, split, reduction, ridge)
    meta = {
        "norm": km.frobenius_norm(K),
        "target_alignment": alignment,
        "effective_rank": json_number(km.effective_rank(vals)),
        "all_eigenvalues": bool(full),
        "cliffs": labelled_cliffs(cliffs, vecs),
        "kernel_regression_test_accuracy": kr,
        "notes": notes,
        "measure_s": round(time.perf_counter() - t0, 4),
    }
    return {"eigenvalues": topv}, meta


def checkpoint_unit(*, epoch: int, group: str, reduction: str, top: int, ridge: float, family: str,
                    family_ref: str | None = None, run_path: str | None = None, manifest: dict | None = None,
                    checkpoint: bytes | None = None) -> dict[str, Any]:
    """Unit: one checkpoint's kernel and :func:`measure_kernel`, touching no cache. Returns
    ``{"kernel": {"K": kernel} or {"J": Jacobian}, "arrays": {...}, "meta": {...}}`` (the
    driver caches both)."""
    with open_unit_run(epoch=epoch, family=family, family_ref=family_ref, run_path=run_path, manifest=manifest,
                       checkpoint=checkpoint) as run:
        t0 = time.perf_counter()
        req = request(run, group, reduction, top, ridge)
        K = compute_checkpoint_kernel(run, epoch, req)
        kernel_s = time.perf_counter() - t0
        arrays, meta = measure_kernel(run, K, reduction=reduction, top=top, ridge=ridge)
    meta["kernel_s"] = round(kernel_s, 4)
    return {"kernel": pack_kernel(K), "arrays": arrays, "meta": meta}
