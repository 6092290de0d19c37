"""Empirical neural tangent kernels (eNTKs) of PyTorch models.

Conventions (shapes and axes)
-----------------------------
Inputs ``x1`` are a tensor, or a (nested) tuple / list / dict of tensors sharing the
leading batch axis ``N1`` (e.g. ``{"input_ids": ids, "attention_mask": mask}``); a tensor
is passed as ``model(x)``, a tuple or list positionally (``model(*x)``), a dict by keyword
(``model(**x)``); non-tensor leaves (``None``, bools, numbers, strings) are passed
unchanged. ``x2`` (``N2`` examples) has the same structure and per-example shapes.
Float inputs may be features, integer tensors token ids or masks.

The model maps inputs to an output of shape ``(N, *S)`` (a tensor, or the ``logits`` of a
``transformers`` output). Write ``f_s(x)`` for output channel ``s`` (a multi-index into
``S``; flattened row-major, ``C = prod(S)`` channels, ``c``). The eNTK is

    Θ[n, m, s, s'] = Σ_p  w_s ∂f_s(x1_n)/∂θ_p · w_s' ∂f_s'(x2_m)/∂θ_p

with ``w = class_weights`` (``(C,)`` over the flattened channels, default all ones) and
``p`` over the selected parameters.

**Output axes, neural-tangents semantics.** ``trace_axes`` and ``diagonal_axes`` are axes
of the output ``(N, *S)`` (axis 0 is the batch axis; negative axes count from the end),
exactly as in ``neural_tangents.empirical_ntk_fn``: a traced axis is summed over its
diagonal and divided by its size (averaged away); a diagonal axis is kept once (only
``i == i'``); every other axis appears twice, as ``(size in x1, size in x2)``, in the order
of the output's axes. For an output ``(N, T, C)``:

==============================  ==================  ==========================================
trace_axes, diagonal_axes       shape               entry
==============================  ==================  ==========================================
``(), ()``                      ``(N1, N2, T, T, C, C)``  ``Θ[n, m, (t, c), (t', c')]``
``(-1,), ()``                   ``(N1, N2, T, T)``  ``mean_c Θ[n, m, (t, c), (t', c)]``
``(-1,), (1,)``                 ``(N1, N2, T)``     ``mean_c Θ[n, m, (t, c), (t, c)]``
``(1, 2), ()``                  ``(N1, N2)``        ``mean_{t,c} Θ[n, m, (t, c), (t, c)]``
``(-1,), (0,)``                 ``(N, T, T)``       ``mean_c Θ[n, n, (t, c), (t', c)]`` (x2 = None)
==============================  ==================  ==========================================

**Reduction shorthands** (``reduction=``, when neither axes argument is given; the output is
seen as ``(N, C)``, an ``(N,)`` output as ``C = 1``, an ``(N, *S)`` output flattened):

=========  ======================  ====================================================
reduction  shape                   definition
=========  ======================  ====================================================
"full"     ``(N1, N2, C, C)``      ``Θ`` (= ``trace_axes=(), diagonal_axes=()`` for (N, C))
"trace"    ``(N1, N2)``            ``mean_c Θ[:, :, c, c]`` (= ``trace_axes=(-1,)``)
"mean"     ``(N1, N2)``            ``mean_{c,d} Θ[:, :, c, d]`` (= eNTK of ``Σ_c w_c f_c / C``)
"flat"     ``(C·N1, C·N2)``        class-major "full": row ``c·N1 + n``, column ``d·N2 + m``
"block"    ``(N1, N2)``            ``Θ[:, :, c, d]`` for ``block=(c, d)``
=========  ======================  ====================================================

Traced and diagonal contractions never build the all-pairs tensor.

Layer groups: :func:`param_group` maps ``net.0.weight -> net.0`` (the dotted path of the
owning module); a parameter of the root module keeps its name (``W``).
:func:`empirical_ntk_by_layer` returns ``{group: kernel}`` in parameter registration
order; the groups sum to :func:`empirical_ntk`.

Methods
-------
* ``"structured"`` -- per layer, the per-example Jacobian of channel ``c`` is
  ``Σ_t g_{c,t} a_tᵀ`` (``a_t``: the layer input at position ``t``, captured by a forward
  hook; ``g_{c,t}``: the cotangent of channel ``c`` at the layer output, from one batched
  backward per block of channels). Rules: ``nn.Linear`` and GPT-2's ``Conv1D`` weights and
  biases; ``nn.Conv1d``/``nn.Conv2d`` (``groups=1``, zero padding) as a Linear on unfolded
  patches, one position per output pixel; ``nn.Embedding`` (a Linear on one-hot inputs,
  ``a·a' = [tok == tok']``); and the gains and biases of ``nn.LayerNorm``, ``nn.RMSNorm``
  and ``*RMSNorm`` / ``*LayerNorm`` modules such as those of ``transformers`` (Llama's
  ``w · n(x)``, Gemma3's ``(1 + w) · n(x)``), whose Jacobian is diagonal: ``∂y/∂q`` is read
  by one forward-mode product and contracted per example. A layer is contracted
  pairwise (``Θ = Σ_{t,t'} (g_t·g'_{t'})(a_t·a'_{t'})``) or through per-example gradients,
  whichever costs fewer flops (:func:`entk_core.engine.planner.choose_form`). Every other
  parameter (raw ``nn.Parameter``\\ s, weights tied across modules, layers applied to
  non-batch-first tensors, grouped convolutions, recurrent layers...) falls back, per
  parameter, to the Jacobian path; the fallback is logged once (logger
  ``entk_core.engine``) and recorded in :class:`KernelInfo`. Before use, the rule of each
  layer is checked against autograd on a few examples (the gradient of a random
  combination of outputs), so a weight also used outside its module falls back too.
* ``"jacobian"`` -- the reference: ``vmap(jacrev(functional_call))`` per chunk, each
  parameter's Jacobian flattened to ``(N, C, P_i)`` and contracted by ``einsum``
  (the PyTorch NTK tutorial). Models ``vmap`` cannot batch (and models with an
  ``nn.RNNBase`` module) run one backward per example instead, recorded in ``loops``.
* ``"ntk_vp"`` -- NTK-vector products: for each output basis vector a ``vjp`` then a
  ``jvp`` (the torch.func tutorial's second method).
* ``"auto"`` -- the fastest path that fits the memory budget (:mod:`entk_core.engine.planner`).

How the output is walked (chosen by the planner for the structured path): input chunks
with one tile per pair of chunks ("chunks"; the only layout of the other methods),
channel-major row panels written in place ("panels", for kept channels when the factors
of all inputs fit), or one backward per block of channels accumulating ``Σ_c G_c G_cᵀ``
("stream", for traced kernels when the chunked factors do not fit). With ``x2=None`` the
structured and ntk_vp paths compute the upper triangle of tiles/panels and mirror it; the
reference ("jacobian") computes every tile, as the tutorial does, and symmetrises.

Semantics
---------
* Examples must not interact and the model must be deterministic: the computation runs
  on a private copy of the module structure in ``eval()`` mode (parameters shared, not
  copied); the caller's module is never modified, so it may be shared between threads.
  A caller's module in training mode with batch norm (batch statistics) or dropout gets
  a one-line :class:`TrainModeWarning`; ``allow_train_mode=False`` refuses instead. A
  module that cannot be deep-copied is used as it is only when already in eval mode.
* NaN or inf in a floating input leaf, a parameter or a buffer is a one-line
  ``ValueError`` naming where (``check_finite=False`` skips the check).
* Works inside ``torch.no_grad()`` and ``torch.inference_mode()``.
* ``device``: where the work runs (``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``; default
  ``$ENTK_DEVICE`` or the inputs' device); inputs and (a copy of) the model are moved
  there, the work is chunked by the planner on that device's free memory, and the kernel
  is returned there. TF32 matmuls are disabled during kernel work.
* ``progress(done, total, message)`` is called after every tile / panel / channel block;
  an exception raised by it stops the computation and propagates (cancellation).
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterable

import torch
from torch import nn
from torch.func import vjp, vmap

from . import planner
from ._ctx import (
    ALL,
    METHODS,
    Batch,
    Ctx,
    Fac,
    KernelInfo,
    Side,
    TrainModeWarning,
    autograd_on,
    eval_mode,
    flat_layout,
    key_of,
    keys,
    layer_groups,
    layer_inputs,
    no_tf32,
    param_group,
    per_example_jacobian,
    prepare_layer,
    ranges,
    struct_forward,
    struct_grads,
    structured_factors,
    fallback_jacobian,
)
from .planner import REDUCTIONS, MemoryBudgetError, Plan

__all__ = [
    "METHODS",
    "REDUCTIONS",
    "KernelInfo",
    "MemoryBudgetError",
    "Plan",
    "TrainModeWarning",
    "empirical_ntk",
    "empirical_ntk_by_layer",
    "estimate_ntk",
    "layer_groups",
    "param_group",
]


# ------------------------------------------------------------------ contraction
class _Buffers:
    """Reusable scratch buffers (fresh large allocations cost page faults on CPU)."""

    def __init__(self):
        self._b: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        n = math.prod(shape)
        b = self._b.get(name)
        if b is None or b.numel() < n or b.dtype != like.dtype or b.device != like.device:
            b = self._b[name] = torch.empty(n, dtype=like.dtype, device=like.device)
        return b[:n].view(shape)


def _kp(side: Side) -> int:
    return 1 if side.channels is None else side.kp


def _contract(ctx: Ctx, key: str, fl: Fac, fr: Fac, B1: int, B2: int, out: torch.Tensor | None = None,
              rows: slice | None = None, cols: slice | None = None) -> torch.Tensor:
    """One tile ``(kp_L·B1, kp_R·B2)`` (viewable as ``(kp_L, B1, kp_R, B2)``), summed over the
    traced channels (not yet divided by their number). ``out``: where to write the tile
    (else a buffer); ``rows``/``cols``: restrict to a slice of channel-major rows/columns
    (whole kept channels only; ``B1``/``B2`` stay the per-channel input counts)."""
    if ctx.method == "ntk_vp":
        return _ntkvp_tile(ctx, key, fl.x, fr.x)
    kpl, kpr = _kp(ctx.left), _kp(ctx.right)
    rows = rows or slice(None)
    cols = cols or slice(None)
    first = True
    tile = out
    bufs = ctx.buffers
    nr = (kpl * B1) if rows == slice(None) else rows.stop - rows.start
    nc = (kpr * B2) if cols == slice(None) else cols.stop - cols.start
    shape = (nr, nc)
    if tile is None:
        tile = bufs.get("tile", shape, ctx.w)

    def bview(o):
        return o.view(-1, B1, o.shape[1] // B2, B2)

    def add(M_fn, AA=None):
        # tile (+)= M ⊙ AA, AA (B1, B2) broadcast over kept channels
        nonlocal first
        if first:
            M_fn(tile)
            if AA is not None:
                bview(tile).mul_(AA[None, :, None, :])
            first = False
        else:
            tmp = bufs.get("scratch", shape, ctx.w)
            M_fn(tmp)
            if AA is None:
                tile.add_(tmp)
            else:
                bview(tile).addcmul_(bview(tmp), AA[None, :, None, :])

    if fl.flat is not None:
        add(lambda o: torch.mm(fl.flat[rows], fr.flat[cols].T, out=o))
    for (kind, GL, AL), (_, GR, AR) in zip(fl.pairs, fr.pairs):
        for t in range(GL.shape[0]):
            for u in range(GR.shape[0]):
                if kind == "linear":
                    AA = AL[t] @ AR[u].T
                else:
                    AA = (AL[t][:, None] == AR[u][None, :]).to(ctx.dtype)
                add(lambda o, t=t, u=u: torch.mm(GL[t][rows], GR[u][cols].T, out=o), AA)
    L, R = ctx.left, ctx.right
    for JL, JR in zip(fl.per_param, fr.per_param):       # jacobian method: (C, B, P_i) each
        if L.channels is None:
            M = torch.einsum("cnp,dmp->nm", JL, JR) / (ctx.C * ctx.C)
        else:
            idl = torch.tensor(L.channels, device=JL.device)
            idr = torch.tensor(R.channels, device=JR.device)
            jl = JL.index_select(0, idl).reshape(L.kp, L.tr, B1, -1)
            jr = JR.index_select(0, idr).reshape(R.kp, R.tr, B2, -1)
            M = torch.einsum("ktnp,ltmp->knlm", jl, jr).reshape(L.kp * B1, R.kp * B2)
        add(lambda o, M=M: o.copy_(M[rows, cols]))
    if first:
        tile.zero_()
    return tile


def _ntkvp_tile(ctx: Ctx, key: str, xl: Batch, xr: Batch) -> torch.Tensor:
    names = ctx.names if key == ALL else [n for n in ctx.names if ctx.group_of[n] == key]
    base = ctx.params()
    sub = {n: base[n] for n in names}
    C, w = ctx.C, ctx.w
    B1, B2 = xl.n, xr.n
    dev, dt = ctx.device, ctx.dtype

    def f(p, x):
        return ctx.forward({**base, **p}, x)

    _, vjp_fn = vjp(lambda p: f(p, xl), sub)
    L, R = ctx.left, ctx.right
    ar = torch.arange(B1, device=dev)
    if L.channels is None:
        basis = torch.zeros(B1, B1, C, dtype=dt, device=dev)
        basis[ar, ar, :] = w / C
    else:
        cls = torch.tensor(L.channels, device=dev)
        CL = len(L.channels)
        basis = torch.zeros(CL, B1, B1, C, dtype=dt, device=dev)
        kk = torch.arange(CL, device=dev)[:, None].expand(CL, B1)
        nn_ = ar[None, :].expand(CL, B1)
        basis[kk, nn_, nn_, cls[:, None].expand(CL, B1)] = w[cls][:, None].expand(CL, B1)
        basis = basis.reshape(CL * B1, B1, C)

    def slice_fn(v):
        (ct,) = vjp_fn(v)
        _, jv = torch.func.jvp(lambda p: f(p, xr), (sub,), (ct,))
        return jv

    P = sum(math.prod(ctx.shapes[n]) for n in names)
    per = (P + (B1 + B2) * ctx.act) * dt.itemsize
    vb = max(1, min(basis.shape[0], int(2e8 // max(per, 1))))
    res = None
    if not ctx.has_rnn:
        try:
            res = vmap(slice_fn, chunk_size=vb)(basis)       # (nb, B2, C)
        except (RuntimeError, NotImplementedError) as e:
            ctx.note_loop("NTK-vector products", f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}")
    else:
        ctx.note_loop("NTK-vector products", "the model contains a recurrent module: one product per basis vector")
    if res is None:
        res = torch.stack([slice_fn(v) for v in basis])
    if L.channels is None:
        return (res * (w / C)).sum(-1)                        # (B1, B2)
    clsR = torch.tensor(R.channels, device=dev)
    t = (res[..., clsR] * w[clsR]).reshape(L.kp, L.tr, B1, B2, R.kp, R.tr)
    t = t.diagonal(dim1=1, dim2=5).sum(-1)                    # (kpL, B1, B2, kpR)
    return t.permute(0, 1, 3, 2).reshape(L.kp * B1, R.kp * B2)


def _jacobian_factors(ctx: Ctx, x: Batch) -> dict[str, Fac]:
    # the reference computes every channel's (weighted) Jacobian rows, whatever the reduction
    facs = {k: Fac() for k in keys(ctx)}
    jac = per_example_jacobian(ctx, ctx.names, x, Side(tuple(range(ctx.C)), ctx.C, 1))
    for n in ctx.names:
        facs[key_of(ctx, ctx.group_of[n])].per_param.append(jac[n])
    return facs


def _factors(ctx: Ctx, x: Batch, side: Side) -> dict[str, Fac]:
    if ctx.method == "structured":
        return structured_factors(ctx, x, side)
    if ctx.method == "jacobian":
        return _jacobian_factors(ctx, x)
    return {k: Fac(x=x) for k in keys(ctx)}


# ------------------------------------------------------------------- placement
def _symmetrize_(M: torch.Tensor, panel: int = 2048) -> torch.Tensor:
    """Make a square matrix exactly symmetric in place: diagonal blocks averaged with
    their transpose, the strict lower triangle copied from the upper one."""
    n = M.shape[0]
    for r0 in range(0, n, panel):
        r1 = min(n, r0 + panel)
        D = M[r0:r1, r0:r1]
        D.copy_((D + D.T) * 0.5)
        if r1 < n:
            M[r1:, r0:r1] = M[r0:r1, r1:].T
    return M


def _swap(nk: int) -> list[int]:
    """Permutation of ``(*kp, n, *kp, m)`` dims swapping the two halves."""
    return list(range(nk + 1, 2 * nk + 2)) + list(range(nk + 1))


def _place(ctx: Ctx, V: torch.Tensor, tile: torch.Tensor, i0: int, i1: int, j0: int, j1: int,
           diagonal: bool) -> None:
    """Write one tile ``(kp·b1, kp·b2)`` into the group view ``V`` (mirrored when needed)."""
    b1, b2 = i1 - i0, j1 - j0
    kps = ctx.channels.kp_shape
    nk = len(kps)
    if diagonal:
        _symmetrize_(tile)                                   # exact
    t = tile.view(*kps, b1, *kps, b2)
    full = (slice(None),) * nk
    if ctx.channels.batch != "pair":                         # batch-diagonal: only K(x_n, x_n)
        V[(Ellipsis, slice(i0, i1))] = t.diagonal(dim1=nk, dim2=2 * nk + 1)
        return
    V[full + (slice(i0, i1),) + full + (slice(j0, j1),)] = t
    if ctx.mirror and not diagonal:
        V[full + (slice(j0, j1),) + full + (slice(i0, i1),)] = t.permute(_swap(nk))


def _run(ctx: Ctx) -> dict[str, torch.Tensor]:
    ctx.buffers = _Buffers()
    try:
        outs = {k: torch.empty(ctx.channels.work_shape(), dtype=ctx.dtype, device=ctx.device) for k in keys(ctx)}
        single = len(ctx.channels.groups) == 1 and ctx.channels.batch == "pair"
        if ctx.method == "structured" and ctx.layout == "stream" and single and ctx.left.kp == 1:
            _run_stream(ctx, outs)
        elif ctx.method == "structured" and ctx.layout == "panels" and single and len(ctx.channels.kp_shape) == 1:
            _run_panels(ctx, outs)
        else:
            _run_chunks(ctx, outs)
        return _finish(ctx, outs)
    finally:
        ctx.buffers = None


def _finish(ctx: Ctx, outs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    ch = ctx.channels
    with torch.no_grad():
        for k, out in list(outs.items()):
            if ctx.symmetrize_after:
                if not ch.axes and ch.reduction == "full":
                    _symmetrize_full_(out)
                elif not ch.axes or out.ndim == 2:
                    _symmetrize_(out)
                else:
                    nk = len(ch.kp_shape)
                    for d in range(len(ch.groups)):
                        V = ch.group_view(out, d)
                        V.copy_((V + V.permute(_swap(nk))) * 0.5)
            if ch.tr > 1:
                out.div_(ch.tr)
            if ch.batch == "trace":
                outs[k] = out.mean(0)
    return outs


def _symmetrize_full_(K: torch.Tensor, panel: int = 256) -> torch.Tensor:
    """In place, exactly: ``K[n, m, c, d] = K[m, n, d, c]`` for a ``(N, N, C, C)`` kernel."""
    n = K.shape[0]
    for r0 in range(0, n, panel):
        r1 = min(n, r0 + panel)
        D = K[r0:r1, r0:r1]
        D.copy_((D + D.permute(1, 0, 3, 2)) * 0.5)
        if r1 < n:
            K[r1:, r0:r1] = K[r0:r1, r1:].permute(1, 0, 3, 2)
    return K


def _run_chunks(ctx: Ctx, outs: dict[str, torch.Tensor]) -> None:
    """Input chunks; one tile per pair of chunks (upper triangle only when mirrored; only
    the diagonal tiles for a batch-diagonal kernel), for each diagonal channel group."""
    ch = ctx.channels
    ng = len(ch.groups)
    rows = ranges(ctx.N1, ctx.chunk)
    xr = ctx.x1 if ctx.x2 is None else ctx.x2
    cols = rows if ctx.x2 is None else ranges(ctx.N2, ctx.chunk)
    batch_diag = ch.batch != "pair"

    def js(i):
        if batch_diag:
            return [i]
        return range(i, len(cols)) if ctx.mirror else range(len(cols))

    total = ng * sum(len(js(i)) for i in range(len(rows)))
    done = 0
    cache: dict[tuple, dict[str, Fac]] = {}
    for d in range(ng):
        ctx.set_group(d)
        if ctx.symmetrize_after:
            ctx.mirror = False
        views = {k: ch.group_view(o, d) for k, o in outs.items()}
        # factors are shared between the sides when inputs and channels coincide (the
        # jacobian path always computes every channel's rows)
        ltag = ("x1", "J" if ctx.method == "jacobian" else ctx.left)
        rtag = ("x1" if ctx.x2 is None else "x2", "J" if ctx.method == "jacobian" else ctx.right)

        def get(tag, xs, rngs, idx, side, keep):
            kk = (tag, idx)
            if kk in cache:
                return cache[kk]
            a, b = rngs[idx]
            f = _factors(ctx, xs.slice(a, b), side)
            if keep:
                cache[kk] = f
            return f

        if ctx.method != "jacobian":
            cache.clear()
        for i, (i0, i1) in enumerate(rows):
            FL = get(ltag, ctx.x1, rows, i, ctx.left, keep=ctx.cache and ltag == rtag)
            for j in js(i):
                j0, j1 = cols[j]
                FR = FL if (ltag == rtag and i == j) else get(rtag, xr, cols, j, ctx.right, keep=ctx.cache)
                with torch.no_grad():
                    for k in outs:
                        tile = _contract(ctx, k, FL[k], FR[k], i1 - i0, j1 - j0)
                        _place(ctx, views[k], tile, i0, i1, j0, j1, diagonal=(ctx.mirror or batch_diag) and i == j)
                        del tile
                done += 1
                if ctx.progress is not None:
                    ctx.progress(done, total, f"eNTK tile {done}/{total} ({ctx.method})")
            if ctx.mirror or batch_diag:
                cache.pop((ltag, i), None)       # later rows only use chunks j > i


def _run_panels(ctx: Ctx, outs: dict[str, torch.Tensor]) -> None:
    """Kept channels: factors of all inputs, output filled in channel-major row panels.

    A panel is the rows of kept channels ``[c0, c1)`` (``(c1-c0)·N1`` rows) against the
    columns of channels ``[c0, kp)`` when mirrored (else all columns); "flat" panels are
    written in place into the output, the diagonal channel block is symmetrised and the
    lower triangle mirrored."""
    ch = ctx.channels
    K, N1, N2 = ctx.left.kp, ctx.N1, ctx.N2
    FL = structured_factors(ctx, ctx.x1, ctx.left)
    FR = FL if ctx.mirror else structured_factors(ctx, ctx.x2 if ctx.x2 is not None else ctx.x1, ctx.right)
    cb = max(1, min(K, ctx.plan.class_block if ctx.plan is not None and ctx.plan.class_block else K))
    blocks = [(c0, min(K, c0 + cb)) for c0 in range(0, K, cb)]
    total = len(blocks) * len(outs)
    flat = not ch.axes and ch.reduction == "flat"
    done = 0
    with torch.no_grad():
        for k, out in outs.items():
            V = ch.group_view(out, 0)                            # (K, N1, K, N2)
            for c0, c1 in blocks:
                d0 = c0 if ctx.mirror else 0
                rows, cols = slice(c0 * N1, c1 * N1), slice(d0 * N2, K * N2)
                if flat:
                    _contract(ctx, k, FL[k], FR[k], N1, N2, out=out[rows, cols], rows=rows, cols=cols)
                else:
                    tile = _contract(ctx, k, FL[k], FR[k], N1, N2, rows=rows, cols=cols)
                    V[c0:c1, :, d0:, :] = tile.view(c1 - c0, N1, K - d0, N2)
                if ctx.mirror:
                    if flat:
                        _symmetrize_(out[rows, rows])
                        if c1 < K:
                            out[c1 * N1:, rows] = out[rows, c1 * N1:].T
                    else:
                        D = V[c0:c1, :, c0:c1, :]
                        D.copy_((D + D.permute(2, 3, 0, 1)) * 0.5)
                        if c1 < K:
                            V[c1:, :, c0:c1, :] = V[c0:c1, :, c1:, :].permute(2, 3, 0, 1)
                done += 1
                if ctx.progress is not None:
                    ctx.progress(done, total, f"eNTK panel {done}/{total} (structured)")


def _run_stream(ctx: Ctx, outs: dict[str, torch.Tensor]) -> None:
    """Traced kernels with one kept channel: one forward of all inputs (graph kept), then
    one backward per block of channels, accumulating ``Σ_c G_c G_cᵀ`` per layer and position
    pair; the per-channel factors of all channels are never held at once."""
    chans = ctx.left.channels
    x2 = ctx.x2
    fL = struct_forward(ctx, ctx.x1) if ctx.layers else None
    fR = fL if (x2 is None or fL is None) else struct_forward(ctx, x2)
    AL = layer_inputs(ctx, fL) if fL is not None else []
    AR = AL if x2 is None else (layer_inputs(ctx, fR) if fR is not None else [])
    flat_acc: dict[str, torch.Tensor | None] = {k: None for k in outs}
    pair_acc: list[dict[tuple[int, int], torch.Tensor]] = [dict() for _ in ctx.layers]
    pair_A: list = [None] * len(ctx.layers)
    nC = len(chans)
    cb = max(1, min(nC, ctx.plan.class_block if ctx.plan is not None and ctx.plan.class_block else nC))
    blocks = [tuple(chans[c0:c0 + cb]) for c0 in range(0, nC, cb)]
    xr = ctx.x1 if x2 is None else x2

    def acc_flat(k, M, Mr):
        with torch.no_grad():
            if flat_acc[k] is None:
                flat_acc[k] = M @ Mr.T
            else:
                flat_acc[k].addmm_(M, Mr.T)

    def ones_col(A):
        return torch.cat([A, torch.ones(A.shape[:-1] + (1,), dtype=ctx.dtype, device=ctx.device)], -1)

    for bi, cls in enumerate(blocks):
        side = Side(cls, 1, len(cls))
        last = bi == len(blocks) - 1
        if ctx.layers:
            GL = struct_grads(ctx, fL, side, retain=not last or fR is not fL)
            GR = GL if fR is fL else struct_grads(ctx, fR, side, retain=not last)
            flats: dict[str, list] = {k: [] for k in outs}
            flatsR: dict[str, list] = {k: [] for k in outs}
            for li, L in enumerate(ctx.layers):
                key = key_of(ctx, L.group)
                tl = prepare_layer(L, GL[li], AL[li], side)
                tr = tl if GR is GL else prepare_layer(L, GR[li], AR[li], side)
                if tl[0] == "flat":
                    flats[key].append(tl[1])
                    flatsR[key].append(tr[1])
                    continue
                _, kind, Gl, Al, il = tl
                _, _, Gr, Ar, ir = tr
                with torch.no_grad():
                    for t, to in enumerate(il):
                        for u, uo in enumerate(ir):
                            S = pair_acc[li].get((to, uo))
                            if S is None:
                                pair_acc[li][(to, uo)] = Gl[t] @ Gr[u].T
                            else:
                                S.addmm_(Gl[t], Gr[u].T)
                if pair_A[li] is None:
                    lin = kind == "linear" and L.b_name is not None
                    A1 = ones_col(AL[li]) if lin else AL[li]
                    A2 = A1 if AR is AL else (ones_col(AR[li]) if lin else AR[li])
                    pair_A[li] = (kind, A1, A2)
            del GL, GR
            for k in outs:
                if flats[k]:
                    JL = torch.cat(flats[k], 2) if len(flats[k]) > 1 else flats[k][0]
                    same = all(a is b for a, b in zip(flats[k], flatsR[k]))
                    JR = JL if same else (torch.cat(flatsR[k], 2) if len(flatsR[k]) > 1 else flatsR[k][0])
                    M = flat_layout(JL, side)
                    acc_flat(k, M, M if JR is JL else flat_layout(JR, side))
        if ctx.fallback:
            jl = fallback_jacobian(ctx, ctx.x1, side)
            jr = jl if x2 is None else fallback_jacobian(ctx, xr, side)
            for k in outs:
                names = [n for n in ctx.fallback if key_of(ctx, ctx.group_of[n]) == k]
                if names:
                    JL = torch.cat([jl[n] for n in names], 2)
                    JR = JL if jr is jl else torch.cat([jr[n] for n in names], 2)
                    M = flat_layout(JL, side)
                    acc_flat(k, M, M if JR is JL else flat_layout(JR, side))
        if ctx.progress is not None:
            ctx.progress(bi + 1, len(blocks), f"eNTK channels {bi * cb + 1}-{min(nC, (bi + 1) * cb)} of {nC} (structured)")
    del fL, fR
    with torch.no_grad():
        for k in outs:
            K = flat_acc[k]
            for li, L in enumerate(ctx.layers):
                if key_of(ctx, L.group) != k or not pair_acc[li]:
                    continue
                kind, A1, A2 = pair_A[li]
                for (t, u), S in pair_acc[li].items():
                    if kind == "linear":
                        AA = A1[:, t] @ A2[:, u].T
                    else:
                        AA = (A1[:, t][:, None] == A2[:, u][None, :]).to(ctx.dtype)
                    S.mul_(AA)
                    K = S if K is None else K.add_(S)
            if K is None:
                K = torch.zeros(ctx.N1, ctx.N2, dtype=ctx.dtype, device=ctx.device)
            if ctx.mirror:
                _symmetrize_(K)
            outs[k].copy_(K)


def _compute(model, x1, x2, by_layer: bool, return_info: bool, **kw):
    t0 = time.perf_counter()
    with no_tf32(), autograd_on():
        ctx = Ctx(model, x1, x2, by_layer=by_layer, warn_stacklevel=4, **kw)
        with eval_mode(ctx.model):
            outs = _run(ctx)
    ctx.info.seconds = time.perf_counter() - t0
    return outs, ctx.info


_DOC_ARGS = """
    Args:
      model: maps inputs to an ``(N, *S)`` output (see the module docstring).
      x1: inputs with ``N1`` examples: a tensor, or a tuple / list / dict of tensors.
      x2: inputs with ``N2`` examples, same structure; ``None`` means ``x1`` (the result is
        then exactly symmetric).
      reduction: a shorthand for an ``(N, C)`` output: ``"full"`` (default) ``(N1, N2, C, C)``;
        ``"trace"`` ``(N1, N2)``; ``"mean"`` ``(N1, N2)``; ``"flat"`` ``(C·N1, C·N2)``
        class-major; ``"block"`` ``(N1, N2)``.
      trace_axes, diagonal_axes: neural-tangents' output axes (instead of ``reduction``).
      class_weights: ``(C,)`` over the flattened channels; Jacobian rows of channel ``c``
        are multiplied by ``w_c``.
      block: ``(c, d)`` for ``reduction="block"``.
      groups: layer groups to include (see :func:`layer_groups`); ``None`` = all parameters.
      method: ``"auto"``, ``"structured"``, ``"jacobian"`` (reference) or ``"ntk_vp"``.
      chunk_size: inputs per chunk (default: chosen by the planner).
      dtype: compute dtype; the model is deep-copied and cast when it differs, floating
        inputs are cast, integer inputs stay integer. Default: the model's dtype.
      device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` or a ``torch.device``; default
        ``$ENTK_DEVICE`` or the inputs' device.
      memory_budget: bytes or ``"4GB"``-style (default ``$ENTK_MEMORY_BUDGET`` or 50% of
        the device's available memory); :class:`MemoryBudgetError` when nothing fits.
      progress: ``progress(done, total, message)`` after each tile / panel / channel
        block; raising in it cancels the computation.
      allow_train_mode: ``False`` refuses a model in training mode with batch norm or
        dropout (default: a :class:`TrainModeWarning`, then eval mode).
      check_finite: check inputs, parameters and buffers for NaN / inf first.
      return_info: also return a :class:`KernelInfo` (which path ran, fallbacks, loops).
"""


def _check_args(reduction, trace_axes, diagonal_axes):
    if reduction is not None and (trace_axes is not None or diagonal_axes is not None):
        raise ValueError("pass either reduction= or trace_axes=/diagonal_axes=, not both")


# ------------------------------------------------------------------------ public
def empirical_ntk(
    model: nn.Module,
    x1: Any,
    x2: Any = None,
    *,
    reduction: str | None = None,
    trace_axes: int | Iterable[int] | None = None,
    diagonal_axes: int | Iterable[int] | None = None,
    class_weights: torch.Tensor | Iterable[float] | None = None,
    block: tuple[int, int] | None = None,
    groups: Iterable[str] | str | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: Any = None,
    memory_budget: int | float | str | None = None,
    progress=None,
    allow_train_mode: bool = True,
    check_finite: bool = True,
    return_info: bool = False,
):
    """The empirical NTK of ``model`` between ``x1`` and ``x2``.
    {args}
    Returns:
      the kernel in ``dtype`` on the compute device, shaped as in the module docstring;
      ``(kernel, info)`` with ``return_info=True``.
    """
    _check_args(reduction, trace_axes, diagonal_axes)
    outs, info = _compute(model, x1, x2, False, return_info, reduction=reduction, trace_axes=trace_axes,
                          diagonal_axes=diagonal_axes, class_weights=class_weights, block=block, groups=groups,
                          method=method, chunk_size=chunk_size, dtype=dtype, device=device,
                          memory_budget=memory_budget, progress=progress, allow_train_mode=allow_train_mode,
                          check_finite=check_finite)
    return (outs[ALL], info) if return_info else outs[ALL]


def empirical_ntk_by_layer(
    model: nn.Module,
    x1: Any,
    x2: Any = None,
    *,
    reduction: str | None = None,
    trace_axes: int | Iterable[int] | None = None,
    diagonal_axes: int | Iterable[int] | None = None,
    class_weights: torch.Tensor | Iterable[float] | None = None,
    block: tuple[int, int] | None = None,
    groups: Iterable[str] | str | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: Any = None,
    memory_budget: int | float | str | None = None,
    progress=None,
    allow_train_mode: bool = True,
    check_finite: bool = True,
    return_info: bool = False,
):
    """Layerwise eNTKs: ``{{group: kernel}}`` in registration order, each shaped as in
    :func:`empirical_ntk` with the same arguments; the kernels sum to the full kernel.
    The memory budget covers all the returned kernels together.
    {args}"""
    _check_args(reduction, trace_axes, diagonal_axes)
    outs, info = _compute(model, x1, x2, True, return_info, reduction=reduction, trace_axes=trace_axes,
                          diagonal_axes=diagonal_axes, class_weights=class_weights, block=block, groups=groups,
                          method=method, chunk_size=chunk_size, dtype=dtype, device=device,
                          memory_budget=memory_budget, progress=progress, allow_train_mode=allow_train_mode,
                          check_finite=check_finite)
    return (outs, info) if return_info else outs


def estimate_ntk(
    model: nn.Module,
    x1: Any,
    x2: Any = None,
    *,
    reduction: str | None = None,
    trace_axes: int | Iterable[int] | None = None,
    diagonal_axes: int | Iterable[int] | None = None,
    class_weights: Any = None,
    block: tuple[int, int] | None = None,
    groups: Iterable[str] | str | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: Any = None,
    memory_budget: int | float | str | None = None,
    by_layer: bool = False,
) -> Plan:
    """The :class:`~entk_core.engine.planner.Plan` of ``empirical_ntk(model, x1, x2, ...)``
    (``by_layer=True``: of :func:`empirical_ntk_by_layer`) with the same arguments, without
    computing the kernel: ``plan.seconds``, ``plan.bytes``, ``plan.method`` (the path that
    would run), ``plan.summary()``. Runs the model on at most 4 inputs to learn the output
    shape, the layer structure and the activation size. Never raises for budget reasons
    (see ``plan.fits``)."""
    _check_args(reduction, trace_axes, diagonal_axes)
    with no_tf32(), autograd_on():
        ctx = Ctx(model, x1, x2, reduction=reduction, trace_axes=trace_axes, diagonal_axes=diagonal_axes,
                  class_weights=class_weights, block=block, groups=groups, method=method, chunk_size=chunk_size,
                  dtype=dtype, device=device, by_layer=by_layer, plan=False, warn_stacklevel=3)
    return planner.estimate(ctx.N1, None if ctx.x2 is None else ctx.N2, ctx.C, ctx.group_specs(),
                            ctx.reduction or "full", ctx.dtype, by_layer=by_layer, symmetric=ctx.x2 is None,
                            method=method, chunk_size=chunk_size, memory_budget=memory_budget, device=ctx.device,
                            activation_per_example=ctx.act, channels=ctx.ch_shape,
                            out_elems=int(math.prod(ctx.channels.out_shape())))


empirical_ntk.__doc__ = empirical_ntk.__doc__.format(args=_DOC_ARGS)
empirical_ntk_by_layer.__doc__ = empirical_ntk_by_layer.__doc__.format(args=_DOC_ARGS)
