"""An example eNTK Explorer plug-in family: ``toy-xor``, a tiny MLP learning XOR of signs.

    x (N, d) ~ N(0, 1)  ->  net.0: Linear(d, width) -> tanh  ->  net.2: Linear(width, 2)  ->  logits (N, 2)

Target ``y = [x0 · x1 > 0]`` (XOR of the signs of the first two coordinates); the other
``d - 2`` coordinates are noise. Cross-entropy, full-batch Adam. The eNTK is evaluated on
all ``n_points`` inputs (class-traced reduction), whose rows are the points in order.

Only the public plug-in API of ``entk_core`` is used: :class:`~entk_core.ModelFamily`,
:class:`~entk_core.Dataset`, :class:`~entk_core.FeatureFamily`, :class:`~entk_core.FamilyPage`
(its own dashboard page, ``entk_toy_family/page.py``), and the services object the align
hook receives.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from entk_core import Dataset, FamilyPage, FeatureFamily, ModelFamily
from entk_core.engine.measures import subspace_overlap
from entk_core.engine.spectra import labelled_cliffs

__all__ = ["ToyXOR", "ToyXORConfig", "ToyXORFamily"]


@dataclass
class ToyXORConfig:
    n_points: int = 96
    dim: int = 4
    width: int = 24
    epochs: int = 60
    lr: float = 0.05
    train_frac: float = 0.75
    seed: int = 0
    checkpoint_every: int = 10


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


class ToyXOR(nn.Module):
    """Input ``(N, d)``, output logits ``(N, 2)``; layer groups ``net.0`` and ``net.2``."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, width), nn.Tanh(), nn.Linear(width, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ToyXORFamily(ModelFamily):
    name = "toy-xor"
    title = "Toy XOR MLP (example plug-in)"
    description = ("A tanh MLP learning XOR of the signs of two of its four inputs; the align report says how much "
                   "of the raw coordinates, of their product x0·x1 and of random vectors the top eNTK modes span.")
    Config = ToyXORConfig
    default_reduction = "trace"
    default_top = 24
    # its own dashboard page: a Streamlit script, run by path when opened (never imported here)
    pages = (FamilyPage("Toy XOR", "toy-xor", "entk_toy_family.page", ":material/extension:"),)

    def build_model(self, cfg: ToyXORConfig) -> nn.Module:
        if cfg.dim < 2 or cfg.width < 1 or cfg.n_points < 8:
            raise ValueError(f"need dim >= 2, width >= 1 and n_points >= 8, got {cfg.dim}, {cfg.width}, {cfg.n_points}")
        g = _generator(cfg.seed)
        model = ToyXOR(cfg.dim, cfg.width)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 1.0 / np.sqrt(p.shape[-1]), generator=g)
        return model

    def make_data(self, cfg: ToyXORConfig) -> Dataset:
        g = _generator(cfg.seed + 1)
        x = torch.randn(cfg.n_points, cfg.dim, generator=g)
        y = (x[:, 0] * x[:, 1] > 0).long()
        perm = torch.randperm(cfg.n_points, generator=g)
        k = int(cfg.train_frac * cfg.n_points)
        return Dataset(x=x, y=y, train_idx=perm[:k], test_idx=perm[k:], kernel_idx=torch.arange(cfg.n_points),
                       meta={"dim": cfg.dim})

    def make_optimizer(self, model: nn.Module, cfg: ToyXORConfig) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y)

    def accuracy(self, out: torch.Tensor, y: torch.Tensor) -> float:
        return (out.argmax(-1) == y).float().mean().item()

    def feature_families(self, cfg: ToyXORConfig, data: Dataset, model: nn.Module | None = None) -> dict[str, FeatureFamily]:
        x = data.kernel_x.double().numpy()
        rnd = np.random.default_rng(cfg.seed).standard_normal((x.shape[0], 2))
        return {
            "linear": FeatureFamily("linear", x, "the raw input coordinates", tuple(f"x{i}" for i in range(cfg.dim))),
            "xor": FeatureFamily("xor", x[:, :1] * x[:, 1:2], "the product x0·x1 (the target's feature)", ("x0·x1",)),
            "random": FeatureFamily("random", rnd, "two Gaussian random vectors (a baseline)", ("r0", "r1")),
        }

    def hidden_activations(self, model: nn.Module, x: Any) -> torch.Tensor:
        with torch.no_grad():
            return model.net[1](model.net[0](x))

    def group_labels(self, cfg: ToyXORConfig) -> dict[str, str]:
        return {"net.0": "input → hidden", "net.2": "hidden → logits"}

    def align_report(self, run: Any, epoch: int, *, services: Any, group: str | None = None,
                     beta: float | None = None, progress=None) -> dict[str, Any]:
        """Overlap of the top-k eigenvectors (k = 1, 2, 4, 8) with each feature family."""
        if beta is not None:
            raise ValueError("beta (importance rescaling) does not apply to the toy-xor family")
        group = group or "full"
        res = services.spectrum(run, epoch, group=group, progress=progress)
        fams = self.feature_families(run.config, run.data)
        V = res.eigenvectors
        rows = []
        for k in (1, 2, 4, 8):
            if k <= V.shape[1]:
                rows.append({"top": k, **{name: round(subspace_overlap(V[:, :k], f)[0], 4) for name, f in fams.items()}})
        return {"group": group, "families": {n: f.matrix.shape[1] for n, f in fams.items()},
                "overlap_of_top_k": rows, "cliffs": labelled_cliffs(res.cliffs, V),
                "metrics": run.metrics_at(epoch)}
