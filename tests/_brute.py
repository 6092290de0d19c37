"""An independent brute-force eNTK for structured inputs and ``(N, *S)`` outputs.

Every output entry of every example is differentiated separately with
``torch.autograd.grad`` in float64 (examples sliced one at a time from a tensor / tuple /
dict input); the kernel is then reduced with neural-tangents' documented semantics of
``trace_axes`` / ``diagonal_axes`` by an ``einsum`` built from the axis roles. Shares no
code with :mod:`entk_core.engine`.
"""
from __future__ import annotations

import copy
import string

import torch


def _slice(x, i):
    if isinstance(x, torch.Tensor):
        return x[i:i + 1]
    if isinstance(x, (tuple, list)):
        return type(x)(_slice(v, i) for v in x)
    if isinstance(x, dict):
        return {k: _slice(v, i) for k, v in x.items()}
    return x


def _double(x):
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    if isinstance(x, (tuple, list)):
        return type(x)(_double(v) for v in x)
    if isinstance(x, dict):
        return {k: _double(v) for k, v in x.items()}
    return x


def _call(m, x):
    if isinstance(x, dict):
        out = m(**x)
    elif isinstance(x, (tuple, list)):
        out = m(*x)
    else:
        out = m(x)
    return out["logits"] if not isinstance(out, torch.Tensor) else out


def _n(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.shape[0]
    vals = x.values() if isinstance(x, dict) else x
    return next(_n(v) for v in vals if isinstance(v, (torch.Tensor, tuple, list, dict)))


def jacobian(model, x, names=None) -> torch.Tensor:
    """``(N, *S, P)`` float64 Jacobian, one ``autograd.grad`` per output entry per example."""
    m = copy.deepcopy(model).double().eval()
    params = [(n, p) for n, p in m.named_parameters() if names is None or n in names]
    for _, p in params:
        p.requires_grad_(True)
    xs = _double(x)
    rows = []
    for i in range(_n(xs)):
        out = _call(m, _slice(xs, i))[0]
        flat = out.reshape(-1)
        per = []
        for c in range(flat.shape[0]):
            gr = torch.autograd.grad(flat[c], [p for _, p in params], retain_graph=True, allow_unused=True)
            per.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                  for g, (_, p) in zip(gr, params)]))
        rows.append(torch.stack(per).reshape(*out.shape, -1))
    return torch.stack(rows)


def nt_kernel(J1: torch.Tensor, J2: torch.Tensor, trace_axes=(), diagonal_axes=()) -> torch.Tensor:
    """neural-tangents' ``empirical_ntk_fn(trace_axes, diagonal_axes)`` from Jacobians
    ``(N1, *S, P)`` / ``(N2, *S, P)``: traced axes are contracted and divided by their size,
    diagonal axes kept once, the others twice (``(x1 size, x2 size)``) in axis order."""
    nd = J1.ndim - 1
    tr = {a % nd for a in trace_axes}
    dg = {a % nd for a in diagonal_axes}
    letters = iter(string.ascii_letters)
    l1, l2, out, size = [], [], [], 1
    for i in range(nd):
        a = next(letters)
        if i in tr:
            l1.append(a)
            l2.append(a)
            size *= J1.shape[i]
        elif i in dg:
            l1.append(a)
            l2.append(a)
            out.append(a)
        else:
            b = next(letters)
            l1.append(a)
            l2.append(b)
            out += [a, b]
    p = next(letters)
    K = torch.einsum(f"{''.join(l1)}{p},{''.join(l2)}{p}->{''.join(out)}", J1, J2)
    return K / size
