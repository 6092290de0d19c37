"""The modular-addition MLP of the paper (spec §4), after Gromov (2023): the model and its config.

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

import torch
from torch import nn

from ..schema import param

__all__ = ["ModAddMLP", "ModAddMLPConfig", "Scale", "Quadratic", "memory_estimate"]


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
    """Hyperparameters; each field's type and range are checked before a model is built
    (:mod:`entk_core.families.schema`)."""

    p: int = param(29, lo=3, hi=10_000, size=True, doc="the modulus (inputs: all p² pairs)")
    width: int = param(512, lo=1, hi=2**24, size=True, doc="hidden units")
    epochs: int = param(500, lo=0, hi=10**9)
    seed: int = param(0, lo=0, hi=2**63 - 1)
    lr: float = param(0.05, lo=0.0, lo_open=True, hi=1e3)
    weight_decay: float = param(0.01, lo=0.0, hi=1e3)
    train_frac: float = param(0.7, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    checkpoint_every: int = param(10, lo=1, hi=10**9)


def memory_estimate(cfg: ModAddMLPConfig) -> int:
    """Bytes to build and train the model of ``cfg`` (float32): the weights with their
    gradients and two AdamW moments, the p² one-hot inputs (2p each) with their labels and
    index tensors, and one full-batch forward over all p² inputs (hidden and output
    activations, twice: the autograd graph keeps them)."""
    p, w = cfg.p, cfg.width
    weights = (2 * p * w + w * p) * 4 * 4
    data = p * p * 2 * p * 4 + p * p * 8 * 5
    forward = p * p * (2 * w + p) * 4 * 2
    return weights + data + forward
