"""Generic helpers for ground-truth feature families (any family).

A family's own banks live in its package (``families/<name>/features.py``); these helpers
only combine and filter :class:`~entk_core.families.base.FeatureFamily` objects:

* :func:`concat_families` -- stack families with the same rows along the feature axis;
* :func:`families_with_rows` -- keep the families whose vectors fit a kernel's rows (e.g.
  class-major flattened families only for a ``"flat"`` kernel).

Bank shapes: ``(N, K, 2)`` for paired banks (cos/sin of ``K`` frequencies), ``(N, K)`` for
plain ones; flattened (class-major) families have ``C*N`` rows, row ``c*N + n`` = (output
class ``c``, input ``n``), matching the ``"flat"`` kernel reduction.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .base import FeatureFamily

__all__ = ["concat_families", "families_with_rows"]


def concat_families(name: str, families: Sequence[FeatureFamily], description: str = "") -> FeatureFamily:
    """Stack families with the same rows and bank kind along the feature axis.

    Labels are prefixed with each family's name (``"a k=1"``, ..., ``"b k=14"``), e.g.
    for the first-cliff heatmap rows "a k=1..14" over "b k=1..14".
    """
    if not families:
        raise ValueError("need at least one family")
    ndims = {f.bank.ndim for f in families}
    rows = {f.bank.shape[0] for f in families}
    if len(ndims) != 1 or len(rows) != 1:
        raise ValueError("families must all be Fourier (N,K,2) or all plain (N,K), with the same N")
    bank = np.concatenate([f.bank for f in families], axis=1)
    labels = tuple(
        f"{f.name} {lab}" for f in families
        for lab in (f.labels or tuple(str(j) for j in range(f.bank.shape[1])))
    )
    return FeatureFamily(name=name, bank=bank, description=description or " + ".join(f.name for f in families), labels=labels)


def families_with_rows(families: Mapping[str, FeatureFamily], n_rows: int) -> dict[str, FeatureFamily]:
    """The families whose vectors have ``n_rows`` entries (those comparable with an ``n_rows`` kernel)."""
    return {k: f for k, f in families.items() if f.bank.shape[0] == n_rows}
