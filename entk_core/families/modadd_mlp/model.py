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

__all__ = ["ModAddMLP", "ModAddMLPConfig", "Scale", "Quadratic"]


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
