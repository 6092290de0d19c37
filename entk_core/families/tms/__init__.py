"""The Toy Models of Superposition family (paper spec §3): ``tms``.

Model, config and data helpers are in :mod:`entk_core.families.tms.model` (re-exported
here); the β-rescaled spectra, heatmaps and the align report in
:mod:`entk_core.families.tms.analysis`. See the model module for the data and target
layout.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..base import AnalysisServices, Dataset, FeatureFamily, ModelFamily, seeded
from . import analysis
from .features import tms_feature_vectors
from .model import (DATA_SEED_OFFSET, REPRESENTED_THRESHOLD, TMSConfig, TMSModel, feature_norms, importances,
                    make_points, represented_features)

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
        """``represented_features`` (:func:`represented_features` of the final ``W``) and its threshold."""
        return {
            "represented_features": represented_features(model.W),
            "represented_threshold": REPRESENTED_THRESHOLD,
        }

    def feature_families(self, cfg: TMSConfig, data: Dataset, model: nn.Module | None = None) -> dict[str, FeatureFamily]:
        """``features``: one indicator vector per feature on the class-major flattened index."""
        return {
            "features": FeatureFamily(
                name="features", bank=tms_feature_vectors(data.kernel_x),
                description="feature indicators on the class-major flattened index (spec §3.6)",
                labels=tuple(f"feature {a}" for a in range(cfg.n)),
            )
        }

    def align_report(self, run: Any, epoch: int, *, services: AnalysisServices, group: str | None = None,
                     beta: float | None = None, progress=None) -> dict[str, Any]:
        """The β-rescaled spectrum against the features (:func:`entk_core.families.tms.analysis.align_report`)."""
        return analysis.align_report(run, epoch, beta=beta, group=group, cache=services.cache)

    def group_labels(self, cfg: Any) -> dict[str, str]:
        return {"W": "W, tied encoder/decoder (m × n)", "b": "b, output bias (n)"}

    def eigenvector_view(self, cfg: Any) -> str:
        return "features"
