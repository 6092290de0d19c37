"""Tiny models at the edges of the eNTK engine (issue 18), for the hazard and spot-check tests.

Each builder returns ``(model, inputs(N) -> x)``, float64, seeded. The kernels are checked
against :func:`_brute.jacobian` / :func:`_kernel_models.brute_ntk` (one autograd call per output
per example, float64), which share no code with the engine.

* :class:`SeqFirst` -- a ``Linear`` fed a sequence-first ``(T, N, d)`` tensor (``T = 4``: the
  same leading size as the engine's 4 probe examples, so only a per-example check sees it);
* :class:`Hyper` -- a ``Linear`` applied to a parameter (a hypernetwork: 4 rows, like the probe);
* :class:`FoldRows` -- a ``Linear`` applied batch-first on up to 4 examples but to a tensor
  folded into 4 rows on more: passes any check on the probe, breaks on a later chunk;
* :class:`SharedParamMLP` -- ``Linear -> act -> Linear`` with ``act`` one of
  :data:`SHARED_PARAM_ACTS`: ``nn.PReLU`` (one slope, and one per channel) and its kin, modules
  with a parameter broadcast over channels (``vmap(jacrev)`` is wrong for PReLU when a chunk has
  as many examples as outputs);
* :class:`MHA` -- ``nn.MultiheadAttention`` (batch-first or not) then a Linear head (forward-mode
  AD is not implemented for its fused eval kernel).
"""
from __future__ import annotations

import torch
from torch import nn

F64 = torch.float64


class SeqFirst(nn.Module):
    """``(N, T, d) -> (N, C)``: ``inp`` batch-first, then ``mix`` on the transposed ``(T, N, h)``."""

    def __init__(self, d=3, h=4, C=2):
        super().__init__()
        self.inp = nn.Linear(d, h)
        self.mix = nn.Linear(h, h)
        self.head = nn.Linear(h, C)

    def forward(self, x):
        h = torch.tanh(self.inp(x)).transpose(0, 1)       # (T, N, h): sequence-first
        return self.head(torch.tanh(self.mix(h)).mean(0))


class Hyper(nn.Module):
    """``(N, d) -> (N, C)`` with the weights ``W = gen(z)`` generated from a parameter ``z (4, 3)``."""

    def __init__(self, d=3, C=2):
        super().__init__()
        self.z = nn.Parameter(torch.randn(4, 3))
        self.gen = nn.Linear(3, d)
        self.head = nn.Linear(d, C)

    def forward(self, x):
        W = self.gen(self.z)                              # (4, d): a Linear on a parameter
        return self.head(torch.tanh(x @ W.T @ W))


class FoldRows(nn.Module):
    """``(N, d) -> (N, C)``: ``mix`` sees ``(min(N, 4), N / min(N, 4), d)`` (N a multiple of 4 above
    4): one example per row on the probe, several per row on a larger chunk. Position-wise, so
    the eNTK is well defined per example."""

    def __init__(self, d=3, h=4, C=2):
        super().__init__()
        self.mix = nn.Linear(d, h)
        self.head = nn.Linear(h, C)

    def forward(self, x):
        N = x.shape[0]
        h = torch.tanh(self.mix(x.reshape(min(N, 4), -1, x.shape[-1])))
        return self.head(h.reshape(N, -1))


class ScalarGain(nn.Module):
    """``a · x`` with one learned scalar ``a``."""

    def __init__(self, h):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.7))

    def forward(self, x):
        return self.a * x


class LearnedLeaky(nn.Module):
    """``where(x > 0, x, a · x)``: PReLU written out, one learned slope."""

    def __init__(self, h):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.2))

    def forward(self, x):
        return torch.where(x > 0, x, self.a * x)


SHARED_PARAM_ACTS = {
    "prelu": lambda h: nn.PReLU(),
    "prelu-per-channel": lambda h: nn.PReLU(h),
    "scalar-gain": ScalarGain,
    "learned-leaky": LearnedLeaky,
}


class SharedParamMLP(nn.Module):
    """``Linear(d, h) -> act -> Linear(h, C)``; the issue's case is d=8, h=16, C=10, PReLU."""

    def __init__(self, act="prelu", d=8, h=16, C=10):
        super().__init__()
        self.l1 = nn.Linear(d, h)
        self.act = SHARED_PARAM_ACTS[act](h)
        self.l2 = nn.Linear(h, C)

    def forward(self, x):
        return self.l2(self.act(self.l1(x)))


class MHA(nn.Module):
    """``(N, T, E) -> (N, C)``: ``nn.MultiheadAttention`` self-attention, mean over positions,
    Linear head."""

    def __init__(self, E=4, heads=2, C=3, batch_first=True):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, heads, batch_first=batch_first)
        self.head = nn.Linear(E, C)
        self.batch_first = batch_first

    def forward(self, x):
        h = x if self.batch_first else x.transpose(0, 1)
        a = self.attn(h, h, h, need_weights=False)[0]
        a = a if self.batch_first else a.transpose(0, 1)
        return self.head(a.mean(1))


def build(name: str, seed: int = 0, **kw):
    """``(model, inputs)``: the named model in float64 eval mode and ``inputs(N, seed=1)``."""
    torch.manual_seed(seed)
    if name == "seq-first":
        m, shape = SeqFirst(**kw), lambda n: (n, 4, 3)
    elif name == "hyper":
        m, shape = Hyper(**kw), lambda n: (n, 3)
    elif name == "fold-rows":
        m, shape = FoldRows(**kw), lambda n: (n, 3)
    elif name == "shared-param":
        m = SharedParamMLP(**kw)
        shape = (lambda d: (lambda n: (n, d)))(m.l1.in_features)
    elif name == "mha":
        m, shape = MHA(**kw), lambda n: (n, 3, 4)
    else:
        raise KeyError(name)
    m = m.to(F64).eval()

    def inputs(n: int, seed: int = 1) -> torch.Tensor:
        return torch.randn(*shape(n), generator=torch.Generator().manual_seed(seed), dtype=F64)

    return m, inputs
