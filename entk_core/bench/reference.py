"""The benchmark's references, written here and independent of the engine.

* :func:`tutorial_ntk` -- the PyTorch NTK tutorial's Jacobian contraction
  (``torch.func``: ``functional_call`` + ``vmap(jacrev(f_single))``, each parameter's
  Jacobian flattened to ``(N, C, P_i)``, ``einsum`` per parameter, summed). It is what a
  researcher writes from the tutorial (and what the paper's code does with the deprecated
  functorch API); the only liberties taken are ones the tutorial allows: ``chunk_size``
  on ``vmap`` to bound memory, the contraction done in row blocks (same flops, no
  ``torch.stack`` of all per-parameter kernels), and a "mean" kernel computed as the
  tutorial's kernel of the class-mean output ``mean_c f_c`` (the same kernel, ``C``× fewer
  Jacobian rows).
* :func:`bruteforce_ntk` -- per example and per output channel, one ``torch.autograd.grad``
  of a float64 copy of the model: the slowest, most obviously right kernel, used to check
  the tutorial reference once per case and in the unit tests.

Both return kernels in the engine's conventions (:mod:`entk_core.engine.kernels`):
``"full"`` ``(N1, N2, C, C)``, ``"trace"`` ``(N1, N2)`` (mean over the diagonal
channels), ``"mean"`` ``(N1, N2)`` (mean over all channel pairs), ``"flat"``
``(C·N1, C·N2)`` class-major (row ``c·N1 + n``); ``by_layer=True`` gives
``{group: kernel}`` with the engine's groups (a parameter's owning module path).

**PyTorch hazard.** ``vmap(jacrev(...))`` gives wrong per-example Jacobians for
``nn.PReLU`` when a vmap chunk's size equals the number of outputs ``C`` (a PyTorch bug;
the tutorial recipe is wrong there too). The bench's models have no PReLU; even so
:func:`safe_chunk` never returns a chunk of size ``C``.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

__all__ = ["group_of", "safe_chunk", "tutorial_jacobian", "tutorial_ntk", "tutorial_flat_operator",
           "bruteforce_ntk", "check_reference", "REDUCTIONS"]

REDUCTIONS = ("full", "trace", "mean", "flat")


def group_of(name: str) -> str:
    """A parameter's layer group: the dotted path of its owning module (``net.0.weight -> net.0``)."""
    return name.rsplit(".", 1)[0] if "." in name else name


def safe_chunk(chunk: int | None, C: int) -> int | None:
    """``chunk``, moved off ``C`` (a vmap chunk of size ``C`` triggers PyTorch's PReLU bug)."""
    return chunk + 1 if chunk is not None and chunk == C else chunk


def _f_single(model: nn.Module, reduce: str | None, weights: torch.Tensor | None) -> Callable:
    def f_single(params, x):
        out = functional_call(model, params, (x.unsqueeze(0),)).squeeze(0).reshape(-1)
        if weights is not None:
            out = out * weights
        if reduce == "mean":
            out = out.mean(-1, keepdim=True)
        return out
    return f_single


def tutorial_jacobian(model: nn.Module, x: torch.Tensor, *, reduce: str | None = None,
                      weights: torch.Tensor | None = None, chunk_size: int | None = None,
                      only: list[str] | None = None) -> dict[str, torch.Tensor]:
    """``{parameter name: (N, C, P_i)}``: the tutorial's ``vmap(jacrev(f_single), (None, 0))``.
    ``weights`` multiply the output channels; ``reduce="mean"`` differentiates ``mean_c f_c``
    instead (``C = 1``); ``only``: the Jacobian w.r.t. these parameters (the others fixed)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    sub = params if only is None else {k: params[k] for k in only}
    rest = {} if only is None else {k: v for k, v in params.items() if k not in sub}
    g = _f_single(model, reduce, weights)

    def f(p, x):
        return g({**rest, **p}, x)

    with torch.no_grad():
        C = f(sub, x[0]).numel()
    jac = vmap(jacrev(f), (None, 0), chunk_size=safe_chunk(chunk_size, C))(sub, x)
    return {k: j.flatten(2) for k, j in jac.items()}


def _contract(j1: torch.Tensor, j2: torch.Tensor, reduction: str, out: torch.Tensor | None,
              rows: int = 256) -> torch.Tensor:
    """``einsum`` of one parameter's Jacobians, added to ``out``, in row blocks of ``rows`` examples."""
    N1, C = j1.shape[0], j1.shape[1]
    N2 = j2.shape[0]
    if out is None:
        shape = {"full": (N1, N2, C, C), "flat": (C, N1, C, N2), "trace": (N1, N2), "mean": (N1, N2)}[reduction]
        out = torch.zeros(shape, dtype=j1.dtype, device=j1.device)
    for i in range(0, N1, rows):
        a = j1[i:i + rows]
        if reduction == "full":
            out[i:i + rows] += torch.einsum("Naf,Mbf->NMab", a, j2)
        elif reduction == "flat":  # out: (C, N1, C, N2), the class-major flattened kernel's view
            out[:, i:i + rows] += torch.einsum("Naf,Mbf->aNbM", a, j2)
        elif reduction == "trace":
            out[i:i + rows] += torch.einsum("Naf,Maf->NM", a, j2) / C
        else:  # mean: the Jacobian of mean_c f_c (C = 1)
            out[i:i + rows] += torch.einsum("Naf,Maf->NM", a, j2)
    return out


def tutorial_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *, reduction: str = "full",
                 by_layer: bool = False, weights: torch.Tensor | None = None, chunk_size: int | None = None,
                 per_param: bool = False) -> Any:
    """The empirical NTK by the tutorial's Jacobian contraction (see the module docstring).
    ``reduction`` in ``full``/``trace``/``mean``/``flat``; ``by_layer``: ``{group: kernel}``.
    ``per_param``: take the Jacobian of one parameter at a time and free it after its
    contraction (memory: the largest parameter's Jacobian, not all of them; one more
    forward and backward per parameter)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    kw = {"reduce": "mean" if reduction == "mean" else None, "weights": weights, "chunk_size": chunk_size}
    names = [n for n, _ in model.named_parameters()]
    outs: dict[str, torch.Tensor] = {}
    for part in ([[n] for n in names] if per_param else [names]):
        J1 = tutorial_jacobian(model, x1, only=part, **kw)
        J2 = J1 if x2 is None else tutorial_jacobian(model, x2, only=part, **kw)
        for name in part:
            key = group_of(name) if by_layer else "all"
            outs[key] = _contract(J1[name], J2[name], reduction, outs.get(key))
        del J1, J2
    if reduction == "flat":
        outs = {k: v.view(v.shape[0] * v.shape[1], -1) for k, v in outs.items()}
    return outs if by_layer else outs["all"]


def _flat(K: torch.Tensor) -> torch.Tensor:
    N1, N2, C, _ = K.shape
    return K.permute(2, 0, 3, 1).reshape(C * N1, C * N2)


def tutorial_flat_operator(model: nn.Module, x: torch.Tensor, *, weights: torch.Tensor | None = None,
                           chunk_size: int | None = None):
    """The flattened kernel ``J Jᵀ`` (class-major, ``(C·N, C·N)``) as a
    ``scipy.sparse.linalg.LinearOperator`` on the tutorial's Jacobian (float64 products on
    the host), for ``eigsh``: what a tutorial user does when the dense kernel is too big."""
    import numpy as np
    from scipy.sparse.linalg import LinearOperator

    J = tutorial_jacobian(model, x, weights=weights, chunk_size=chunk_size)
    N, C = next(iter(J.values())).shape[:2]
    Jf = torch.cat([j.permute(1, 0, 2).reshape(C * N, -1) for j in J.values()], 1).cpu().numpy()

    def mv(v):
        v = np.asarray(v, dtype=Jf.dtype).reshape(-1)
        return Jf @ (Jf.T @ v)

    return LinearOperator((C * N, C * N), matvec=mv, dtype=Jf.dtype)


def bruteforce_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *,
                   reduction: str = "full", by_layer: bool = False,
                   weights: torch.Tensor | None = None) -> Any:
    """The eNTK in float64 by one ``torch.autograd.grad`` per example and output channel on a
    float64 copy of ``model`` (floating inputs are cast to float64). Small inputs only."""
    m = copy.deepcopy(model).double().eval()
    names = [n for n, _ in m.named_parameters()]
    params = [p for _, p in m.named_parameters()]
    w = None if weights is None else weights.detach().double()

    def jac(x):
        rows = []
        for i in range(x.shape[0]):
            xi = x[i:i + 1].double() if x.is_floating_point() else x[i:i + 1]
            with torch.enable_grad():
                out = m(xi).reshape(-1)
                if w is not None:
                    out = out * w
                per_c = [torch.autograd.grad(out[c], params, retain_graph=True, allow_unused=True)
                         for c in range(out.numel())]
            rows.append([torch.stack([torch.zeros_like(p).reshape(-1) if g[k] is None else g[k].reshape(-1)
                                      for g in per_c]) for k, p in enumerate(params)])
        return {n: torch.stack([r[k] for r in rows]) for k, n in enumerate(names)}   # (N, C, P_i)

    J1 = jac(x1)
    J2 = J1 if x2 is None else jac(x2)
    outs: dict[str, torch.Tensor] = {}
    for n in names:
        key = group_of(n) if by_layer else "all"
        a, b = J1[n], J2[n]
        full = torch.einsum("ncp,mdp->nmcd", a, b)
        if reduction == "trace":
            k = torch.diagonal(full, dim1=2, dim2=3).mean(-1)
        elif reduction == "mean":
            k = full.mean((2, 3))
        elif reduction == "flat":
            k = _flat(full)
        else:
            k = full
        outs[key] = k if key not in outs else outs[key] + k
    return outs if by_layer else outs["all"]


def check_reference(model: nn.Module, x: torch.Tensor, n: int = 6, *, reduction: str = "full",
                    by_layer: bool = False, weights: torch.Tensor | None = None) -> float:
    """Max relative error (``max|A − B| / max|B|``) of :func:`tutorial_ntk` run in float64 against
    :func:`bruteforce_ntk` on the first ``n`` inputs: the reference's own check."""
    m = copy.deepcopy(model).double().eval()
    xs = x[:n].double() if x.is_floating_point() else x[:n]
    w = None if weights is None else weights.double()
    a = tutorial_ntk(m, xs, reduction=reduction, by_layer=by_layer, weights=w)
    b = bruteforce_ntk(m, xs, reduction=reduction, by_layer=by_layer, weights=w)
    if not by_layer:
        a, b = {"all": a}, {"all": b}
    num = max(float((a[k] - b[k]).abs().max()) for k in b)
    den = max(float(b[k].abs().max()) for k in b)
    return num / den if den else num
