"""The workflow layer's services for family analysis code (dependency injection).

A family's analysis code (``align_report`` and the helpers a page calls) needs cached
spectra, kernels and sweeps, which live in this layer above the families. Families do
not import this layer: they receive an object implementing
:class:`entk_core.families.base.AnalysisServices`, and :class:`Services` is that object::

    from entk_core.workflows.services import Services

    report = run.family.align_report(run, epoch, services=Services())
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..families.base import SweepSpec
from ..families.run import Run
from ..store.cache import ArrayCache, default_cache
from . import analysis
from .sweep import SweepResult, sweep

__all__ = ["Services"]


@dataclass
class Services:
    """:func:`~entk_core.workflows.analysis.spectrum`, :func:`~entk_core.workflows.analysis.kernel_matrix`
    and :func:`~entk_core.workflows.sweep.sweep` on one cache (``cache=None``: the default
    cache); implements :class:`entk_core.families.base.AnalysisServices`."""

    cache: ArrayCache | None = None
    check: int | None = None
    """Spot-check this many kernel entries of every spectrum / kernel computed (not served
    from the cache) through these services (``check=`` of
    :func:`~entk_core.workflows.analysis.spectrum`); a call's own ``check=`` wins."""

    def __post_init__(self) -> None:
        self.cache = self.cache or default_cache()

    def spectrum(self, run: Run, epoch: int | None = None, **kw: Any) -> analysis.SpectrumResult:
        """:func:`entk_core.workflows.analysis.spectrum` on this cache (same keywords)."""
        kw.setdefault("check", self.check)
        return analysis.spectrum(run, epoch, cache=self.cache, **kw)

    def kernel_matrix(self, run: Run, epoch: int | None = None, **kw: Any) -> np.ndarray:
        """:func:`entk_core.workflows.analysis.kernel_matrix` on this cache (same keywords)."""
        kw.setdefault("check", self.check)
        return analysis.kernel_matrix(run, epoch, cache=self.cache, **kw)

    def sweep(self, run: Run, spec: SweepSpec | None = None, *, progress=None, workers: int | None = None) -> SweepResult:
        """:func:`entk_core.workflows.sweep.sweep` on this cache."""
        return sweep(run, spec, cache=self.cache, progress=progress, workers=workers)
