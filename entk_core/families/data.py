"""Datasets shared by model families.

Modular arithmetic: all ``p**2`` pairs ``(a, b)`` in row order ``a*p + b`` (the order
of ``torch.cartesian_prod(arange(p), arange(p))``), which every Fourier feature and
graph Laplacian in :mod:`entk_core.families.features` and :mod:`entk_core.engine.measures` assumes.
"""
from __future__ import annotations

import torch

from .base import seeded

__all__ = ["modadd_pairs", "modadd_onehot", "random_split"]


def modadd_pairs(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs for modular addition mod ``p``.

    Returns:
      ``pairs`` of shape ``(p*p, 2)`` (int64, row ``a*p + b`` holds ``(a, b)``) and
      ``labels`` of shape ``(p*p,)`` holding ``(a + b) mod p``.
    """
    if p < 2:
        raise ValueError(f"p must be at least 2, got {p}")
    pairs = torch.cartesian_prod(torch.arange(p), torch.arange(p))
    return pairs, (pairs[:, 0] + pairs[:, 1]) % p


def modadd_onehot(pairs: torch.Tensor, p: int) -> torch.Tensor:
    """Concatenated one-hots of ``a`` and ``b``: shape ``(N, 2p)``, float32."""
    x = torch.zeros(len(pairs), 2 * p)
    x[torch.arange(len(pairs)), pairs[:, 0]] = 1.0
    x[torch.arange(len(pairs)), p + pairs[:, 1]] = 1.0
    return x


def random_split(n: int, train_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(n)``: the first ``int(n*train_frac)`` of a
    permutation are the training indices (sorted), the rest the test indices (sorted)."""
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train fraction must lie in (0, 1), got {train_frac}")
    perm = torch.randperm(n, generator=seeded(seed))
    k = int(n * train_frac)
    return perm[:k].sort().values, perm[k:].sort().values
