"""Cached high-level operations shared by the CLI and the dashboard.

Every result is keyed by everything it depends on (the checkpoint's sha256, the run's
family and config, the layer group, reduction, k, β, dtype and
:data:`entk_core.store.cache.CODE_VERSION`) and stored in the :class:`~entk_core.store.cache.ArrayCache`.

Kernel rows are the family's kernel inputs (``run.data.kernel_x``) in their dataset
order (``a*p + b`` for modular arithmetic); flattened kernels are class-major.

A family's analysis code reaches these through
:class:`entk_core.workflows.services.Services` (dependency injection).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..engine import eigenpairs, kernels
from ..engine.eigenpairs import top_eigenpairs
from ..engine.machine import eigh_seconds, machine_rates
from ..engine.spectra import Cliff, detect_cliffs, labelled_cliffs
from ..families.base import FULL, check_beta
from ..families.run import Run
from ..store.cache import ArrayCache, default_cache, make_key

__all__ = ["SpectrumResult", "kernel_groups", "kernel_size", "spectrum", "spectrum_key", "compute_spectrum", "kernel_matrix",
           "kernel_key", "kernel_cached", "compute_kernel", "check_reduction", "REDUCTIONS", "FULL"]

REDUCTIONS = tuple(r for r in kernels.REDUCTIONS if r not in ("full", "block"))
"""Reductions offered by the CLI and dashboard: the engine's (:data:`entk_core.engine.kernels.REDUCTIONS`)
without ``"full"`` (4-D kernels) and ``"block"`` (needs a class pair), which are library-only."""

Progress = Callable[[int, int, str], None]


@dataclass
class SpectrumResult:
    """Top-k spectrum of one kernel.

    ``eigenvalues``: ``(k,)`` descending; ``eigenvectors``: ``(n, k)`` or ``None``;
    ``cliffs``: detected cliffs (see :func:`entk_core.engine.spectra.detect_cliffs`).
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray | None
    cliffs: list[Cliff]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """One label per cliff (:func:`entk_core.engine.spectra.label_cliffs`): ``"constant"``
        for the constant mode, then ``"cliff 1"``, ``"cliff 2"``..."""
        return [c["label"] for c in labelled_cliffs(self.cliffs, self.eigenvectors)]

    def to_json(self) -> dict[str, Any]:
        """``meta`` plus ``eigenvalues`` and ``cliffs`` (each with its ``label``)."""
        return {
            **self.meta,
            "eigenvalues": [float(v) for v in self.eigenvalues],
            "cliffs": labelled_cliffs(self.cliffs, self.eigenvectors),
        }


def kernel_groups(run: Run) -> list[str]:
    """``["full", <each layer group in model order>, <derived groups>]`` (:meth:`Run.groups`)."""
    return run.groups()


def check_reduction(run: Run, reduction: str | None) -> str:
    """``reduction`` (default: the family's), or ``ValueError`` naming the offered ones."""
    reduction = reduction or run.family.default_reduction
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction '{reduction}'; choose one of: {', '.join(REDUCTIONS)}")
    return reduction


def _class_weights(run: Run, beta: float | None) -> torch.Tensor | None:
    if beta is None:
        return None
    return run.family.class_weights(run.config, check_beta(beta))


def _base_key(run: Run, epoch: int) -> dict[str, Any]:
    return {
        "family": run.family.name,
        "config": asdict(run.config),
        "checkpoint": run.checkpoint_sha(epoch),
    }


def kernel_size(run: Run, reduction: str) -> int:
    """Rows of the reduced kernel: ``N`` kernel inputs, or ``N * C`` for ``"flat"``."""
    n = len(run.data.kernel_idx)
    if reduction == "flat":
        with torch.no_grad():
            n *= run.family.build_model(run.config)(run.data.kernel_x[:1]).shape[-1]
    return n


def _compute_kernel(run: Run, epoch: int, members, reduction: str, beta: float | None,
                    model: torch.nn.Module | None, progress: Progress | None, check: int | None = None
                    ) -> tuple[dict, dict]:
    m = model if model is not None else run.load_model(epoch)
    t0 = time.perf_counter()
    K, info = kernels.empirical_ntk(
        m, run.data.kernel_x, reduction=reduction, groups=members,
        class_weights=_class_weights(run, beta), progress=progress, check=check, return_info=True,
    )
    return {"K": K.detach().cpu().numpy()}, {"kernel_s": time.perf_counter() - t0, "check": info.check or None}


def _kernel_entry(run: Run, epoch: int, group: str, reduction: str, beta: float | None, model, cache: ArrayCache,
                  progress: Progress | None, check: int | None):
    """The cache entry (``["K"]``, ``.meta``) of a reduced kernel, under :func:`kernel_key`."""
    key = kernel_key(run, epoch, group=group, reduction=reduction, beta=beta)
    members = run.group_members(group)
    return cache.get_or_compute(
        key, lambda: _compute_kernel(run, epoch, members, reduction, beta, model, progress, check))


def kernel_key(run: Run, epoch: int, *, group: str = FULL, reduction: str, beta: float | None = None) -> str:
    """The cache key of the reduced kernel of ``group`` at ``epoch`` (``reduction`` resolved):
    the key :func:`kernel_matrix` stores under, for every reduction (``"flat"`` kernels are
    stored under it by :mod:`entk_core.workflows.dynamics`)."""
    return make_key("kernel", **_base_key(run, epoch), group=group, reduction=reduction, beta=beta)


def kernel_cached(run: Run, epoch: int, *, group: str = FULL, reduction: str, cache: ArrayCache | None = None,
                  beta: float | None = None) -> bool:
    """Whether the ``(N, N)`` kernel a :func:`spectrum` request of this ``reduction`` would read
    is in the cache (a ``"flat"`` spectrum never reads one: always ``False``), so computing the
    spectrum costs an eigendecomposition only."""
    return reduction != "flat" and kernel_key(run, epoch, group=group, reduction=reduction, beta=beta) in (
        cache if cache is not None else default_cache())


def compute_kernel(run: Run, epoch: int, *, group: str = FULL, reduction: str, beta: float | None = None,
                   model: torch.nn.Module | None = None, progress: Progress | None = None,
                   check: int | None = None) -> np.ndarray:
    """The reduced kernel (``(N, N)``, or ``(C·N, C·N)`` for ``"flat"``) of ``group`` at
    ``epoch``, computed now and not stored (what a worker returns to the driver);
    ``check``: spot-check it (see :func:`kernel_matrix`)."""
    return _compute_kernel(run, epoch, run.group_members(group), reduction, beta, model, progress, check)[0]["K"]


def kernel_matrix(
    run: Run,
    epoch: int | None = None,
    *,
    group: str = FULL,
    reduction: str | None = None,
    beta: float | None = None,
    model: torch.nn.Module | None = None,
    cache: ArrayCache | None = None,
    progress: Progress | None = None,
    check: int | None = None,
) -> np.ndarray:
    """The reduced ``(N, N)`` kernel ("trace" or "mean") of ``group`` at ``epoch``, cached.

    ``check=k``: when the kernel is computed (not served from the cache), spot-check ``k``
    random entries against per-example autograd in float64 (``empirical_ntk(check=k)``);
    the record ``{"entries", "max_rel_error", "tolerance", ...}`` is stored in the cache
    entry's metadata (``"check"``; ``None`` when no check ran), and a failed check raises
    :class:`~entk_core.engine.checks.KernelCheckError` and caches nothing."""
    epoch = run.resolve_epoch(epoch)
    reduction = check_reduction(run, reduction)
    if reduction == "flat":
        raise ValueError("kernel_matrix serves (N, N) reductions; use spectrum() for flattened kernels")
    run.group_members(group)
    return _kernel_entry(run, epoch, group, reduction, beta, model, cache or default_cache(), progress, check)["K"]


def _spectrum_request(run: Run, epoch: int | None, group: str, reduction: str | None, top: int | None,
                      beta: float | None) -> tuple[int, str, list[str] | None, int, str]:
    """Validated ``(epoch, reduction, members, top, cache key)`` of a spectrum request."""
    epoch = run.resolve_epoch(epoch)
    reduction = check_reduction(run, reduction)
    members = run.group_members(group)
    n = kernel_size(run, reduction)
    top = min(run.family.default_top, n) if top is None else int(top)
    if not 1 <= top <= n:
        raise ValueError(f"top must be between 1 and n = {n} (the kernel's size), got {top}")
    key = make_key("spectrum", **_base_key(run, epoch), group=group, reduction=reduction, top=top, beta=beta)
    return epoch, reduction, members, top, key


def spectrum_key(run: Run, epoch: int | None = None, *, group: str = FULL, reduction: str | None = None,
                 top: int | None = None, beta: float | None = None) -> str:
    """The cache key under which :func:`spectrum` stores this request's eigenpairs."""
    return _spectrum_request(run, epoch, group, reduction, top, beta)[4]


def compute_spectrum(
    run: Run,
    epoch: int | None = None,
    *,
    group: str = FULL,
    reduction: str | None = None,
    top: int | None = None,
    beta: float | None = None,
    model: torch.nn.Module | None = None,
    cache: ArrayCache | None = None,
    progress: Progress | None = None,
    check: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``({"eigenvalues", "eigenvectors"}, meta)`` of a :func:`spectrum` request, computed
    now and not stored: what a worker process returns to the driver, which stores it under
    :func:`spectrum_key`. With ``cache``, an ``(N, N)`` kernel is read from (or stored in)
    it; without, nothing touches a cache. ``meta``: timings, and ``"check"``: the spot
    check's record (``check=k``; the kernel's, when it came from the cache; else ``None``)."""
    epoch, reduction, members, top, _ = _spectrum_request(run, epoch, group, reduction, top, beta)
    t0 = time.perf_counter()
    if reduction == "flat":
        m = model if model is not None else run.load_model(epoch)
        vals, vecs, info = top_eigenpairs(
            m, top, x=run.data.kernel_x, groups=members, class_weights=_class_weights(run, beta), progress=progress,
            check=check, return_info=True,
        )
        checked = info.check or None
        t1 = time.perf_counter()
    else:
        if cache is not None:
            entry = _kernel_entry(run, epoch, group, reduction, beta, model, cache, progress, check)
            K, checked = entry["K"], entry.meta.get("check")
        else:
            arrays, meta = _compute_kernel(run, epoch, members, reduction, beta, model, progress, check)
            K, checked = arrays["K"], meta["check"]
        t1 = time.perf_counter()
        vals, vecs = top_eigenpairs(K, top)
    return {"eigenvalues": vals, "eigenvectors": vecs}, {
        "kernel_s": round(t1 - t0, 4), "eig_s": round(time.perf_counter() - t1, 4), "check": checked,
    }


def estimate_spectrum(
    run: Run,
    epoch: int | None = None,
    *,
    group: str = FULL,
    reduction: str | None = None,
    top: int | None = None,
    beta: float | None = None,
    planned: bool = False,
) -> dict[str, Any]:
    """What a :func:`spectrum` request would cost on this machine, computing nothing but a
    forward of a few inputs: ``{"seconds", "bytes", "method", "fits", "summary", "cached"}``.
    The engine's calibrated planner (:func:`~entk_core.engine.eigenpairs.estimate_top_eigenpairs`
    for flattened kernels, :func:`~entk_core.engine.kernels.estimate_ntk` plus a dense ``eigh``
    otherwise). A request already cached is answered without planning: 0 seconds, 0 bytes,
    ``method="cache"``; with ``planned=True`` it is planned all the same (what computing its
    kernel costs: :func:`entk_core.workflows.dynamics.dynamics` needs the kernel, which a
    cached spectrum does not hold)."""
    epoch, reduction, members, top, key = _spectrum_request(run, epoch, group, reduction, top, beta)
    if not planned and key in default_cache():
        return {"seconds": 0.0, "bytes": 0, "method": "cache", "fits": True, "summary": "served from the cache",
                "cached": True}
    m = run.family.build_model(run.config)
    if reduction == "flat":
        plan = eigenpairs.estimate_top_eigenpairs(m, top, x=run.data.kernel_x, groups=members,
                                                  class_weights=_class_weights(run, beta))
        seconds = float(plan.seconds)
    else:
        plan = kernels.estimate_ntk(m, run.data.kernel_x, reduction=reduction, groups=members,
                                    class_weights=_class_weights(run, beta))
        n = kernel_size(run, reduction)
        # + the dense eigh of the (n, n) kernel at this machine's measured float64 GEMM rate
        seconds = float(plan.seconds) + eigh_seconds(n, machine_rates())
    return {"seconds": seconds, "bytes": int(plan.bytes), "method": plan.method,
            "fits": bool(plan.fits), "summary": plan.summary(), "cached": False}


def spectrum(
    run: Run,
    epoch: int | None = None,
    *,
    group: str = FULL,
    reduction: str | None = None,
    top: int | None = None,
    beta: float | None = None,
    model: torch.nn.Module | None = None,
    cache: ArrayCache | None = None,
    progress: Progress | None = None,
    check: int | None = None,
) -> SpectrumResult:
    """Top-``top`` eigenpairs of the eNTK of ``run`` at ``epoch`` with cliffs, cached.

    Args:
      group: ``"full"``, a layer group or a derived group (:func:`kernel_groups`).
      reduction: ``"trace"``, ``"mean"`` or ``"flat"`` (default: the family's).
      top: number of eigenpairs, at most the kernel's size ``n`` (default: the family's
        ``default_top``, or ``n`` if smaller).
      beta: importance rescaling β (families with class weights, e.g. TMS).
      model: the already loaded model at ``epoch`` (saves a reload).
      check: when the spectrum (or its kernel) is computed rather than served from the
        cache, spot-check this many random kernel entries against per-example autograd in
        float64 (:mod:`entk_core.engine.checks`). ``result.meta["check"]`` is the record
        stored with the first computation (``{"entries", "max_rel_error", "tolerance",
        "dtype", "seconds", "worst", ...}``), ``None`` when none ran; a failed check raises
        :class:`~entk_core.engine.checks.KernelCheckError` and caches nothing.
    """
    t_start = time.perf_counter()
    epoch, reduction, _members, top, key = _spectrum_request(run, epoch, group, reduction, top, beta)
    cache = cache or default_cache()

    def compute():
        return compute_spectrum(run, epoch, group=group, reduction=reduction, top=top, beta=beta, model=model,
                                cache=cache, progress=progress, check=check)

    entry = cache.get_or_compute(key, compute)
    vals = entry["eigenvalues"]
    meta = {
        "run": run.name, "family": run.family.name, "epoch": epoch, "group": group,
        "reduction": reduction, "top": int(len(vals)), "beta": beta,
        "n": int(entry["eigenvectors"].shape[0]),
        "timing": {"kernel_s": entry.meta.get("kernel_s"), "eig_s": entry.meta.get("eig_s"),
                   "total_s": round(time.perf_counter() - t_start, 4)},
        "cache": entry.meta.get("cache"),
        "check": entry.meta.get("check"),
        "metrics": run.metrics_at(epoch),
    }
    return SpectrumResult(vals, entry["eigenvectors"], detect_cliffs(vals), meta)

