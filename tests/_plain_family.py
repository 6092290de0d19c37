"""Plug-in families with no feature families: a researcher's own model, as the CLI and the
workers meet it (module level, so worker processes can import it; ``plugin_site`` writes an
entry point for them so a CLI subprocess finds them too).

* ``plain-mlp`` -- a tanh MLP classifying 3 classes of Gaussian points (labels, a train/test
  split, every point a kernel input), nothing else: no ``feature_families``, no align report.
* ``plain-unlabelled`` -- the same network trained without labels (it learns to spread its
  outputs: ``y`` has no columns), so there are no targets to align with.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from entk_core import Dataset, ModelFamily
from entk_core.families.schema import param

ENTRY_POINTS = {"plain-mlp": "_plain_family:PlainMLPFamily", "plain-unlabelled": "_plain_family:PlainUnlabelledFamily"}


@dataclass
class PlainConfig:
    n_points: int = param(30, lo=6, hi=10_000, size=True)
    dim: int = param(3, lo=1, hi=1000, size=True)
    width: int = param(8, lo=1, hi=10_000, size=True)
    epochs: int = param(20, lo=0, hi=10**6)
    lr: float = param(0.05, lo=0.0, lo_open=True)
    seed: int = param(0, lo=0)
    checkpoint_every: int = param(10, lo=1)


class PlainMLPFamily(ModelFamily):
    name = "plain-mlp"
    title = "Plain MLP (a plug-in without feature families)"
    Config = PlainConfig
    default_top = 12  # the reduction: the default, "trace"

    def build_model(self, cfg: PlainConfig) -> nn.Module:
        g = torch.Generator().manual_seed(cfg.seed)
        model = nn.Sequential(nn.Linear(cfg.dim, cfg.width), nn.Tanh(), nn.Linear(cfg.width, 3))
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 1.0 / p.shape[-1] ** 0.5, generator=g)
        return model

    def make_data(self, cfg: PlainConfig) -> Dataset:
        g = torch.Generator().manual_seed(cfg.seed + 1)
        x = torch.randn(cfg.n_points, cfg.dim, generator=g)
        y = (x[:, 0] > 0.4).long() + (x[:, 0] > -0.4).long()
        k = (2 * cfg.n_points) // 3
        return Dataset(x=x, y=y, train_idx=torch.arange(k), test_idx=torch.arange(k, cfg.n_points),
                       kernel_idx=torch.arange(cfg.n_points))

    def make_optimizer(self, model: nn.Module, cfg: PlainConfig) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y)

    def accuracy(self, out: torch.Tensor, y: torch.Tensor) -> float:
        return (out.argmax(-1) == y).float().mean().item()


class PlainUnlabelledFamily(PlainMLPFamily):
    name = "plain-unlabelled"
    title = "Plain MLP trained without labels"
    has_accuracy = False

    def make_data(self, cfg: PlainConfig) -> Dataset:
        d = super().make_data(cfg)
        return Dataset(x=d.x, y=torch.zeros(len(d.x), 0), train_idx=d.train_idx, test_idx=d.test_idx,
                       kernel_idx=d.kernel_idx)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -out.var(dim=0).mean() + (out ** 2).mean() ** 2  # spread the outputs, keep them bounded

    def accuracy(self, out: torch.Tensor, y: torch.Tensor) -> None:
        return None


def plugin_site(folder: Path) -> Path:
    """A folder that makes this module an installed plug-in for a subprocess: this file and a
    ``.dist-info`` declaring its families (what pip would write). Put it on ``PYTHONPATH``."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__), folder / "_plain_family.py")
    dist = folder / "plain_family-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plain-family\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[entk_core.families]\n" + "".join(f"{k} = {v}\n" for k, v in ENTRY_POINTS.items()))
    return folder
