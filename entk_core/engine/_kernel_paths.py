"""How a kernel request is computed: walking the output and contracting each tile (a private
module of :mod:`entk_core.engine`).

:func:`run` fills the kernel(s) of a :class:`~._request.Ctx` in one of three layouts chosen
by the planner (see "How the output is walked" in :mod:`entk_core.engine.kernels`):

* ``"chunks"`` (:func:`_run_chunks`) -- input chunks, one tile per pair of chunks (upper
  triangle only when mirrored), for every diagonal channel group; the only layout of the
  ``"jacobian"`` and ``"ntk_vp"`` methods;
* ``"panels"`` (:func:`_run_panels`) -- kept channels: factors of all inputs, the output
  filled in channel-major row panels written in place;
* ``"stream"`` (:func:`_run_stream`) -- traced kernels: one forward of all inputs, then one
  backward per block of channels accumulating ``Σ_c G_c G_cᵀ``.

:func:`_contract` turns two sides' factors (:class:`~._factors.Fac`) into one tile;
:func:`_ntkvp_tile` computes a tile by NTK-vector products. :func:`_finish` symmetrises
the reference's result and divides by the traced channels.
"""
from __future__ import annotations

import math

import torch
from torch.func import vjp, vmap

from ._channels import Side
from ._factors import (Fac, fallback_jacobian, flat_layout, key_of, keys, layer_inputs, per_example_jacobian,
                       prepare_layer, struct_forward, struct_grads, structured_factors)
from ._inputs import Batch, ranges
from ._request import ALL, Ctx

__all__ = ["run"]


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


def run(ctx: Ctx) -> dict[str, torch.Tensor]:
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
