"""What each kernel path does, counted: kernels launched, matrix-product flops and bytes moved
(a private module of :mod:`entk_core.engine`; the planner's time model, see :mod:`.planner`).

:func:`path_work` walks a path as :mod:`._kernel_paths` runs it -- input chunks, the
forward and backward passes of the model (their counts from a
:class:`~._profile.ModelProfile`: measured on the model, or guessed from the parameters),
the factors of the structured layers, the contraction of every tile -- and adds up a
:class:`Work`. :meth:`~.machine.Rates.seconds` turns it into seconds with the machine's
measured rates (seconds per kernel, flop/s of a GEMM, bytes/s of memory-bound work), so a
path of many small kernels (``vmap`` over a tiny model, NTK-vector products) is charged
for its launches and a path of large products for its flops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ._profile import ModelProfile, Pass
from .costs import ChannelShape, Item

__all__ = ["BIG_ACTIVATIONS", "VMAP_OPS", "Work", "path_work"]

#: Cost of the kernels of a ``vmap``-batched pass relative to the plain pass (batching
#: rules add reshapes, expands and copies around operations; ``vmap(jacrev)`` of a tiny
#: MLP measured 2.7x the plain forward + backward per kernel).
VMAP_OPS = 2.7
#: The structured path's cotangent backward stops at the layer outputs (no weight
#: gradients): its share of a full backward's flops and bytes.
STRUCT_BWD = 0.6
#: Cost per byte of the reference's strided copies (einsum's permutation of ``(C, B, P)``
#: Jacobians), relative to streaming memory-bound work (measured on the paper's MLP: a
#: trace kernel at N = 100, 54 s of 87 in ``copy_``).
STRIDED = 8.0
#: Batch × activations above which a few channels are back-propagated one at a time
#: (mirrors :func:`~._factors._cotangents`).
BIG_ACTIVATIONS = 2e6


@dataclass
class Work:
    """Counts of a path: ``ops`` kernels, ``flops`` of matrix products, ``bytes`` moved."""

    ops: float = 0.0
    flops: float = 0.0
    bytes: float = 0.0

    def add(self, ops: float = 0.0, flops: float = 0.0, nbytes: float = 0.0, times: float = 1.0) -> None:
        self.ops += times * ops
        self.flops += times * flops
        self.bytes += times * nbytes

    def run(self, p: Pass, batch: float, times: float = 1.0, vmapped: bool = False, share: float = 1.0) -> None:
        """``times`` passes ``p`` over ``batch`` examples (``share`` of their flops and bytes)."""
        f, b = p.at(batch)
        self.add(p.ops * (VMAP_OPS if vmapped else 1.0), share * f, share * b, times)


def _struct_chunk(w: Work, items: list[Item], prof: ModelProfile, B: int, cw: int, act: float, s: int,
                  times: float, other_p: int) -> float:
    """One chunk of the structured path's factors (``times`` such chunks); returns the
    width of the per-example gradient rows (parameters contracted flat) per channel."""
    w.run(prof.fwd, B, times)                                      # forward with the layers captured
    struct = [it for it in items if it.kind != "other"]
    if struct:
        if cw == 1:
            w.run(prof.bwd, B, times, share=STRUCT_BWD)
        elif cw <= 32 and B * act >= BIG_ACTIVATIONS:                # one backward per channel
            w.run(prof.bwd, B, times * cw, share=STRUCT_BWD)
        else:                                                     # one batched backward
            w.run(prof.bwd, B * cw, times, vmapped=True, share=STRUCT_BWD)
    flat = 0.0
    for it in struct:
        T = it.positions
        if it.kind == "linear":
            w.add(3, 0, 2 * B * T * it.n_in * s, times)              # inputs (conv: unfolded patches)
        if it.kind in ("bias", "elementwise"):
            w.add(4, 0, 2 * (cw + 1) * B * T * it.n_out * s, times)
            flat += it.numel
        elif it.form == "perex":                                  # Σ_t g_t a_tᵀ per example and channel
            w.add(4, 2.0 * cw * B * T * it.n_out * it.n_in,
                  (cw * B * T * it.n_out + B * T * it.n_in + 2 * cw * B * it.n_out * it.n_in) * s, times)
            flat += it.n_out * it.n_in
        else:                                                     # kept (G, A) for pairwise products
            w.add(4, 0, 2 * (cw * B * T * it.n_out + B * T * it.n_in) * s, times)
    if other_p:                                                   # fallback: vmap(jacrev) of those parameters
        w.run(prof.fwd, B, times, vmapped=True)
        w.run(prof.bwd, B * cw, times, vmapped=True)
        w.add(2, 0, 2 * cw * B * other_p * s, times)
        flat += other_p
    return flat


def _pair_tile(w: Work, items: list[Item], B1: int, B2: int, ch: ChannelShape, s: int, times: float) -> None:
    """Pairwise terms of one tile: a loop over position pairs, three products each."""
    kk = ch.kp_left * ch.kp_right
    for it in items:
        if it.kind not in ("linear", "embedding") or it.form != "pair":
            continue
        tt = it.positions ** 2
        a = 2.0 * B1 * B2 * (it.n_in if it.kind == "linear" else 1)
        g = 2.0 * kk * ch.traced * B1 * B2 * it.n_out
        by = (ch.left * B1 + ch.right * B2) * it.n_out + 4 * kk * B1 * B2
        w.add(5, a + g, by * s, times * tt)


def path_work(method: str, items: list[Item], prof: ModelProfile, *, n1: int, n2: int, C: int, ch: ChannelShape,
              B: int, cache: bool, symmetric: bool, out_bytes: float, s: int, act: float,
              n_params: int) -> Work:
    """The :class:`Work` of ``method`` at chunk size ``B`` (see the module docstring).
    ``items``: the request as :func:`~.costs.request_items` gives it for ``method``;
    ``n_params``: parameter tensors (the reference contracts them one by one)."""
    w = Work()
    B1, B2 = min(B, n1), min(B, n2)
    nrow, ncol = math.ceil(n1 / B1), math.ceil(n2 / B2)
    ng = max(1, ch.groups)
    kk = ch.kp_left * ch.kp_right
    if ch.batch == "diag":
        tiles = nrow
    elif symmetric and method != "jacobian":
        tiles = nrow * (nrow + 1) / 2
    else:
        tiles = nrow * ncol
    tiles *= ng
    P = sum(it.numel for it in items)
    tile_bytes = kk * B1 * B2 * s
    if method == "ntk_vp":
        nb = ch.left * B1
        per = (P + (B1 + B2) * act) * s
        vb = max(1, min(nb, int(2e8 // max(per, 1.0))))
        w.run(prof.fwd, B1, tiles)                                # the vjp's forward
        calls = tiles * math.ceil(nb / vb)
        fw, bw = prof.fwd, prof.bwd
        # per vmap call: the weights read once; per basis vector: a vjp over B1 examples (its
        # parameter cotangent written), a jvp over B2 (primal and tangent; the cotangent read)
        w.add((bw.ops + 3 * fw.ops) * VMAP_OPS, bw.flops_fixed + 3 * fw.flops_fixed,
              bw.bytes_fixed + 3 * fw.bytes_fixed, calls)
        w.add(0, B1 * bw.flops + 3 * B2 * fw.flops, B1 * bw.bytes + 3 * B2 * fw.bytes + (3 * P + 2 * B2 * C) * s,
              tiles * nb)
        w.add(6, 0, 3 * nb * B2 * C * s, tiles)
        w.add(0, 0, 2 * out_bytes)
        return w
    if symmetric or ch.batch == "diag":
        n_fac = n1
    else:
        n_fac = n1 + n2 * (1 if cache else nrow)
    chunks = ng * n_fac / max(1, B)
    if method == "jacobian":
        # vmap(jacrev) of every parameter and every channel, then one einsum per parameter and tile
        w.run(prof.fwd, B, chunks, vmapped=True)
        w.run(prof.bwd, B * C, chunks, vmapped=True)
        w.add(2, 0, 2 * C * B * P * s, chunks)
        # per tile and side: the kept channels' rows gathered (index_select of a transposed
        # view), and for traced channels einsum's permuted copy of them (strided: measured
        # ~8x slower per byte than streaming work)
        side_bytes = 2 * ch.left * (B1 + B2) * P * s
        copies = 2 * side_bytes + (STRIDED * side_bytes if ch.traced > 1 else 0)
        w.add(6.0 * max(1, n_params), 2.0 * kk * ch.traced * B1 * B2 * P, copies + 2 * tile_bytes, tiles)
        w.add(4, 0, 3 * out_bytes)                                 # symmetrise, place
        return w
    cw = max(ch.left, ch.right)
    other_p = sum(it.numel for it in items if it.kind == "other")
    flat = _struct_chunk(w, items, prof, B, cw, act, s, chunks, other_p)
    if flat:
        w.add(3, 0, 2 * cw * B * flat * s, chunks)                # flat layout
        w.add(3, 2.0 * kk * ch.traced * B1 * B2 * flat,
              (ch.left * B1 + ch.right * B2) * flat * s + 2 * tile_bytes, tiles)
    _pair_tile(w, items, B1, B2, ch, s, tiles)
    w.add(2, 0, 2 * out_bytes)
    return w
