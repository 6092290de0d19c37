"""The modular-addition MLP family (paper spec §4): ``modadd-mlp``.

The model is :class:`entk_core.families.modadd_mlp.model.ModAddMLP`; the align report and
the sweep spec are in :mod:`entk_core.families.modadd_mlp.analysis`.
Layer groups: ``net.0`` (W1, width x 2p) and ``net.3`` (W2, p x width).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..base import AnalysisServices, Dataset, FeatureFamily, ModelFamily, SweepSpec, seeded
from ..data import random_split
from . import analysis
from .data import modadd_onehot, modadd_pairs
from .features import modadd_families
from .model import ModAddMLP, ModAddMLPConfig, Quadratic, Scale

__all__ = ["ModAddMLP", "ModAddMLPConfig", "ModAddMLPFamily", "Quadratic", "Scale"]


class ModAddMLPFamily(ModelFamily):
    name = "modadd-mlp"
    title = "Modular-addition MLP"
    Config = ModAddMLPConfig
    default_reduction = "trace"
    default_top = 200

    def build_model(self, cfg: ModAddMLPConfig) -> nn.Module:
        if cfg.p < 3 or cfg.width < 1:
            raise ValueError(f"need p >= 3 and width >= 1, got p={cfg.p}, width={cfg.width}")
        model = ModAddMLP(cfg.p, cfg.width)
        model.reset_parameters(seeded(cfg.seed))
        return model

    def make_data(self, cfg: ModAddMLPConfig) -> Dataset:
        pairs, labels = modadd_pairs(cfg.p)
        train_idx, test_idx = random_split(len(pairs), cfg.train_frac, cfg.seed)
        return Dataset(
            x=modadd_onehot(pairs, cfg.p), y=labels, train_idx=train_idx, test_idx=test_idx,
            kernel_idx=torch.arange(len(pairs)), meta={"p": cfg.p, "pairs": pairs},
        )

    def make_optimizer(self, model: nn.Module, cfg: ModAddMLPConfig) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, F.one_hot(y, out.shape[-1]).to(out.dtype))

    def accuracy(self, out: torch.Tensor, y: torch.Tensor) -> float:
        return (out.argmax(-1) == y).float().mean().item()

    def feature_families(self, cfg: Any, data: Dataset, model: nn.Module | None = None) -> dict[str, FeatureFamily]:
        """Fourier families ``a``, ``b``, ``sum``, ``diff``, the digit families and ``random``
        over the ``p²`` pairs (:func:`entk_core.families.features.modadd_families`)."""
        return modadd_families(cfg.p, seed=cfg.seed)

    def align_report(self, run: Any, epoch: int, *, services: AnalysisServices, group: str | None = None,
                     beta: float | None = None, progress=None, **options: Any) -> dict[str, Any]:
        """Per detected cliff: overlap with each Fourier family before/after the two-stage
        rotation, the mean best phase-insensitive correlation, per-direction best (family, k),
        and the eNTK linearisation check (see :mod:`entk_core.families.modadd_mlp.analysis`;
        ``options``: its ``top``, ``windows_from`` and ``linearised``)."""
        return analysis.align_report(run, epoch, services=services, group=group, beta=beta, progress=progress,
                                     **options)

    def sweep_spec(self, cfg: Any, group: str) -> SweepSpec:
        """What :func:`entk_core.workflows.sweep.sweep` measures for this family (see
        :func:`entk_core.families.modadd_mlp.analysis.sweep_spec`)."""
        return analysis.sweep_spec(cfg, group)

    def group_labels(self, cfg: Any) -> dict[str, str]:
        return {"net.0": "W1, input → hidden", "net.3": "W2, hidden → output"}

    def eigenvector_view(self, cfg: Any) -> str:
        return "grid"

    def hidden_activations(self, model: nn.Module, x: Any) -> torch.Tensor:
        """The hidden layer after the quadratic activation, ``(N, width)`` (the input of ``net.3``)."""
        return model.net[:3](x)
