"""Datasets helpers shared by model families: :func:`random_split` (a seeded train/test
split). A family's own data lives in its package (e.g. ``families/modadd_mlp/data.py``).
"""
from __future__ import annotations

import torch

from .base import seeded

__all__ = ["random_split"]


def random_split(n: int, train_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(n)``: the first ``int(n*train_frac)`` of a
    permutation are the training indices (sorted), the rest the test indices (sorted)."""
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train fraction must lie in (0, 1), got {train_frac}")
    perm = torch.randperm(n, generator=seeded(seed))
    k = int(n * train_frac)
    return perm[:k].sort().values, perm[k:].sort().values
