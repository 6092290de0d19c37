"""Spot checks of computed eNTKs: ``check=k``.

``empirical_ntk(..., check=k)``, ``empirical_ntk_by_layer(..., check=k)`` and
``top_eigenpairs(model, ..., check=k)`` recompute ``k`` entries of the kernel they formed (or
of the operator they used) from scratch and compare:

* **entries**: drawn with ``random.Random(seed)`` (default seed 0: the same entries for the
  same request, every time) uniformly over the returned kernel's entries; every second one
  on the batch diagonal (``x_m = x_n``) when the kernel has one, where most of the mass is;
* **reference**: per-example autograd in float64, sharing no code with the kernel paths:
  the model is called functionally on **one example at a time** with float64 copies of its
  parameters and buffers, and each needed gradient ``g(n, c) = ∂(w_c f_c(x_n))/∂θ`` (or
  ``∂(Σ_c w_c f_c(x_n) / C)/∂θ`` for ``"mean"``) comes from ``torch.autograd.grad``: one
  backward per example, batched over the channels its entries need (``is_grads_batched``,
  a single vmap level) and verified against a plain backward of the first channel. An
  entry is the contraction the request defines, e.g. ``Σ_c ⟨g(n, c), g(m, c)⟩ / C`` for
  ``"trace"``. The entries' examples come from a pool of ``max(2, ⌈k/2⌉)`` per side, so the
  cost is a few single-example forwards and backwards. Where the model cannot run in
  float64 (it builds float32 tensors of its own; MPS; a float64 copy over a quarter of the
  memory budget) the reference runs in the compute dtype, and ``info.check["dtype"]`` says so;
* **error**: ``|K − ref| / scale`` with ``scale = Σ_terms ‖g(n, c)‖ ‖g(m, d)‖ / div`` (the
  Cauchy-Schwarz bound of the entry: equal to ``|ref|`` on the diagonal, and no division by
  a near-zero off-diagonal entry);
* **tolerance**: :data:`TOLERANCE` of the compute dtype (``check_tolerance=`` overrides).
  Above it, :class:`KernelCheckError` (one line naming the entry and both values).

The record, ``info.check``: ``{"entries", "max_rel_error", "tolerance", "dtype", "seed",
"seconds", "worst": {"kernel", "index", "value", "reference"}}``. The cost is a few
single-example backwards per entry: a few percent of a kernel of a few hundred examples
(``python -m entk_core bench --cases check`` measures it on the bench cases).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ._inputs import Batch
from ._request import ALL, Ctx
from .machine import resolve_budget

__all__ = ["TOLERANCE", "KernelCheckError", "Entry", "pick_entries", "reference_values", "spot_check"]

TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-3}
"""Largest relative error (see the module docstring) a spot check accepts, per compute
dtype (other dtypes: 5e-2). Far above the rounding of a correct kernel (float32 ~1e-6,
float64 ~1e-13 on the bench models), far below the errors of a wrong one (1e-2 and up)."""


class KernelCheckError(ValueError):
    """A spot-checked kernel entry disagrees with per-example autograd beyond the tolerance."""


@dataclass
class Entry:
    """One checked entry: ``index`` into the returned kernel, and the terms that define it:
    ``value = Σ_terms ⟨g(n, c), g(m, d)⟩ / div`` with ``(n, c, m, d)`` per term (``c = None``:
    the class-weighted mean of the channels)."""

    index: tuple[int, ...]
    terms: list[tuple[int, int | None, int, int | None]]
    div: float


# --------------------------------------------------------------------- entries
def _channel_pairs(ctx: Ctx, rng: random.Random) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """For the axes form: random fixed indices of the channel axes, and the (left, right)
    flat channel pairs they contract (traced axes summed). Returns ``(pairs, left index
    parts, right index parts)`` in the output's channel-axis order."""
    ch = ctx.channels
    S = ch.S
    fixed_l, fixed_r, out_l, traced = [], [], [], []
    for i, role in enumerate(ch.roles[1:]):
        if role == "keep":
            a, b = rng.randrange(S[i]), rng.randrange(S[i])
            out_l.append((i, a, b))
        elif role == "diag":
            a = b = rng.randrange(S[i])
            out_l.append((i, a, None))
        else:
            a = b = None
            traced.append(i)
        fixed_l.append(a)
        fixed_r.append(b)
    pairs = []
    sizes = [S[i] for i in traced]
    for t in range(math.prod(sizes) if sizes else 1):
        lm, rm = list(fixed_l), list(fixed_r)
        rem = t
        for i, s in zip(reversed(traced), reversed(sizes)):
            lm[i] = rm[i] = rem % s
            rem //= s
        flat_l = int(sum(v * math.prod(S[j + 1:]) for j, v in enumerate(lm))) if S else 0
        flat_r = int(sum(v * math.prod(S[j + 1:]) for j, v in enumerate(rm))) if S else 0
        pairs.append((flat_l, flat_r))
    return pairs, out_l, traced


def _axes_entry(ctx: Ctx, rng: random.Random, diagonal: bool, pools) -> Entry:
    ch = ctx.channels
    N1 = ctx.N1
    batch = ch.roles[0]
    pairs, parts, traced = _channel_pairs(ctx, rng)
    div = float(math.prod(ch.S[i] for i in traced)) if traced else 1.0
    if batch == "keep":
        n = rng.choice(pools[0])
        m = n if diagonal else rng.choice(pools[1])
        bidx, examples = [n, m], [(n, m)]
    elif batch == "diag":
        n = rng.choice(pools[0])
        bidx, examples = [n], [(n, n)]
    else:
        bidx, examples = [], [(n, n) for n in range(N1)]
        div *= N1
    idx = list(bidx)
    for _, a, b in parts:
        idx += [a] if b is None else [a, b]
    terms = [(n, c, m, d) for n, m in examples for c, d in pairs]
    return Entry(tuple(idx), terms, div)


def pick_entries(ctx: Ctx, k: int, seed: int = 0) -> list[Entry]:
    """``k`` distinct random entries of the kernel ``ctx`` requests (fewer when it has
    fewer), every second one on the batch diagonal when there is one. The examples are
    drawn from a pool of ``max(2, ⌈k/2⌉)`` random examples per side (one for ``k = 1``), so
    the reference differentiates few of them (each once, for every channel its entries
    need)."""
    rng = random.Random(seed)
    ch = ctx.channels
    C, N1, N2 = ctx.C, ctx.N1, ctx.N2
    total = math.prod(ch.out_shape())
    square = ctx.x2 is None
    p = 1 if k <= 1 else max(2, (k + 1) // 2)
    pool1 = rng.sample(range(N1), min(N1, p))
    pools = (pool1, pool1 if square else rng.sample(range(N2), min(N2, p)))
    out: dict[tuple, Entry] = {}
    tries = 0
    while len(out) < min(k, total) and tries < 20 * k + 100:
        diagonal = square and tries % 2 == 1        # every second draw on the batch diagonal
        tries += 1
        if ch.axes:
            e = _axes_entry(ctx, rng, diagonal, pools)
        else:
            n = rng.choice(pools[0])
            m = n if diagonal else rng.choice(pools[1])
            r = ch.reduction
            if r in ("full", "flat"):
                c, d = rng.randrange(C), rng.randrange(C)
                idx = (n, m, c, d) if r == "full" else (c * N1 + n, d * N2 + m)
                e = Entry(idx, [(n, c, m, d)], 1.0)
            elif r == "trace":
                e = Entry((n, m), [(n, c, m, c) for c in range(C)], float(C))
            elif r == "mean":
                e = Entry((n, m), [(n, None, m, None)], 1.0)
            else:                                                    # block (c, d)
                left, right = ch.groups[0]
                e = Entry((n, m), [(n, left.channels[0], m, right.channels[0])], 1.0)
        out.setdefault(e.index, e)
    return list(out.values())


# ------------------------------------------------------------------- reference
class _Reference:
    """Per-example gradients ``g(n, c)`` of ``ctx``'s model, one example at a time."""

    def __init__(self, ctx: Ctx, dtype: torch.dtype):
        self.ctx, self.dtype = ctx, dtype
        dev = ctx.device

        def cast(t: torch.Tensor) -> torch.Tensor:
            t = t.detach().to(dev)
            return t.to(dtype) if t.is_floating_point() else t

        self.cast = cast
        self.base = {n: cast(t) for n, t in ctx.base.items()}
        for n, b in ctx.model.named_buffers():
            self.base[n] = cast(b)
        self.w = ctx.w.to(dtype)

    def grads(self, side: int, n: int, chans: list[int | None]) -> dict[str, torch.Tensor]:
        """``{param: (len(chans), numel)}``: row ``i`` is ``g(n, chans[i])`` (``None``: mean).

        One forward of the single example, then one backward batched over the rows
        (``is_grads_batched``: one vmap level, not the nested one of
        :data:`~._request.JACREV_HAZARD`), whose first row is compared with a plain
        backward; a mismatch, or a model that cannot batch it, gets one plain backward per row."""
        ctx = self.ctx
        x: Batch = (ctx.raw1 if side == 0 else ctx.raw2).slice(n, n + 1).map(self.cast)
        leaves = {nm: self.base[nm].clone().requires_grad_(True) for nm in ctx.names}
        plist = [leaves[nm] for nm in ctx.names]
        with torch.enable_grad():
            out = ctx.forward({**self.base, **leaves}, x).reshape(-1)
            if out.dtype != self.dtype:
                raise TypeError(f"the model's output is {out.dtype}, not {self.dtype}")
            cot = torch.zeros(len(chans), out.shape[0], dtype=self.dtype, device=out.device)
            for i, c in enumerate(chans):
                if c is None:
                    cot[i] = self.w / ctx.C
                else:
                    cot[i, c] = self.w[c]
            first = self._rows(torch.autograd.grad(out, plist, cot[0], allow_unused=True, retain_graph=True), 1)
            if len(chans) == 1:
                return first
            try:
                rows = self._rows(torch.autograd.grad(out, plist, cot, is_grads_batched=True, allow_unused=True,
                                                      retain_graph=True), len(chans))
                if all(torch.allclose(rows[nm][0], first[nm][0], rtol=1e-6, atol=0) for nm in ctx.names):
                    return rows
            except (RuntimeError, NotImplementedError):
                pass
            per = [first] + [self._rows(torch.autograd.grad(out, plist, cot[i], allow_unused=True,
                                                            retain_graph=i < len(chans) - 1), 1)
                             for i in range(1, len(chans))]
        return {nm: torch.cat([r[nm] for r in per]) for nm in ctx.names}

    def _rows(self, gs, k: int) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        return {nm: (torch.zeros(k, math.prod(ctx.shapes[nm]), dtype=self.dtype, device=ctx.device)
                     if g is None else g.reshape(k, -1)) for nm, g in zip(ctx.names, gs)}


def reference_values(ctx: Ctx, entries: list[Entry], keys: list[str], dtype: torch.dtype,
                     budget: int | None = None) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``({key: [value per entry]}, {key: [scale per entry]})`` by per-example autograd in
    ``dtype`` (``key``: ``ALL`` or a layer group); ``budget``: bytes the gradients may take
    (default a quarter of the memory budget)."""
    ref = _Reference(ctx, dtype)
    right = 0 if ctx.raw2 is None else 1                  # x2 = None: both sides are x1's examples
    need: dict[tuple[int, int], list] = {}
    for e in entries:
        for n, c, m, d in e.terms:
            for key, ch in (((0, n), c), ((right, m), d)):
                lst = need.setdefault(key, [])
                if ch not in lst:
                    lst.append(ch)
    P = sum(math.prod(ctx.shapes[n]) for n in ctx.names)
    rows = sum(len(v) for v in need.values())
    budget = resolve_budget(None, ctx.device) // 4 if budget is None else budget
    if rows * P * dtype.itemsize > budget:
        raise ValueError(f"check: the reference needs {rows} per-example gradients of {P} parameters "
                         f"({rows * P * dtype.itemsize / 2**30:.1f} GiB); check fewer entries, or a kernel with "
                         f"fewer traced channels")
    names_of = {k: [n for n in ctx.names if k == ALL or ctx.group_of[n] == k] for k in keys}
    got: dict[tuple[int, int], tuple[list, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}
    for (side, n), chans in need.items():
        g = ref.grads(side, n, chans)
        sq = {nm: torch.linalg.vector_norm(g[nm], dim=1) ** 2 for nm in ctx.names}
        norms = {k: sum(sq[nm] for nm in names_of[k]).sqrt() for k in keys}
        got[(side, n)] = (list(chans), g, norms, sq)
    vals = {k: [] for k in keys}
    scales = {k: [] for k in keys}
    memo: dict[tuple, tuple[dict[str, float], dict[str, float]]] = {}     # (m, n) is (n, m) mirrored
    for e in entries:
        pairs: dict[tuple[int, int], list] = {}
        for n, c, m, d in e.terms:
            pairs.setdefault((n, m), []).append((c, d))
        dot = dict.fromkeys(keys, 0.0)
        sc = dict.fromkeys(keys, 0.0)
        for (n, m), cds in pairs.items():
            key = ((0, n), (right, m), tuple(cds))
            mirror = ((right, m), (0, n), tuple((d, c) for c, d in cds))
            if mirror in memo:
                d_k, s_k = memo[mirror]
            else:
                d_k, s_k = memo.setdefault(key, _contract_pair(got[key[0]], got[key[1]], cds, ctx.names,
                                                               names_of))
            for k in keys:
                dot[k] += d_k[k]
                sc[k] += s_k[k]
        for k in keys:
            vals[k].append(dot[k] / e.div)
            scales[k].append(sc[k] / e.div)
    return vals, scales


def _contract_pair(left, right, cds, names, names_of) -> tuple[dict[str, float], dict[str, float]]:
    """``Σ_(c, d) ⟨g(n, c), g(m, d)⟩`` and ``Σ ‖g(n, c)‖ ‖g(m, d)‖`` per key, from two examples'
    gradient rows (``left``/``right``: ``(channels, {param: rows}, {key: row norms}, {param:
    squared row norms})``)."""
    (cl, GL, NL, SQ), (cr, GR, NR, _) = left, right
    il = [cl.index(c) for c, _ in cds]
    ir = [cr.index(d) for _, d in cds]
    whole = il == ir == list(range(len(cl))) and len(cl) == len(cr)    # e.g. every channel of a trace
    same = whole and GL is GR                                         # a diagonal entry: ‖g‖² summed
    per = {}
    for nm in names:
        if same:
            per[nm] = float(SQ[nm].sum())
            continue
        L, R = (GL[nm], GR[nm]) if whole else (GL[nm][il], GR[nm][ir])
        per[nm] = float(torch.dot(L.reshape(-1), R.reshape(-1)))
    dots = {k: sum(per[nm] for nm in ns) for k, ns in names_of.items()}
    scales = {k: float((NL[k] * NR[k]).sum()) if whole else float((NL[k][il] * NR[k][ir]).sum()) for k in names_of}
    return dots, scales


def _reference_dtype(ctx: Ctx, budget: int) -> torch.dtype:
    if ctx.device.type == "mps":
        return ctx.dtype
    P = sum(t.numel() for t in ctx.base.values())
    if P * 8 > budget:                    # a float64 copy of a large model: the compute dtype
        return ctx.dtype
    return torch.float64


# ------------------------------------------------------------------------ check
def check_count(check: Any) -> int:
    """The number of entries ``check`` asks for (``None``/``False``/``0``: none)."""
    if check is None or check is False:
        return 0
    if isinstance(check, bool) or not isinstance(check, int) or check < 0:
        raise ValueError(f"check must be a number of kernel entries (an int >= 0), got {check!r}")
    return int(check)


def spot_check(ctx: Ctx, read: Callable[[str, list[tuple[int, ...]]], list[float]], k: int,
               tolerance: float | None = None, seed: int = 0, keys: list[str] | None = None) -> dict[str, Any]:
    """Check ``k`` random entries of the kernel(s) ``read(key, indices) -> values`` returns
    against per-example autograd (see the module docstring); the record for
    ``info.check``. Raises :class:`KernelCheckError` above ``tolerance``."""
    t0 = time.perf_counter()
    keys = keys or [ALL]
    tol = float(tolerance) if tolerance is not None else TOLERANCE.get(ctx.dtype, 5e-2)
    entries = pick_entries(ctx, k, seed)
    budget = resolve_budget(None, ctx.device) // 4
    dtype = _reference_dtype(ctx, budget)
    try:
        vals, scales = reference_values(ctx, entries, keys, dtype, budget)
    except (RuntimeError, TypeError, NotImplementedError):
        if dtype == ctx.dtype:
            raise
        dtype = ctx.dtype                       # the model does not run in float64: the compute dtype
        vals, scales = reference_values(ctx, entries, keys, dtype, budget)
    worst: dict[str, Any] = {}
    max_rel = 0.0
    for key in keys:
        got = read(key, [e.index for e in entries])
        for e, v, r, s in zip(entries, got, vals[key], scales[key]):
            err = abs(v - r)
            rel = err / s if s > 0 else (0.0 if err == 0 else math.inf)
            if rel >= max_rel:
                max_rel = rel
                worst = {"kernel": None if key == ALL else key, "index": list(e.index), "value": v, "reference": r}
    rec = {"entries": len(entries), "max_rel_error": max_rel, "tolerance": tol,
           "dtype": str(dtype).replace("torch.", ""), "seed": seed, "seconds": time.perf_counter() - t0,
           "worst": worst}
    ctx.info.check = rec
    if max_rel > tol:
        name = "K" + (f"[{worst['kernel']!r}]" if worst["kernel"] is not None else "")
        raise KernelCheckError(
            f"eNTK spot check failed: {name}[{', '.join(map(str, worst['index']))}] = {worst['value']:.8g} but "
            f"per-example autograd in {rec['dtype']} gives {worst['reference']:.8g} (relative error {max_rel:.2e} > "
            f"tolerance {tol:.0e}; method {ctx.method}); the kernel is wrong for this model")
    return rec
