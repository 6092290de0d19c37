"""The models and inputs of the peer and method benchmarks (:mod:`entk_core.bench.peers`,
:mod:`entk_core.bench.methods`). Every model is built here with a fixed seed, in eval mode;
inputs are drawn from a fixed generator, so the same command gives the same numbers.

=============  ==========================================================  =======  =====
model          architecture                                                N        C
=============  ==========================================================  =======  =====
``mlp-paper``  the paper's modular-addition MLP (p = 29, width 512, the     841      29
               library's ``modadd-mlp`` family at its defaults, untrained)
``cnn``        conv 3→16→32 (3×3, pad 1, ReLU, 2×2 max-pool), Linear→10     500      10
               (the bench's case-e CNN) on 3×32×32
``mlp784``     MLP 784-512-512-10, ReLU, biases                             1,000    10
``vit``        ViT: 3×16×16 in 4×4 patches (Conv2d), class token and        500      10
               position embedding, 2 pre-norm blocks (LayerNorm,
               ``nn.MultiheadAttention`` d 64 / 4 heads, MLP 128 GELU),
               LayerNorm, Linear→10
``resnet``     small ResNet: conv 3→16 + BatchNorm, 2 basic blocks          500      10
               (16→16, 16→32 stride 2 with a 1×1 projection, each conv
               followed by BatchNorm), global average pool, Linear→10, on
               3×16×16
``tms``        the bench's case-c toy model of superposition (m 10, n 50)   500      50
``attn``       the bench's case-d 1-layer attention model (3 tokens)         841      30
=============  ==========================================================  =======  =====
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

__all__ = ["MODELS", "build", "mlp784", "vit", "resnet"]


def _paper_mlp(n: int | None = None):
    from ..families.base import get_family

    fam = get_family("modadd-mlp")
    cfg = fam.Config()
    torch.manual_seed(0)
    model, x = fam.build_model(cfg), fam.make_data(cfg).kernel_x
    return model.eval(), x if n is None else x[:n]


def _cnn(n: int = 500):
    from .engine import bench_cnn

    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return bench_cnn(), x


def mlp784() -> nn.Module:
    """MLP 784-512-512-10 with ReLU and biases (seed 0)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 10)).eval()


def _mlp784(n: int = 1000):
    return mlp784(), torch.randn(n, 784, generator=torch.Generator().manual_seed(1))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, mlp: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, mlp)
        self.fc2 = nn.Linear(mlp, d)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


class ViT(nn.Module):
    """A small vision transformer with ``nn.MultiheadAttention`` (see the module table)."""

    def __init__(self, img: int = 16, patch: int = 4, d: int = 64, heads: int = 4, depth: int = 2,
                 mlp: int = 128, classes: int = 10):
        super().__init__()
        n = (img // patch) ** 2
        self.patch = nn.Conv2d(3, d, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        self.blocks = nn.Sequential(*[_Block(d, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        z = self.patch(x).flatten(2).transpose(1, 2)
        z = torch.cat([self.cls.expand(z.shape[0], -1, -1), z], 1) + self.pos
        return self.head(self.norm(self.blocks(z))[:, 0])


def vit() -> nn.Module:
    torch.manual_seed(0)
    return ViT().eval()


def _vit(n: int = 500):
    return vit(), torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + (x if self.proj is None else self.proj(x)))


class ResNet(nn.Module):
    """A small ResNet with BatchNorm (see the module table)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.layer1 = _Basic(16, 16, 1)
        self.layer2 = _Basic(16, 32, 2)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        h = self.layer2(self.layer1(torch.relu(self.bn(self.stem(x)))))
        return self.fc(h.mean((2, 3)))


def resnet() -> nn.Module:
    """The small ResNet, seed 0, with running statistics set by 4 training-mode passes on
    random batches (so BatchNorm is not the identity), then in eval mode."""
    torch.manual_seed(0)
    m = ResNet()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        m.train()
        for _ in range(4):
            m(torch.randn(64, 3, 16, 16, generator=g))
    return m.eval()


def _resnet(n: int = 500):
    return resnet(), torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _tms(n: int = 500):
    from .toy import tms_model as tms

    model, x = tms(N=n)
    return model.eval(), x


def _attn(n: int | None = None):
    from .toy import attention_model

    model, x = attention_model()
    return model.eval(), x if n is None else x[:n]


MODELS: dict[str, Callable[..., tuple[nn.Module, torch.Tensor]]] = {
    "mlp-paper": _paper_mlp, "cnn": _cnn, "mlp784": _mlp784, "vit": _vit, "resnet": _resnet,
    "tms": _tms, "attn": _attn,
}
"""``name -> build(n=default N) -> (model in eval mode, inputs)``."""


def build(name: str, n: int | None = None, dtype: Any = torch.float32) -> tuple[nn.Module, torch.Tensor]:
    """``(model, x)`` of a bench model in ``dtype`` (integer inputs kept), ``n`` inputs (default: the table's N)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    model, x = MODELS[name]() if n is None else MODELS[name](n)
    model = model.to(dtype)
    return model, (x.to(dtype) if x.is_floating_point() else x)
