"""Per-chunk factors every kernel path contracts (a private module of :mod:`entk_core.engine`).

For a chunk of inputs and one side's output channels (:class:`~._channels.Side`):

* :func:`struct_forward` -- one forward with the structured layers' calls captured
  (inputs and outputs, the outputs still attached to the graph);
* :func:`layer_inputs` / :func:`struct_grads` -- per structured layer, its inputs ``A``
  (features, conv patches, token ids, or ``∂y/∂q`` of a norm) and the output cotangents
  ``G (CL, B, T, O)`` of the side's channels, from one batched backward;
* :func:`per_example_jacobian` -- ``vmap(jacrev)`` Jacobians of the parameters without a
  rule (a per-example loop where vmap cannot batch the model);
* :func:`prepare_layer` -- one layer's ``G`` and ``A`` as a contraction term: per-example
  gradient rows (``"flat"``) or a pairwise ``(G, A)`` term;
* :func:`structured_factors` -- all of it for a chunk, as one :class:`Fac` per output key
  (``ALL``, or one per layer group for layerwise kernels).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import jacrev, vmap

from ._channels import Side
from ._guards import error_reason
from ._inputs import Batch, ranges
from ._layers import Layer, elementwise_deriv, unfold_patches
from ._request import ALL, Ctx

__all__ = [
    "Fac", "Fwd", "elementwise_jacobians", "fallback_jacobian", "flat_layout", "key_of", "keys", "layer_factors",
    "layer_inputs", "per_example_jacobian", "prepare_layer", "struct_forward", "struct_grads", "structured_factors",
]


# ------------------------------------------------------------------ cotangents
def _cotangents(ctx: Ctx, out: torch.Tensor, ys: list[torch.Tensor], side: Side, retain: bool = False) -> list:
    """Cotangents at each ``y`` for the side's channels: list of ``(CL, *y.shape)``
    (``None`` where ``y`` does not influence the output)."""
    B, C = out.shape
    w = ctx.w
    if not ys:
        return []
    if side.channels is None:
        go = (w / C).expand(B, C)
        gs = torch.autograd.grad(out, ys, go, allow_unused=True, retain_graph=retain)
        return [None if g is None else g.unsqueeze(0) for g in gs]
    cls = torch.tensor(side.channels, device=out.device)
    CL = len(side.channels)
    go = torch.zeros(CL, B, C, dtype=out.dtype, device=out.device)
    go[torch.arange(CL, device=out.device), :, cls] = w[cls][:, None]
    if CL == 1:
        gs = torch.autograd.grad(out, ys, go[0], allow_unused=True, retain_graph=retain)
        return [None if g is None else g.unsqueeze(0) for g in gs]
    # a few channels of a model with large activations (convolutions): one backward per
    # channel is faster than vmap's batched backward; otherwise batch the channels
    big = CL <= 32 and B * ctx.act >= 2e6
    if not ctx.has_rnn and not big:
        try:
            gs = torch.autograd.grad(out, ys, go, is_grads_batched=True, allow_unused=True, retain_graph=True)
            return list(gs)
        except (RuntimeError, NotImplementedError) as e:
            ctx.note_loop("batched cotangents", error_reason(e))
    elif ctx.has_rnn:
        ctx.note_loop("batched cotangents", "the model contains a recurrent module: one backward per channel")
    res: list = [None] * len(ys)
    for k in range(CL):
        gk = torch.autograd.grad(out, ys, go[k], allow_unused=True, retain_graph=retain or k < CL - 1)
        for i, g in enumerate(gk):
            if g is None:
                continue
            if res[i] is None:
                res[i] = torch.zeros((CL,) + tuple(g.shape), dtype=g.dtype, device=g.device)
            res[i][k] = g
    return res


@dataclass
class Fwd:
    """A retained forward pass: outputs ``(B, C)`` and, per structured layer, its calls
    ``[(input, output)]`` (outputs still attached to the graph)."""

    out: torch.Tensor
    calls: list
    ys: list


def struct_forward(ctx: Ctx, x: Batch) -> Fwd:
    B = x.n
    params = ctx.params(ctx.struct_params())
    with torch.enable_grad(), ctx.capture(ctx.layers) as rec:
        out = ctx.forward(params, x)
    ys, calls = [], []
    for L, cl in zip(ctx.layers, rec):
        calls.append([(a, y) for a, _, y in cl])
        for a, _, y in cl:
            if a.shape[0] != B or y.shape[0] != B:
                raise RuntimeError(f"layer {L.name!r} received a non-batch-first input {tuple(a.shape)}")
            ys.append(y)
    return Fwd(out, calls, ys)


def layer_inputs(ctx: Ctx, fwd: Fwd) -> list:
    """Per structured layer, its inputs ``A (B, T, I)`` (linear, conv patches), token ids
    ``(B, T)`` (embedding), or ``{param: ∂y/∂q (B, T, D)}`` (elementwise); positions of all
    calls concatenated."""
    B = fwd.out.shape[0]
    res = []
    with torch.no_grad():
        for L, calls in zip(ctx.layers, fwd.calls):
            if L.kind == "elementwise":
                d = {}
                for attr, full in L.attrs:
                    Ds = [elementwise_deriv(L, ctx.base, attr, a).reshape(B, -1, math.prod(ctx.shapes[full]))
                          for a, _ in calls]
                    d[full] = Ds[0] if len(Ds) == 1 else torch.cat(Ds, 1)
                res.append(d)
                continue
            if L.kind == "linear":
                As = [a.reshape(B, -1, L.n_in) for a, _ in calls]
            elif L.kind == "conv":
                As = [unfold_patches(L, a) for a, _ in calls]
            else:
                As = [a.reshape(B, -1) for a, _ in calls]
            res.append(As[0] if len(As) == 1 else torch.cat(As, 1))
    return res


def struct_grads(ctx: Ctx, fwd: Fwd, side: Side, retain: bool = False) -> list[torch.Tensor]:
    """Per structured layer, the cotangents ``G (CL, B, T, O)`` at its outputs for the
    side's channels (class weights applied; zero at embedding padding tokens)."""
    B = fwd.out.shape[0]
    with torch.enable_grad():
        gs = _cotangents(ctx, fwd.out, fwd.ys, side, retain=retain)
    CL = side.width()
    res, k = [], 0
    for L, calls in zip(ctx.layers, fwd.calls):
        Gs = []
        for a, y in calls:
            g = gs[k]
            k += 1
            if g is None:
                g = torch.zeros((CL,) + tuple(y.shape), dtype=ctx.dtype, device=ctx.device)
            if L.kind == "conv":
                Gs.append(g.reshape(CL, B, L.n_out, -1).transpose(2, 3))
            else:
                Gs.append(g.reshape(CL, B, -1, L.n_out))
        G = Gs[0] if len(Gs) == 1 else torch.cat(Gs, 2)
        if L.kind == "embedding" and L.padding_idx is not None and calls:
            tok = torch.cat([a.reshape(B, -1) for a, _ in calls], 1)
            G = G * (tok != L.padding_idx).to(G.dtype)[None, :, :, None]
        res.append(G.detach())
    return res


def layer_factors(ctx: Ctx, x: Batch, side: Side) -> list[tuple[Layer, torch.Tensor, Any]]:
    """For each structured layer: ``G (CL, B, T, O)`` (cotangents, class weights applied)
    and its inputs (see :func:`layer_inputs`)."""
    if not ctx.layers:
        return []
    fwd = struct_forward(ctx, x)
    Gs = struct_grads(ctx, fwd, side)
    return list(zip(ctx.layers, Gs, layer_inputs(ctx, fwd)))


def per_example_jacobian(ctx: Ctx, names: list[str], x: Batch, side: Side) -> dict[str, torch.Tensor]:
    """``{name: (CL, B, P_i)}``: per-example Jacobians of the side's (weighted) channels
    w.r.t. the named parameters, via ``vmap(jacrev(functional_call))`` (possibly
    non-contiguous views); a per-example loop when vmap cannot batch the model."""
    if not names:
        return {}
    B = x.n
    C, w = ctx.C, ctx.w
    base = ctx.params()
    sub = {n: base[n] for n in names}
    cls = None if side.channels is None else torch.tensor(side.channels, device=ctx.device)
    CL = side.width()

    def rows(out):
        if cls is None:
            return ((out * w).sum(-1) / C)[..., None]
        return out[..., cls] * w[cls]

    if not ctx.has_rnn:
        def f_single(p, *leaves):
            out = ctx.forward({**base, **p}, x, [t.unsqueeze(0) for t in leaves]).reshape(-1)
            return rows(out)

        try:
            jac = vmap(jacrev(f_single), in_dims=(None,) + (0,) * len(x.leaves))(sub, *x.leaves)
            return {n: jac[n].reshape(B, CL, -1).transpose(0, 1) for n in names}   # views, no copy
        except (RuntimeError, NotImplementedError) as e:
            ctx.note_loop("per-example Jacobian", error_reason(e))
    # models that vmap cannot batch: one backward per example (batched over channels)
    res = {n: torch.empty(CL, B, math.prod(ctx.shapes[n]), dtype=ctx.dtype, device=ctx.device) for n in names}
    eye = torch.eye(CL, dtype=ctx.dtype, device=ctx.device)
    for i in range(B):
        with torch.enable_grad():
            p = {n: sub[n].detach().requires_grad_(True) for n in names}
            xi = x.slice(i, i + 1)
            r = rows(ctx.forward({**base, **p}, xi).reshape(-1))
            plist = [p[n] for n in names]
            try:
                gr = torch.autograd.grad(r, plist, eye, is_grads_batched=True, allow_unused=True)
                gr = [None if g is None else g.reshape(CL, -1) for g in gr]
            except (RuntimeError, NotImplementedError):
                per = [torch.autograd.grad(r[k], plist, retain_graph=True, allow_unused=True) for k in range(CL)]
                gr = [None if per[0][j] is None else torch.stack([q[j].reshape(-1) for q in per])
                      for j in range(len(names))]
            for n, g in zip(names, gr):
                res[n][:, i] = 0 if g is None else g
    return res


# ---------------------------------------------------------------------- factors
def keys(ctx: Ctx) -> list[str]:
    return list(ctx.groups) if ctx.by_layer else [ALL]


def key_of(ctx: Ctx, group: str) -> str:
    return group if ctx.by_layer else ALL


def flat_layout(J: torch.Tensor, side: Side) -> torch.Tensor:
    """``(CL, B, P)`` -> ``(kp·B, tr·P)``: kept channels (major) and examples in rows,
    traced channels and parameters in columns."""
    CL, B, P = J.shape
    kp, tr = (1, 1) if side.channels is None else (side.kp, side.tr)
    if tr == 1:
        return J.reshape(CL * B, P)
    return J.reshape(kp, tr, B, P).permute(0, 2, 1, 3).reshape(kp * B, tr * P)


def elementwise_jacobians(L: Layer, G: torch.Tensor, D: dict) -> dict[str, torch.Tensor]:
    """``{param: (CL, B, numel)}`` = ``Σ_t G_t ⊙ ∂y_t/∂q`` for an elementwise layer."""
    return {full: (G * D[full][None]).sum(2) for _, full in L.attrs}


def prepare_layer(L: Layer, G: torch.Tensor, A: Any, side: Side, prune: bool = True):
    """Turn one layer's ``G (CL, B, T, O)`` and inputs into a contraction term:

    * ``("flat", J)`` with per-example gradients ``J (CL, B, P)`` (bias-only layers,
      elementwise layers and the per-example form ``Σ_t g_t a_tᵀ``);
    * ``("pair", kind, Gl, Al, idx)`` with ``Gl`` ``(T', kp·B, tr·O)``, ``Al`` ``(T', B, I)`` /
      ``(T', B)`` and ``idx`` the kept positions (positions whose cotangents vanish for
      every example and channel are dropped).
    """
    CL, B, T, O = G.shape
    if L.kind == "elementwise":
        Js = list(elementwise_jacobians(L, G, A).values())
        return ("flat", Js[0] if len(Js) == 1 else torch.cat(Js, 2))
    if L.w_name is None:                                   # bias only
        return ("flat", G.sum(2))
    if L.kind in ("linear", "conv") and L.b_name is not None:
        A = torch.cat([A, torch.ones(A.shape[:-1] + (1,), dtype=A.dtype, device=A.device)], -1)
    idx = None
    if prune and T > 1 and L.form != "perex":
        keep = G.abs().amax(dim=(0, 1, 3)) > 0
        if not bool(keep.all()):
            idx = keep.nonzero().flatten()
            G, A = G[:, :, idx], A[:, idx]
            T = G.shape[2]
    if L.form == "perex":
        if L.kind == "embedding":
            J = torch.einsum("cbto,btv->cbvo", G, F.one_hot(A, L.n_in).to(G.dtype))
        else:
            J = torch.einsum("cbto,bti->cboi", G, A)
        return ("flat", J.reshape(CL, B, -1))
    kp, tr = (1, 1) if side.channels is None else (side.kp, side.tr)
    Gl = G.reshape(kp, tr, B, T, O).permute(3, 0, 2, 1, 4).reshape(T, kp * B, tr * O)
    Al = A.transpose(0, 1).contiguous()
    if idx is None:
        idx = torch.arange(T)
    return ("pair", "embedding" if L.kind == "embedding" else "linear", Gl, Al, idx.tolist())


def fallback_jacobian(ctx: Ctx, x: Batch, side: Side) -> dict[str, torch.Tensor]:
    """Per-example Jacobians of the fallback parameters, over input chunks: ``{name: (CL, N, P_i)}``."""
    if not ctx.fallback:
        return {}
    parts = [per_example_jacobian(ctx, ctx.fallback, x.slice(a, b), side) for a, b in ranges(x.n, ctx.chunk)]
    if len(parts) == 1:
        return parts[0]
    return {n: torch.cat([p[n] for p in parts], 1) for n in ctx.fallback}


@dataclass
class Fac:
    """Factors of one chunk for one output key.

    ``flat``: per-example gradient rows ``(kp·B, tr·P)``. ``pairs``: ``(kind, G, A)`` with
    ``G`` ``(T, kp·B, tr·O)`` and ``A`` ``(T, B, I)`` (linear inputs) or ``(T, B)`` (token
    ids). ``per_param``: jacobian method, ``[(C, B, P_i)]``. ``x``: ntk_vp method, the
    raw chunk.
    """

    flat: torch.Tensor | None = None
    pairs: list = field(default_factory=list)
    per_param: list = field(default_factory=list)
    x: Batch | None = None


def structured_factors(ctx: Ctx, x: Batch, side: Side) -> dict[str, Fac]:
    """Factors of ``x`` (processed in input chunks of ``ctx.chunk``) for every output key."""
    facs = {k: Fac() for k in keys(ctx)}
    flats: dict[str, list[torch.Tensor]] = {k: [] for k in facs}
    chunks = ranges(x.n, ctx.chunk)
    if ctx.layers:
        parts = []
        for a, b in chunks:
            lf = layer_factors(ctx, x.slice(a, b), side)
            # elementwise and perex layers collapse to small per-example Jacobians per chunk
            part = []
            for L, G, A in lf:
                if L.kind == "elementwise" or L.form == "perex" or L.w_name is None:
                    part.append(("flat", prepare_layer(L, G, A, side)[1]))
                else:
                    part.append(("raw", G, A))
            parts.append(part)
            del lf
        for li, L in enumerate(ctx.layers):
            key = key_of(ctx, L.group)
            if parts[0][li][0] == "flat":
                J = parts[0][li][1] if len(parts) == 1 else torch.cat([p[li][1] for p in parts], 1)
                flats[key].append(J)
                continue
            if len(parts) == 1:
                _, G, A = parts[0][li]
            else:
                G = torch.cat([p[li][1] for p in parts], 1)
                A = torch.cat([p[li][2] for p in parts], 0)
            term = prepare_layer(L, G, A, side)
            if term[0] == "flat":
                flats[key].append(term[1])
            else:
                facs[key].pairs.append(term[1:4])
        del parts
    for n, J in fallback_jacobian(ctx, x, side).items():
        flats[key_of(ctx, ctx.group_of[n])].append(J)
    for k, js in flats.items():
        if js:
            facs[k].flat = flat_layout(torch.cat(js, 2) if len(js) > 1 else js[0], side)
    return facs
