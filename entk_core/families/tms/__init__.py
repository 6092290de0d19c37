"""Toy Models of Superposition (paper spec §3), after Elhage et al. (2022).

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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..base import Dataset, FeatureFamily, ModelFamily, register, seeded

__all__ = [
    "TMSModel",
    "TMSConfig",
    "TMSFamily",
    "REPRESENTED_THRESHOLD",
    "importances",
    "make_points",
    "feature_norms",
    "represented_features",
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
    n: int = 50
    m: int = 10
    sparsity: float = 0.9
    importance: float = 0.8
    n_points: int = 500
    epochs: int = 5000
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 250


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
    """Number of features with ``‖W[:, i]‖² >= threshold`` (spec §3.4)."""
    return int((feature_norms(W) >= threshold).sum())


@register
class TMSFamily(ModelFamily):
    name = "tms"
    has_accuracy = False
    title = "Toy Models of Superposition"
    Config = TMSConfig
    default_reduction = "flat"
    default_top = 80
    train_threads = 1  # full-batch steps on a 550-parameter model: one thread is fastest

    @staticmethod
    def _check(cfg: TMSConfig) -> None:
        if cfg.n < 1 or cfg.m < 1 or cfg.n_points < 1:
            raise ValueError(f"need n, m, n_points >= 1, got n={cfg.n}, m={cfg.m}, n_points={cfg.n_points}")
        if not 0.0 <= cfg.sparsity < 1.0:
            raise ValueError(f"sparsity must lie in [0, 1), got {cfg.sparsity}")
        if not 0.0 < cfg.importance <= 1.0:
            raise ValueError(f"importance must lie in (0, 1], got {cfg.importance}")

    def build_model(self, cfg: TMSConfig) -> nn.Module:
        self._check(cfg)
        model = TMSModel(cfg.n, cfg.m)
        model.reset_parameters(seeded(cfg.seed))
        return model

    def make_data(self, cfg: TMSConfig) -> Dataset:
        self._check(cfg)
        pts = make_points(cfg.n_points, cfg.n, cfg.sparsity, seeded(cfg.seed + DATA_SEED_OFFSET))
        x = torch.cat([pts, torch.eye(cfg.n)])
        imp = importances(cfg.n, cfg.importance)
        y = torch.stack([x, imp.expand_as(x)], dim=1)
        N = cfg.n_points
        return Dataset(
            x=x, y=y, train_idx=torch.arange(N), test_idx=torch.arange(N, N + cfg.n), kernel_idx=torch.arange(N),
            meta={"n": cfg.n, "m": cfg.m, "n_points": N, "importance": cfg.importance},
        )

    def make_optimizer(self, model: nn.Module, cfg: TMSConfig) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (y[:, 1] * (out - y[:, 0]) ** 2).mean()

    def accuracy(self, out: torch.Tensor, y: torch.Tensor) -> None:
        return None

    def class_weights(self, cfg: TMSConfig, beta: float) -> torch.Tensor:
        """``I_c**(β/2)``: rows of output ``c`` scaled so that ``K_β = D^{β/2} K D^{β/2}``, ``D = diag(I)``."""
        return importances(cfg.n, cfg.importance).double().pow(float(beta) / 2).float()

    def summary(self, model: nn.Module, cfg: TMSConfig, data: Dataset) -> dict[str, Any]:
        norms = feature_norms(model.W)
        return {
            "represented_features": int((norms >= REPRESENTED_THRESHOLD).sum()),
            "represented_threshold": REPRESENTED_THRESHOLD,
        }

    def feature_families(self, cfg: TMSConfig, data: Dataset, model: nn.Module | None = None) -> dict[str, FeatureFamily]:
        from ..features import tms_feature_vectors

        return {
            "features": FeatureFamily(
                name="features", bank=tms_feature_vectors(data.kernel_x),
                description="feature indicators on the class-major flattened index (spec §3.6)",
                labels=tuple(f"feature {a}" for a in range(cfg.n)),
            )
        }

    def align_report(self, run: Any, epoch: int, **options: Any) -> dict[str, Any]:
        from .analysis import align_report

        return align_report(run, epoch, beta=options.get("beta"), group=options.get("group"),
                            cache=options.get("cache"))

    def eigenvector_view(self, cfg: Any) -> str:
        """Flattened class-major rows, one class per feature: a vector over the features."""
        return "features"

    def group_labels(self, cfg: Any) -> dict[str, str]:
        return {"W": "tied encoder/decoder, m × n", "b": "output bias"}
