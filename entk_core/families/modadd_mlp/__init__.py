"""The modular-addition MLP of the paper (spec §4), after Gromov (2023).

    x (N, 2p) one-hot (a, b)
      -> net.0: Linear(2p, width, bias=False)  -> Scale(1/sqrt(2p))
      -> Quadratic (h*h)
      -> net.3: Linear(width, p, bias=False)   -> Scale(1/width)   -> outputs (N, p)

Mean-field scaling, all weights ~ N(0, 1), no biases; MSE against one-hot targets,
AdamW(lr 0.05, weight decay 0.01), full batch on a 70% train split, 500 epochs.
Layer groups: ``net.0`` (W1, width x 2p) and ``net.3`` (W2, p x width).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import modadd_onehot, modadd_pairs, random_split
from ..base import Dataset, FeatureFamily, ModelFamily, register, seeded

__all__ = ["ModAddMLP", "ModAddMLPConfig", "ModAddMLPFamily"]


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:.6g}"


class Quadratic(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class ModAddMLP(nn.Module):
    """Two-weight-matrix MLP with quadratic activation. Input ``(N, 2p)``, output ``(N, p)``."""

    def __init__(self, p: int, width: int):
        super().__init__()
        self.p, self.width = p, width
        self.net = nn.Sequential(
            nn.Linear(2 * p, width, bias=False),
            Scale(1.0 / math.sqrt(2 * p)),
            Quadratic(),
            nn.Linear(width, p, bias=False),
            Scale(1.0 / width),
        )

    def reset_parameters(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            for m in (self.net[0], self.net[3]):
                m.weight.normal_(0.0, 1.0, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class ModAddMLPConfig:
    p: int = 29
    width: int = 512
    epochs: int = 500
    seed: int = 0
    lr: float = 0.05
    weight_decay: float = 0.01
    train_frac: float = 0.7
    checkpoint_every: int = 10


@register
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
        from ..features import modadd_families

        return modadd_families(cfg.p, seed=cfg.seed)

    def align_report(self, run: Any, epoch: int, **options: Any) -> dict[str, Any]:
        """Per detected cliff: overlap with each Fourier family before/after the two-stage
        rotation, the mean best phase-insensitive correlation, per-direction best (family, k),
        and the eNTK linearisation check (see :mod:`entk_core.families.modadd_mlp.analysis`)."""
        from .analysis import align_report

        return align_report(run, epoch, **options)

    def sweep_spec(self, cfg: Any, group: str):
        """What :func:`entk_core.workflows.sweep.sweep` measures for this family (see
        :func:`entk_core.families.modadd_mlp.analysis.sweep_spec`)."""
        from .analysis import sweep_spec

        return sweep_spec(cfg, group)

    def eigenvector_view(self, cfg: Any) -> str:
        """Kernel rows are the p² pairs (a, b), row ``a*p + b``: a p x p image."""
        return "grid"

    def group_labels(self, cfg: Any) -> dict[str, str]:
        return {"net.0": "W1, input → hidden", "net.3": "W2, hidden → output"}

    def hidden_activations(self, model: nn.Module, x: Any) -> torch.Tensor:
        """The hidden layer after the quadratic activation, ``(N, width)`` (the input of ``net.3``)."""
        return model.net[:3](x)
