"""The flattened Jacobian and the structured operator's factors (a private module of
:mod:`entk_core.engine`).

Shared by :mod:`entk_core.engine.operators` (:class:`~entk_core.engine.operators.KernelOperator`,
:func:`~entk_core.engine.operators.flat_jacobian`) and :mod:`entk_core.engine.eigenpairs`
(the top-k paths): :func:`flat_ctx` validates a flattened request (class-major rows
``c·N + n``), :func:`jacobian_from_ctx` writes the explicit ``J (C·N, P)``,
:class:`StructuredOp` keeps ``K = J Jᵀ`` as per-layer factors and applies it, and
:func:`structured_bytes` / :func:`structured_flops` cost that operator for the planner.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ._channels import Side
from ._factors import elementwise_jacobians, layer_factors, per_example_jacobian
from ._guards import autograd_on, no_tf32
from ._inputs import ranges
from ._layers import Layer
from ._request import Ctx
from .machine import resolve_budget
from .planner import MemoryBudgetError
from .units import format_bytes

__all__ = ["Factored", "StructuredOp", "all_side", "factored_cost", "flat_ctx", "jacobian_from_ctx", "layer_columns",
           "param_offsets", "structured_bytes", "structured_flops"]


def flat_ctx(model, x, class_weights, groups, dtype, device, check_finite=True, allow_train_mode=True,
              stacklevel=5) -> Ctx:
    with no_tf32(), autograd_on():
        return Ctx(model, x, None, reduction="flat", class_weights=class_weights, groups=groups,
                   method="structured", dtype=dtype, device=device, plan=False, check_finite=check_finite,
                   allow_train_mode=allow_train_mode, warn_stacklevel=stacklevel)


def all_side(ctx: Ctx) -> Side:
    return Side(tuple(range(ctx.C)), ctx.C, 1)


def layer_columns(ctx: Ctx, L: Layer, G: torch.Tensor, A: Any) -> dict[str, torch.Tensor]:
    """Explicit per-example Jacobian columns of one structured layer: ``{param: (C, B, numel)}``
    in the parameter's own (row-major) layout."""
    C, B = G.shape[0], G.shape[1]
    out: dict[str, torch.Tensor] = {}
    if L.kind == "elementwise":
        return elementwise_jacobians(L, G, A)
    if L.w_name:
        if L.kind == "embedding":
            Jw = torch.einsum("cbto,btv->cbvo", G, F.one_hot(A, L.n_in).to(G.dtype))
        elif L.transposed:
            Jw = torch.einsum("cbto,bti->cbio", G, A)
        else:
            Jw = torch.einsum("cbto,bti->cboi", G, A)
        out[L.w_name] = Jw.reshape(C, B, -1)
    if L.b_name:
        out[L.b_name] = G.sum(2)
    return out


def param_offsets(ctx: Ctx) -> tuple[dict[str, tuple[int, int]], int]:
    offs, P = {}, 0
    for n in ctx.names:
        offs[n] = (P, P + math.prod(ctx.shapes[n]))
        P = offs[n][1]
    return offs, P


def jacobian_from_ctx(ctx: Ctx, chunk_size: int | None, memory_budget, progress=None) -> torch.Tensor:
    C, N = ctx.C, ctx.N1
    offs, P = param_offsets(ctx)
    budget = resolve_budget(memory_budget, ctx.device)
    need = C * N * P * ctx.dtype.itemsize
    if need > budget:
        raise MemoryBudgetError(
            f"flat_jacobian(N={N}, C={C}, P={P}, {str(ctx.dtype).replace('torch.', '')}) needs about "
            f"{format_bytes(need)} but the memory budget is {format_bytes(budget)}; what would fit: "
            f"at most {max(1, budget // max(1, C * P * ctx.dtype.itemsize))} inputs, one layer group, or the "
            f"matrix-free KernelOperator (mode='vjp')")
    J = torch.empty(C, N, P, dtype=ctx.dtype, device=ctx.device)
    per_ex = max(1, 4 * C * P + 8 * C * int(ctx.act))
    B = int(chunk_size) if chunk_size else max(1, min(N, int((budget - need) // 4 // (per_ex * ctx.dtype.itemsize))))
    side = all_side(ctx)
    chunks = ranges(N, B)
    ctx.chunk = B
    for ci, (a, b) in enumerate(chunks):
        xs = ctx.x1.slice(a, b)
        for L, G, A in layer_factors(ctx, xs, side):
            for n, Jn in layer_columns(ctx, L, G, A).items():
                o0, o1 = offs[n]
                J[:, a:b, o0:o1] = Jn
        for n, Jn in per_example_jacobian(ctx, ctx.fallback, xs, side).items():
            o0, o1 = offs[n]
            J[:, a:b, o0:o1] = Jn
        if progress is not None:
            progress(ci + 1, len(chunks), f"Jacobian chunk {ci + 1}/{len(chunks)}")
    return J.reshape(C * N, P)


# ------------------------------------------------------------ structured operator
@dataclass
class Factored:
    """One factored layer of the structured operator: ``Gn (N, C, T·O)`` and ``A (N·T, I)``
    (features; a constant-1 column when the bias is merged) or token ids ``(N·T,)``."""

    kind: str          # "linear" | "embedding"
    Gn: torch.Tensor
    A: torch.Tensor
    T: int
    O: int
    I: int


def factored_cost(L: Layer, C: int, N: int) -> tuple[float, float, float, float]:
    """(factored flops/vector, factored elements, explicit flops/vector, explicit elements)."""
    T, O = L.positions, L.n_out
    I = L.merged_in if L.kind in ("linear", "conv") else 1
    fac_el = C * N * T * O + N * T * (I if L.kind != "embedding" else 1)
    P = O * (L.n_in if L.kind != "embedding" else L.n_in) + (O if L.b_name else 0)
    if L.kind == "embedding":
        fac_fl = 4.0 * C * N * T * O + 4.0 * N * T * O
    else:
        fac_fl = 4.0 * N * T * O * (C + I)
    return fac_fl, float(fac_el), 4.0 * C * N * P, float(C * N * P)


class StructuredOp:
    """``K = J Jᵀ`` from per-layer factors of all inputs (see the module docstring)."""

    def __init__(self, ctx: Ctx, op_dtype: torch.dtype, chunk: int, progress=None):
        C, N = ctx.C, ctx.N1
        self.C, self.N, self.dtype, self.device = C, N, op_dtype, ctx.device
        side = all_side(ctx)
        self.factored = []
        choice = {}
        for L in ctx.layers:
            if L.kind == "elementwise":
                choice[id(L)] = False
                continue
            ff, fe, ef, ee = factored_cost(L, C, N)
            choice[id(L)] = ff < ef
        offs_names = [n for L in ctx.layers if not choice[id(L)] for n in L.param_names()] + list(ctx.fallback)
        Pexp = sum(math.prod(ctx.shapes[n]) for n in offs_names)
        offs, p = {}, 0
        for n in offs_names:
            offs[n] = (p, p + math.prod(ctx.shapes[n]))
            p = offs[n][1]
        self.Jexp = torch.empty(C, N, Pexp, dtype=op_dtype, device=ctx.device) if Pexp else None
        parts_G: dict[int, list] = {id(L): [] for L in ctx.layers if choice[id(L)]}
        parts_A: dict[int, list] = {id(L): [] for L in ctx.layers if choice[id(L)]}
        chunks = ranges(N, chunk)
        for ci, (a, b) in enumerate(chunks):
            xs = ctx.x1.slice(a, b)
            for L, G, A in layer_factors(ctx, xs, side):
                if choice[id(L)]:
                    parts_G[id(L)].append(G.to(op_dtype))
                    if L.kind in ("linear", "conv") and L.b_name:
                        A = torch.cat([A, torch.ones(A.shape[:-1] + (1,), dtype=A.dtype, device=A.device)], -1)
                    parts_A[id(L)].append(A.to(op_dtype) if A.is_floating_point() else A)
                else:
                    for n, Jn in layer_columns(ctx, L, G, A).items():
                        o0, o1 = offs[n]
                        self.Jexp[:, a:b, o0:o1] = Jn
            for n, Jn in per_example_jacobian(ctx, ctx.fallback, xs, side).items():
                o0, o1 = offs[n]
                self.Jexp[:, a:b, o0:o1] = Jn
            if progress is not None:
                progress(ci + 1, len(chunks), f"eNTK factors, chunk {ci + 1}/{len(chunks)}")
        for L in ctx.layers:
            if not choice[id(L)]:
                continue
            G = torch.cat(parts_G.pop(id(L)), 1)                   # (C, N, T, O)
            A = torch.cat(parts_A.pop(id(L)), 0)                   # (N, T, I) or (N, T)
            T, O = G.shape[2], G.shape[3]
            Gn = G.permute(1, 0, 2, 3).reshape(N, C, T * O).contiguous()
            del G
            if L.kind == "embedding":
                self.factored.append(Factored("embedding", Gn, A.reshape(-1), T, O, L.n_in))
            else:
                self.factored.append(Factored("linear", Gn, A.reshape(N * T, -1).contiguous(), T, O, A.shape[-1]))
        if self.Jexp is not None:
            self.Jexp = self.Jexp.reshape(C * N, Pexp)
        self.flops_per_vector = sum((4.0 * N * f.T * f.O * (C + (f.I if f.kind == "linear" else 1))) for f in self.factored)
        self.flops_per_vector += 4.0 * C * N * Pexp
        self.explicit_params = Pexp

    def nbytes(self) -> int:
        n = sum(f.Gn.numel() * f.Gn.element_size() + f.A.numel() * f.A.element_size() for f in self.factored)
        if self.Jexp is not None:
            n += self.Jexp.numel() * self.Jexp.element_size()
        return int(n)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        C, N = self.C, self.N
        k = V.shape[1]
        V = V.to(self.dtype)
        out = self.Jexp @ (self.Jexp.T @ V) if self.Jexp is not None else torch.zeros_like(V)
        if not self.factored:
            return out
        Vn = V.T.reshape(k, C, N).permute(2, 0, 1).contiguous()          # (N, k, C)
        acc = torch.zeros(N, C, k, dtype=self.dtype, device=V.device)
        for f in self.factored:
            T, O = f.T, f.O
            Gv = torch.bmm(Vn, f.Gn)                                       # (N, k, T·O)
            if f.kind == "linear" and T == 1:
                U = Gv.view(N, k * O).T @ f.A                              # (k·O, I): Jᵀ v as weights
                Y = (f.A @ U.T).view(N, k, O).transpose(1, 2)              # (N, O, k) view
            elif f.kind == "linear":
                Gt = Gv.view(N, k, T, O).permute(1, 3, 0, 2).reshape(k * O, N * T)
                U = Gt @ f.A
                Y = (f.A @ U.T).view(N, T, k, O).permute(0, 1, 3, 2).reshape(N, T * O, k)
            else:
                U = torch.zeros(k, f.I, O, dtype=self.dtype, device=V.device)
                U.index_add_(1, f.A, Gv.view(N, k, T, O).permute(1, 0, 2, 3).reshape(k, N * T, O))
                Y = U[:, f.A].view(k, N, T, O).permute(1, 2, 3, 0).reshape(N, T * O, k)
            acc.baddbmm_(f.Gn, Y)                                          # (N, C, k)
        return out + acc.permute(1, 0, 2).reshape(C * N, k)


def structured_bytes(ctx: Ctx, op_dtype: torch.dtype) -> int:
    """Bytes of the structured operator's factors (and explicit columns) in ``op_dtype``."""
    C, N = ctx.C, ctx.N1
    el = 0.0
    for L in ctx.layers:
        if L.kind == "elementwise":
            el += C * N * sum(math.prod(ctx.shapes[n]) for n in L.param_names())
            continue
        ff, fe, ef, ee = factored_cost(L, C, N)
        el += fe if ff < ef else ee
    el += C * N * sum(math.prod(ctx.shapes[n]) for n in ctx.fallback)
    return int(el * op_dtype.itemsize)


def structured_flops(ctx: Ctx) -> float:
    C, N = ctx.C, ctx.N1
    fl = 0.0
    for L in ctx.layers:
        if L.kind == "elementwise":
            fl += 4.0 * C * N * sum(math.prod(ctx.shapes[n]) for n in L.param_names())
            continue
        ff, _, ef, _ = factored_cost(L, C, N)
        fl += min(ff, ef)
    fl += 4.0 * C * N * sum(math.prod(ctx.shapes[n]) for n in ctx.fallback)
    return fl
