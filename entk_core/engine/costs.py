"""The planner's cost model: what a kernel request is, and what each path costs.

:func:`entk_core.engine.planner.estimate` describes a request by its parameters
(:class:`ParamSpec`) and its channel contraction (:class:`ChannelShape`), and asks this
module for the peak bytes and the flops of each path at a chunk size
(:func:`path_cost`) and for how the structured path walks the output
(:func:`walk_layout`). :func:`choose_form` picks how a structured layer is contracted.

Request description
-------------------
``groups`` maps a layer-group name to its parameters, each a :class:`ParamSpec`
(or a tuple ``(name, shape, kind[, positions])``). ``kind`` is one of :data:`KINDS`:

* ``"linear_weight"`` -- a weight acting as ``y = W a`` on ``a`` of width ``prod(shape[1:])``
  (``nn.Linear``; ``nn.Conv1d``/``nn.Conv2d`` on unfolded patches; GPT-2's ``Conv1D``);
* ``"linear_bias"`` -- its bias, shape ``(out,)``;
* ``"embedding"`` -- an ``nn.Embedding`` weight of shape ``(vocab, dim)``;
* ``"elementwise"`` -- a gain or bias acting elementwise (LayerNorm, RMSNorm);
* ``"other"`` -- anything without a structured rule (per-parameter Jacobian).

``positions`` is the number of positions (sequence positions, convolution output
positions, times calls) per example at which the owning layer is applied.

Output channels
---------------
A model output ``(N, *S)`` is seen as ``C = prod(S)`` channels. A request contracts them as
described by a :class:`ChannelShape`: ``groups`` independent diagonal groups, each
producing a ``(kp_left·N1, kp_right·N2)`` block whose entries sum over ``traced``
channels. ``"full"``/``"flat"`` are ``kp = C, traced = 1``; ``"trace"`` is ``kp = 1,
traced = C``; ``"mean"`` and ``"block"`` are ``kp = traced = 1``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

__all__ = [
    "ChannelShape",
    "Item",
    "KINDS",
    "ParamSpec",
    "TILE_CAP_BYTES",
    "as_spec",
    "choose_form",
    "path_cost",
    "request_items",
    "shorthand_channels",
    "walk_layout",
]

KINDS = ("linear_weight", "linear_bias", "embedding", "elementwise", "other")
#: Cap on one kernel tile (so temporaries stay modest and work stays granular).
TILE_CAP_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a request: ``name``, ``shape``, ``kind`` (see module doc) and the
    number of ``positions`` per example at which its layer is applied."""

    name: str
    shape: tuple[int, ...]
    kind: str = "other"
    positions: int = 1

    @property
    def numel(self) -> int:
        return int(math.prod(self.shape))


@dataclass(frozen=True)
class ChannelShape:
    """How output channels are contracted (see the module docstring). ``batch``:
    ``"pair"`` (every pair of examples) or ``"diag"`` (only ``K(x_n, x_n)``)."""

    kp_left: int
    kp_right: int
    traced: int = 1
    groups: int = 1
    batch: str = "pair"

    @property
    def left(self) -> int:
        return self.kp_left * self.traced

    @property
    def right(self) -> int:
        return self.kp_right * self.traced


def shorthand_channels(reduction: str, C: int) -> ChannelShape:
    """The :class:`ChannelShape` of a ``reduction`` shorthand for ``C`` channels."""
    if reduction == "trace":
        return ChannelShape(1, 1, C)
    if reduction in ("mean", "block"):
        return ChannelShape(1, 1, 1)
    return ChannelShape(C, C, 1)


def as_spec(p: ParamSpec | Sequence) -> ParamSpec:
    if isinstance(p, ParamSpec):
        s = p
    else:
        s = ParamSpec(str(p[0]), tuple(int(d) for d in p[1]), *(p[2:]))
    if s.kind not in KINDS:
        raise ValueError(f"unknown parameter kind {s.kind!r} for {s.name}; expected one of {KINDS}")
    return s


def choose_form(kind: str, n_in: int, n_out: int, positions: int, kp_left: int, kp_right: int,
                traced: int = 1) -> str:
    """Pick how a structured layer is contracted: ``"pair"`` (pairwise over positions,
    ``Σ_{t,t'} (G_t G'_{t'}ᵀ) ⊙ (A_t A'_{t'}ᵀ)``) or ``"perex"`` (per-example gradients
    ``Σ_t g_t a_tᵀ`` flattened, then one product), by flops per pair of examples.

    ``kind`` is ``"linear"``, ``"embedding"`` or ``"elementwise"`` (always ``"perex"``);
    ``n_in`` the input width (vocabulary size for an embedding, +1 when a bias is merged
    in); ``kp_left``/``kp_right`` the kept channels on each side and ``traced`` the
    channels summed over (see :class:`ChannelShape`).
    """
    if kind == "elementwise":
        return "perex"
    T = max(1, int(positions))
    a_cost = 1 if kind == "embedding" else 2 * n_in
    kk = kp_left * kp_right
    pair = T * T * (2 * kk * traced * n_out + a_cost + kk)
    perex = 2 * kk * traced * n_out * n_in
    return "perex" if perex < pair else "pair"


@dataclass
class Item:
    """One costed unit of a request: a structured layer (its weight with the bias merged),
    a lone bias, an elementwise parameter or a parameter without a rule (``"other"``)."""

    kind: str  # linear | embedding | elementwise | bias | other
    group: str
    numel: int
    n_in: int = 0
    n_out: int = 0
    positions: int = 1
    form: str = "flat"


def request_items(groups: Mapping[str, Iterable], method: str, ch: ChannelShape) -> list[Item]:
    """The request's parameters as the :class:`Item` objects the path ``method`` contracts (every
    parameter is ``"other"`` outside the structured path)."""
    items: list[Item] = []
    for g, params in groups.items():
        specs = [as_spec(p) for p in params]
        if method != "structured":
            items += [Item("other", g, s.numel) for s in specs]
            continue
        kinds = {s.kind for s in specs}
        for s in specs:
            if s.kind == "linear_weight":
                n_out, n_in = s.shape[0], int(math.prod(s.shape[1:]))
                merged = "linear_bias" in kinds
                it = Item("linear", g, s.numel + (n_out if merged else 0), n_in + (1 if merged else 0), n_out, s.positions)
                it.form = choose_form("linear", it.n_in, n_out, s.positions, ch.kp_left, ch.kp_right, ch.traced)
                items.append(it)
            elif s.kind == "linear_bias":
                if "linear_weight" not in kinds:
                    items.append(Item("bias", g, s.numel, 1, s.numel, s.positions, "flat"))
            elif s.kind == "embedding":
                it = Item("embedding", g, s.numel, s.shape[0], s.shape[1], s.positions)
                it.form = choose_form("embedding", s.shape[0], s.shape[1], s.positions, ch.kp_left, ch.kp_right,
                                      ch.traced)
                items.append(it)
            elif s.kind == "elementwise":
                items.append(Item("elementwise", g, s.numel, 1, s.numel, s.positions, "perex"))
            else:
                items.append(Item("other", g, s.numel))
    return items


def path_cost(method: str, items: list[Item], *, n1: int, n2: int, C: int, ch: ChannelShape,
              B: int, cache: bool, symmetric: bool, out_bytes: int, s: int, act: float, fp: float,
              _detail: dict | None = None) -> tuple[float, float, float]:
    """(peak bytes, autograd flops, contraction flops) of one path at chunk size ``B``."""
    B1, B2 = min(B, n1), min(B, n2)
    nrow = math.ceil(n1 / B1)
    kk = ch.kp_left * ch.kp_right
    ng = max(1, ch.groups)
    # example pairs actually contracted (the reference computes every tile, then symmetrises)
    if ch.batch == "diag":
        pairs = n1 * B1
    elif symmetric and method != "jacobian":
        pairs = n1 * (n1 + B1) / 2
    else:
        pairs = n1 * n2
    tile = kk * B1 * B2 * s
    cw = C if method == "jacobian" else max(ch.left, ch.right)   # the reference takes every channel's rows
    if method == "ntk_vp":
        P = sum(it.numel for it in items)
        per_basis = (P + (B1 + B2) * act) * s
        nb = ch.left * B1
        vb = max(1, min(nb, int(max(1.0, 1e9 / per_basis))))
        peak = out_bytes + 3 * tile + vb * per_basis + nb * B1 * C * s + nb * B2 * C * s
        if ch.batch == "diag":
            n_pairs = nrow
        else:
            n_pairs = (nrow * (nrow + 1) / 2) if symmetric else nrow * math.ceil(n2 / B2)
        fb = ng * n_pairs * nb * 3 * fp * (B1 + B2)
        return peak, fb, 0.0
    store = work = 0.0   # elements per example
    contract = 0.0       # flops per example pair
    fac = fp * (1 + 2 * cw)   # one forward, one backward per channel
    any_other = False
    kt = kk * ch.traced
    for it in items:
        if it.kind == "other" or method == "jacobian":
            any_other = True
            store += cw * it.numel
            work += cw * it.numel
            contract += 2 * kt * it.numel
        elif it.kind == "bias":
            store += cw * it.n_out
            contract += 2 * kt * it.n_out
        elif it.kind == "elementwise":
            store += cw * it.numel
            work += (cw + 1) * it.positions * it.numel
            contract += 2 * kt * it.numel
        elif it.form == "perex":
            store += cw * it.n_out * it.n_in
            work += cw * it.positions * it.n_out + it.positions * it.n_in
            contract += 2 * kt * it.n_out * it.n_in
        else:
            T = it.positions
            store += cw * T * it.n_out + T * (1 if it.kind == "embedding" else it.n_in)
            work += cw * T * it.n_out
            a_cost = 1 if it.kind == "embedding" else 2 * it.n_in
            contract += T * T * (2 * kt * it.n_out + a_cost + kk)
    if any_other:
        work += cw * act   # vmap(jacrev) keeps one set of activations per channel
        if method == "structured":
            fac += fp * (1 + 2 * cw)
    # per-example gradient GEMMs of perex layers (Σ_t g_t a_tᵀ), on the autograd side
    for it in items:
        if method == "structured" and it.kind == "linear" and it.form == "perex":
            fac += 2 * cw * it.positions * it.n_out * it.n_in
    fwd = B * act * (1 + cw) * s
    peak = out_bytes + 3 * tile + 2 * B * store * s + B * work * s + fwd
    if cache:
        peak += n2 * store * s
    if symmetric or ch.batch == "diag":
        n_fac = n1
    else:
        n_fac = n1 + n2 * (1 if cache else nrow)
    if _detail is not None:
        _detail.update(store=store, work=work)
    return peak, ng * n_fac * fac, ng * pairs * contract


def walk_layout(items: list[Item], *, n1: int, n2: int, C: int, ch: ChannelShape, B: int, symmetric: bool,
                out_bytes: int, s: int, act: float, budget: int, store: float, work: float, fits: bool,
                forced_chunk: bool) -> tuple[str, int, int]:
    """How the structured path walks the kernel: ``(layout, peak bytes, channel block)``.

    * ``"chunks"``: input chunks, one tile per pair of chunks, upper triangle only when
      symmetric (the general case).
    * ``"panels"`` (several kept channels, when the factors of all inputs fit): the output
      is filled in contiguous channel-major row panels written in place (upper triangle
      only when symmetric), so no tile is copied.
    * ``"stream"`` (traced kernels with one kept channel that do not fit in chunks):
      forward all inputs once, then backward one block of channels at a time and
      accumulate ``Σ_c G_c G_cᵀ``; the per-channel factors are never all held. Needs the
      activations of all inputs.
    """
    if forced_chunk or ch.batch != "pair" or ch.groups != 1:
        return "chunks", 0, 0
    n_sides = 1 if symmetric else 2
    if ch.kp_left == 1 and ch.kp_right == 1 and ch.traced > 1 and not fits:
        per_class = (n1 + n2) * (act + store / max(1, ch.left))
        kb = max(1, min(C, int((64 * 2**20 / s) // max(1.0, per_class))))
        acc = sum(it.positions ** 2 for it in items if it.kind in ("linear", "embedding") and it.form == "pair")
        acc = (acc + 1) * n1 * n2 * s
        peak = out_bytes + (n1 + (n2 if not symmetric else 0)) * act * s + kb * per_class * s * 2 + acc
        if peak <= budget:
            return "stream", int(peak), kb
    elif ch.kp_left > 1 and fits:
        K = ch.kp_left
        rows = max(1, int(TILE_CAP_BYTES // max(1, n1 * ch.kp_right * n2 * s)))   # kept channels per panel
        panel = min(K, rows) * n1 * ch.kp_right * n2 * s
        peak = out_bytes + n_sides * max(n1, n2) * store * s + B * work * s + B * act * (1 + ch.left) * s + 2 * panel
        if peak <= budget:
            return "panels", int(peak), min(K, rows)
    return "chunks", 0, 0
