"""Tiny models and an independent brute-force eNTK for the kernel/operator/planner tests.

The brute force differentiates every output of every example separately with
``torch.autograd.grad`` (float64) and contracts the full Jacobian rows: it shares no
code with :mod:`entk_core.engine.kernels`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Linear(+bias) -> tanh -> Linear(+bias) -> GELU -> Linear(no bias). (N, 5) -> (N, 3)."""

    def __init__(self, d_in=5, h=7, C=3):
        super().__init__()
        self.l1 = nn.Linear(d_in, h)
        self.l2 = nn.Linear(h, h)
        self.out = nn.Linear(h, C, bias=False)

    def forward(self, x):
        return self.out(F.gelu(self.l2(torch.tanh(self.l1(x)))))


class EmbedSeq(nn.Module):
    """Token ids (N, T) -> Embedding (with padding_idx) -> per-position Linear+ReLU ->
    mean over positions -> Linear. Output (N, C)."""

    def __init__(self, V=6, d=4, h=5, C=3):
        super().__init__()
        self.emb = nn.Embedding(V, d, padding_idx=0)
        self.mix = nn.Linear(d, h)
        self.head = nn.Linear(h, C)

    def forward(self, tok):
        e = self.emb(tok)                         # (N, T, d)
        hid = torch.relu(self.mix(e))             # (N, T, h)
        return self.head(hid.mean(1) + hid[:, -1])


class TinyAttn(nn.Module):
    """One attention block on token ids (N, T): embedding + raw positional parameter,
    LayerNorm, single-head causal attention (Linear Q/K/V/O), residual MLP, unembed at
    the last position. Contains a raw nn.Parameter (pos) and LayerNorm gains."""

    def __init__(self, V=5, T=3, d=6, d_mlp=8):
        super().__init__()
        self.embed = nn.Embedding(V, d)
        self.pos = nn.Parameter(torch.randn(T, d) / math.sqrt(d))
        self.ln = nn.LayerNorm(d)
        self.W_Q = nn.Linear(d, d, bias=False)
        self.W_K = nn.Linear(d, d, bias=False)
        self.W_V = nn.Linear(d, d, bias=False)
        self.W_O = nn.Linear(d, d)
        self.mlp_in = nn.Linear(d, d_mlp)
        self.mlp_out = nn.Linear(d_mlp, d)
        self.unembed = nn.Linear(d, V, bias=False)

    def forward(self, tok):
        x = self.embed(tok) + self.pos[: tok.shape[1]]
        h = self.ln(x)
        q, k, v = self.W_Q(h), self.W_K(h), self.W_V(h)
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        T = tok.shape[1]
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=tok.device), 1)
        a = torch.softmax(s.masked_fill(mask, float("-inf")), -1)
        x = x + self.W_O(a @ v)
        x = x + self.mlp_out(torch.relu(self.mlp_in(x)))
        return self.unembed(x)[:, -1]


class TMS(nn.Module):
    """Toy model of superposition: y = ReLU(x Wᵀ W + b), W (m, n) raw parameter."""

    def __init__(self, m=3, n=6):
        super().__init__()
        self.W = nn.Parameter(torch.randn(m, n) * math.sqrt(2 / (m + n)))
        self.b = nn.Parameter(0.1 * torch.randn(n))

    def forward(self, x):
        return torch.relu(x @ self.W.T @ self.W + self.b)


class TiedLinear(nn.Module):
    """A Linear whose weight is also used outside its module (weight tying): the
    structured rule alone would be wrong, so it must fall back."""

    def __init__(self, d=4, C=4):
        super().__init__()
        self.enc = nn.Linear(d, C)
        self.mid = nn.Linear(C, C)

    def forward(self, x):
        h = torch.tanh(self.enc(x))
        return self.mid(h) + h @ self.enc.weight


class InplaceMLP(nn.Module):
    """Sequential with an in-place ReLU right after a Linear."""

    def __init__(self, d=4, h=6, C=3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, h), nn.ReLU(inplace=True), nn.Linear(h, C))

    def forward(self, x):
        return self.net(x)


def make(name: str, seed: int = 0):
    """``(model, x1, x2)`` for a named architecture (float32 model, small shapes)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    if name == "mlp":
        return MLP(), torch.randn(6, 5, generator=g), torch.randn(4, 5, generator=g)
    if name == "embed":
        return EmbedSeq(), torch.randint(0, 6, (6, 4), generator=g), torch.randint(0, 6, (5, 4), generator=g)
    if name == "attn":
        return TinyAttn(), torch.randint(0, 5, (5, 3), generator=g), torch.randint(0, 5, (4, 3), generator=g)
    if name == "tms":
        x1 = torch.rand(7, 6, generator=g) * (torch.rand(7, 6, generator=g) < 0.6)
        x2 = torch.rand(4, 6, generator=g)
        return TMS(), x1 / (x1.norm(dim=1, keepdim=True) + 1e-8), x2
    if name == "tied":
        return TiedLinear(), torch.randn(5, 4, generator=g), torch.randn(3, 4, generator=g)
    if name == "inplace":
        return InplaceMLP(), torch.randn(5, 4, generator=g), torch.randn(3, 4, generator=g)
    raise KeyError(name)


ARCHS = ("mlp", "embed", "attn", "tms")


def brute_jacobian(model: nn.Module, x: torch.Tensor, names=None) -> torch.Tensor:
    """``(N, C, P)`` float64 Jacobian: one ``torch.autograd.grad`` per output per example."""
    import copy

    m = copy.deepcopy(model).double()
    m.eval()
    for p in m.parameters():
        p.requires_grad_(True)
    params = [(n, p) for n, p in m.named_parameters() if names is None or n in names]
    xs = x.double() if x.is_floating_point() else x
    rows = []
    for i in range(xs.shape[0]):
        out = m(xs[i: i + 1]).reshape(-1)
        per = []
        for c in range(out.shape[0]):
            gr = torch.autograd.grad(out[c], [p for _, p in params], retain_graph=True, allow_unused=True)
            per.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                  for g, (_, p) in zip(gr, params)]))
        rows.append(torch.stack(per))
    return torch.stack(rows)


def brute_ntk(model, x1, x2=None, names=None, class_weights=None) -> torch.Tensor:
    """``(N1, N2, C, C)`` float64 eNTK from :func:`brute_jacobian`."""
    J1 = brute_jacobian(model, x1, names)
    J2 = J1 if x2 is None else brute_jacobian(model, x2, names)
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=torch.float64)
        J1, J2 = J1 * w[None, :, None], J2 * w[None, :, None]
    return torch.einsum("ncp,mdp->nmcd", J1, J2)
