"""Toy Models of Superposition (paper spec §3), after Elhage et al. (2022): model, config, data.

    x (N, n) sparse, unit norm  ->  h = W x (m)  ->  y = ReLU(Wᵀ h + b)   (N, n)

W (m x n) tied encoder/decoder, ``xavier_normal_`` init (std sqrt(2/(m+n))), b = 0.
Both are parameters of the root module, so the layer groups are ``W`` and ``b``.

Data: a fixed set of ``n_points`` points; each entry is U[0,1) with probability
1 − S and 0 otherwise, then every point is L2-normalised (+1e-8). The one-hot points
``eye(n)`` follow as a test set (reconstruction of single features), so
``data.x = [train points; eye(n)]``, ``train_idx = kernel_idx = 0..N-1``.

Targets: the loss interface is ``loss(out, y)`` without the config, so ``y`` carries
the importance weights with the targets: ``y`` has shape ``(N, 2, n)``, ``y[:, 0]`` the
target (= the input) and ``y[:, 1]`` the importances ``I_i = importance**i``. The loss
is ``mean over batch and features of I_i (out_i − x_i)²``. Adam, full batch.

Kernel: the flattened (class-major, ``C·N``) eNTK over the training set; importance
rescaling multiplies the class-``c`` Jacobian rows by ``I_c**(β/2)``
(:meth:`TMSFamily.class_weights`). See :mod:`entk_core.families.tms.analysis` for the β-rescaled
spectra and feature heatmaps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..schema import param

__all__ = [
    "TMSModel",
    "TMSConfig",
    "REPRESENTED_THRESHOLD",
    "DATA_SEED_OFFSET",
    "importances",
    "make_points",
    "feature_norms",
    "represented_features",
    "memory_estimate",
]

REPRESENTED_THRESHOLD = 0.75
"""A feature ``i`` counts as represented when ``‖W[:, i]‖² = (WᵀW)_ii >= 0.75`` (spec §3.4)."""

DATA_SEED_OFFSET = 2**32
"""The data generator is seeded with ``seed + 2**32`` so it never shares a stream with the init."""


class TMSModel(nn.Module):
    """``y = ReLU(Wᵀ W x + b)``. Input ``(N, n)``, output ``(N, n)``."""

    def __init__(self, n: int, m: int):
        super().__init__()
        self.n, self.m = n, m
        self.W = nn.Parameter(torch.empty(m, n))
        self.b = nn.Parameter(torch.zeros(n))

    def reset_parameters(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            nn.init.xavier_normal_(self.W, generator=generator)
            self.b.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu((x @ self.W.T) @ self.W + self.b)

    def extra_repr(self) -> str:
        return f"n={self.n}, m={self.m}"


@dataclass
class TMSConfig:
    """Hyperparameters; each field's type and range are checked before a model is built
    (:mod:`entk_core.families.schema`)."""

    n: int = param(50, lo=1, hi=100_000, size=True, doc="features")
    m: int = param(10, lo=1, hi=100_000, size=True, doc="hidden dimensions")
    sparsity: float = param(0.9, lo=0.0, hi=1.0, hi_open=True, doc="probability that an entry is 0")
    importance: float = param(0.8, lo=0.0, lo_open=True, hi=1.0, doc="importance decay: I_i = importance**i")
    n_points: int = param(500, lo=1, hi=10**9, size=True, doc="training points")
    epochs: int = param(5000, lo=0, hi=10**9)
    lr: float = param(1e-3, lo=0.0, lo_open=True, hi=1e3)
    seed: int = param(0, lo=0, hi=2**63 - 1 - DATA_SEED_OFFSET)
    checkpoint_every: int = param(250, lo=1, hi=10**9)


def memory_estimate(cfg: TMSConfig) -> int:
    """Bytes to build and train ``cfg`` (float32): ``W`` and ``b`` with gradients and two Adam
    moments; the ``n_points + n`` inputs, their targets and importances (``y`` is
    ``(N, 2, n)``) and the random draws of :func:`make_points`; one full-batch forward
    (hidden and outputs, kept for the backward pass)."""
    n, m, N = cfg.n, cfg.m, cfg.n_points
    weights = (m * n + n) * 4 * 4
    data = (N + n) * n * 4 * 3 + N * n * 4 * 2
    forward = N * (m + 2 * n) * 4 * 2
    return weights + data + forward


def importances(n: int, importance: float) -> torch.Tensor:
    """``I_i = importance**i`` for ``i = 0 .. n-1`` (float32, shape ``(n,)``)."""
    return torch.tensor(float(importance), dtype=torch.float64).pow(torch.arange(n, dtype=torch.float64)).float()


def make_points(n_points: int, n: int, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    """``(n_points, n)`` sparse points: U[0,1) w.p. ``1 − sparsity`` else 0, each row L2-normalised (+1e-8)."""
    vals = torch.rand(n_points, n, generator=generator)
    keep = torch.rand(n_points, n, generator=generator) >= sparsity
    x = torch.where(keep, vals, torch.zeros(()))
    return x / (x.norm(dim=1, keepdim=True) + 1e-8)


def feature_norms(W: torch.Tensor | np.ndarray) -> np.ndarray:
    """``‖W[:, i]‖²`` for each feature ``i`` (the diagonal of ``WᵀW``), float64 ``(n,)``."""
    W = torch.as_tensor(W).detach().double()
    return (W * W).sum(0).numpy()


def represented_features(W: torch.Tensor | np.ndarray, threshold: float = REPRESENTED_THRESHOLD) -> int:
    """Number of features with ``‖W[:, i]‖² >= threshold`` (spec §3.4): the one count of
    represented features (the run summary, the align report and the TMS page use it)."""
    return int((feature_norms(W) >= threshold).sum())
