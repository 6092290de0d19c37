"""Memory and time planner for eNTK computations.

Before any kernel work, :func:`entk_core.engine.kernels.empirical_ntk` asks this module how
much memory and time each computation path needs for the request, picks the **fastest
path that fits** the memory budget, and chooses the input chunk size. When nothing
fits, it raises :class:`MemoryBudgetError` with a one-line message saying what was
asked, the estimate, the budget, and what would fit instead (fewer inputs, one layer
group, a smaller reduction), or that nothing does. The CLI and the dashboard call
:func:`entk_core.engine.kernels.estimate_ntk` (kernels) or
:func:`entk_core.engine.eigenpairs.estimate_top_eigenpairs` (flattened spectra) to show
the cost before running.

The request (:class:`ParamSpec` per parameter, :class:`ChannelShape` for the output
channels) and each path's bytes and flops are described in :mod:`.costs`; the memory
budget and the measured rates in :mod:`.machine`.

Paths (``method``)
------------------
* ``"structured"`` -- layer inputs ``a`` and output cotangents ``g`` per channel,
  contracted as ``(g·g')(a·a')`` (pairwise over positions) or via per-example gradients
  ``Σ_t g_t a_tᵀ`` (whichever :func:`~.costs.choose_form` finds cheaper); parameters
  without a rule use the per-parameter Jacobian.
* ``"jacobian"`` -- per-example Jacobians ``(N, C, P_i)`` (``vmap(jacrev)``), contracted by
  einsum (the reference).
* ``"ntk_vp"`` -- NTK-vector products (a vjp and a jvp per output basis vector).

Time
----
Each path's seconds come from what it does, counted (:mod:`._work`): the kernels it
launches, its matrix-product flops and the bytes it moves, from the model's own forward and
backward counts (:mod:`._profile`, measured on two inputs by ``estimate_ntk`` and
``empirical_ntk``; guessed from the parameters otherwise), times the rates of
:func:`~.machine.machine_rates` (seconds per kernel, GEMM flop/s, bytes/s), measured on this
machine, re-measured when stale or when a call runs 3× off its estimate. ``auto`` takes the
structured path unless another is estimated :data:`PREFER_STRUCTURED` times faster.
Estimates are rough (factors of ~2, some paths more) and are meant for choosing between
paths and for telling a user what to expect. Where they leave the structured path on a call
of 2 s or more, ``empirical_ntk`` times their pick and the structured path on a slice of the
inputs and passes the measured / estimated ratios back as ``corrections`` (:mod:`._pilot`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from .costs import (TILE_CAP_BYTES, ChannelShape, ParamSpec, as_spec, path_cost, request_items, shorthand_channels,
                    walk_layout)
from ._profile import ModelProfile, guess_profile
from ._work import path_work
from .machine import dtype_name, itemsize, machine_rates, resolve_budget
from .units import format_bytes, format_seconds

__all__ = [
    "ChannelShape",
    "METHODS",
    "MemoryBudgetError",
    "ParamSpec",
    "Plan",
    "REDUCTIONS",
    "choose",
    "estimate",
]

#: The reductions of an ``(N, C)`` output (shorthands; see :mod:`entk_core.engine.kernels`).
REDUCTIONS = ("full", "trace", "mean", "flat", "block")
#: Kernel computation paths.
METHODS = ("structured", "jacobian", "ntk_vp")


#: ``auto`` takes the structured path unless another is estimated this many times faster
#: (the estimates are good to a factor of about 2; within it the structured path, with the
#: least memory and the largest products, measured the faster).
PREFER_STRUCTURED = 1.5


class MemoryBudgetError(ValueError):
    """The requested kernel computation does not fit the memory budget.

    The message is a single line: what was asked, the estimate, the budget and what
    would fit instead.
    """


# ---------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """The outcome of an estimate.

    Attributes:
      method: the chosen path (``None`` if nothing fits).
      chunk_size: inputs per chunk on each side.
      cache: whether the per-chunk factors of the right-hand inputs are kept for reuse.
      bytes: estimated peak bytes of the chosen path (output included).
      output_bytes: bytes of the result tensor(s).
      flops: estimated matrix-product flops; seconds: estimated wall time (counts × measured rates).
      budget: the memory budget in bytes.
      fits: whether ``bytes <= budget``.
      paths: per method ``{"bytes", "flops", "ops", "traffic", "seconds", "chunk_size", "cache",
        "fits", ...}`` (``ops``: kernels launched; ``traffic``: bytes moved).
      forms: per structured layer group, ``"pair"`` / ``"perex"``.
      layout: how the structured path walks the kernel (``"stream"``, ``"panels"`` or
        ``"chunks"``); class_block: channels per stream block / panel.
      request: a short description of the request.
      suggestion: what would fit (only when nothing fits).
      device: where the work runs; rates: ``"measured"``, ``"cached"`` or ``"default"``.
    """

    method: str | None
    chunk_size: int
    cache: bool
    bytes: int
    output_bytes: int
    flops: float
    seconds: float
    budget: int
    fits: bool
    paths: dict[str, dict[str, Any]] = field(default_factory=dict)
    forms: dict[str, str] = field(default_factory=dict)
    request: str = ""
    suggestion: str = ""
    layout: str = "chunks"
    class_block: int = 0
    device: str = "cpu"
    rates: str = "default"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: request, chosen path, estimate and budget."""
        if self.method is None:
            return f"{self.request}: nothing fits the budget {format_bytes(self.budget)}; {self.suggestion}"
        lay = f", layout={self.layout}" if self.layout and self.layout != "chunks" else ""
        return (f"{self.request}: method={self.method}{lay}, chunk={self.chunk_size}, "
                f"~{format_seconds(self.seconds)}, ~{format_bytes(self.bytes)} (output {format_bytes(self.output_bytes)}), "
                f"~{self.flops / 1e9:.3g} GFLOP on {self.device}, budget {format_bytes(self.budget)}")


def estimate(
    n1: int,
    n2: int | None,
    n_classes: int,
    groups: Mapping[str, Iterable],
    reduction: str = "full",
    dtype: Any = "float32",
    *,
    by_layer: bool = False,
    symmetric: bool | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
    memory_budget: int | float | str | None = None,
    device: Any = None,
    activation_per_example: float | None = None,
    channels: ChannelShape | None = None,
    out_elems: int | None = None,
    profile: ModelProfile | None = None,
    corrections: dict[str, float] | None = None,
) -> Plan:
    """Estimate bytes and seconds of every path for a kernel request and pick one.

    Args:
      n1, n2: numbers of inputs on each side (``n2=None``: the kernel of ``x1`` with
        itself, which is symmetric and computed once per pair of chunks).
      n_classes: ``C``, output channels per input (``prod(S)`` for an ``(N, *S)`` output).
      groups: ``group -> [ParamSpec | (name, shape, kind[, positions])]`` (see module doc).
      reduction: ``"full"``, ``"trace"``, ``"mean"``, ``"flat"`` or ``"block"`` (used when
        ``channels`` is not given, and in the description).
      dtype: compute dtype (``"float32"``, ``torch.float64``...).
      by_layer: one output per group (``empirical_ntk_by_layer``).
      method: ``"auto"`` (the fastest that fits) or one path to cost.
      chunk_size: force the inputs per chunk (default: the largest that fits).
      memory_budget: see :func:`resolve_budget`.
      device: where the work runs (memory and calibrated rates of that device).
      activation_per_example: elements of saved activations per example for one forward
        (default: a guess from the layer sizes).
      channels: the channel contraction (default: the shorthand's, see :class:`ChannelShape`).
      out_elems: elements of one output kernel (default: from ``channels``).
      profile: the model's forward and backward counts (:func:`~._profile.profile_model`;
        default: guessed from the parameters, :func:`~._profile.guess_profile`).
      corrections: ``{path: measured / estimated}`` from a timed pilot of this request
        (:mod:`._pilot`): each such path's seconds are multiplied by its factor, and the
        choice is the fastest corrected path (no preference for ``structured``).

    Returns:
      a :class:`Plan`; ``plan.fits`` is ``False`` (and ``plan.suggestion`` says what would
      fit) when no path fits. Never raises for budget reasons: see :func:`choose`.
    """
    plan, request = _estimate(n1, n2, n_classes, groups, reduction, dtype, by_layer=by_layer, symmetric=symmetric,
                              method=method, chunk_size=chunk_size, memory_budget=memory_budget, device=device,
                              activation_per_example=activation_per_example, channels=channels, out_elems=out_elems,
                              profile=profile, corrections=corrections)
    if not plan.fits:
        plan.suggestion = _suggest(**request)
    return plan


def _estimate(n1, n2, n_classes, groups, reduction, dtype, *, by_layer, symmetric, method, chunk_size, memory_budget,
              device, activation_per_example, channels, out_elems, profile=None,
              corrections=None) -> tuple[Plan, dict[str, Any]]:
    """:func:`estimate` without the suggestion: ``(plan, the request normalised)``. Never
    calls :func:`_suggest`, so trying smaller requests cannot recurse."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    if method not in ("auto",) + METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {('auto',) + METHODS}")
    if symmetric is None:
        symmetric = n2 is None
    n2 = n1 if n2 is None else int(n2)
    n1, C = int(n1), int(n_classes)
    ch = channels or shorthand_channels(reduction, C)
    groups = {g: [as_spec(p) for p in ps] for g, ps in groups.items()}
    s = itemsize(dtype)
    budget = resolve_budget(memory_budget, device)
    rates = machine_rates(device)
    if out_elems is None:
        out_elems = (n1 if ch.batch == "diag" else n1 * n2) * ch.kp_left * ch.kp_right * ch.groups
    out_bytes = out_elems * s * (max(1, len(groups)) if by_layer else 1)
    all_specs = [p for ps in groups.values() for p in ps]
    struct_act = sum(p.positions * (sum(p.shape) if p.kind != "other" else 0) for p in all_specs)
    other = sum(p.numel for p in all_specs if p.kind == "other")
    act = float(activation_per_example) if activation_per_example else 2.0 * struct_act + min(other, 10**6) + C
    fp = 0.0
    for p in all_specs:
        fp += 2 * p.positions * p.numel if p.kind in ("linear_weight", "other") else p.positions * p.numel
    fp = max(fp, 1.0)
    prof = profile if profile is not None else guess_profile(all_specs, act, s)
    dev = str(device) if device is not None else "cpu"
    request = {"n1": n1, "n2": None if symmetric else n2, "C": C, "groups": groups, "reduction": reduction,
               "dtype": dtype, "by_layer": by_layer, "method": method, "budget": budget, "act": act, "ch": ch,
               "device": device, "profile": profile}
    desc = (f"{'empirical_ntk_by_layer' if by_layer else 'empirical_ntk'}(N1={n1}, N2={n2}, C={C}, "
            f"reduction={reduction!r}, {dtype_name(dtype)}, {len(groups)} group{'s' if len(groups) != 1 else ''}, "
            f"{sum(p.numel for p in all_specs)} params)")

    def timed(m: str, items, B: int, cache: bool) -> dict[str, Any]:
        wk = path_work(m, items, prof, n1=n1, n2=n2, C=C, ch=ch, B=B, cache=cache, symmetric=symmetric,
                       out_bytes=out_bytes, s=s, act=act, n_params=len(all_specs))
        return {"seconds": rates.seconds(wk.ops, wk.flops, wk.bytes, dtype), "flops": wk.flops, "ops": wk.ops,
                "traffic": wk.bytes}

    paths: dict[str, dict[str, Any]] = {}
    forms: dict[str, str] = {}
    todo = METHODS if method == "auto" else (method,)
    nmax = max(n1, n2)
    for m in todo:
        items = request_items(groups, m, ch)
        if m == "structured":
            forms = {it.group: it.form for it in items if it.kind in ("linear", "embedding")}
        tile_per = ch.kp_left * ch.kp_right * s

        def cost(B: int, cache: bool, _m=m, _items=items) -> tuple[float, float, float]:
            return path_cost(_m, _items, n1=n1, n2=n2, C=C, ch=ch, B=B, cache=cache,
                             symmetric=symmetric, out_bytes=out_bytes, s=s, act=act, fp=fp)

        best = None
        if chunk_size:
            cands = [max(1, min(int(chunk_size), nmax))]
        else:
            cap = max(1, int(math.sqrt(TILE_CAP_BYTES / tile_per)))
            hi = max(1, min(nmax, cap, 64 if m == "ntk_vp" else nmax))
            cands = sorted({hi} | {max(1, hi >> k) for k in range(1, 16)}, reverse=True)
        for cache in ((False,) if m == "ntk_vp" else (True, False)):
            for B in cands:
                # balance chunks: same number of chunks, equal sizes
                nch = math.ceil(nmax / B)
                Bb = math.ceil(nmax / nch)
                peak, fb, ct = cost(Bb, cache)
                if peak <= budget:
                    best = (Bb, cache, peak, fb, ct)
                    break
            if best is not None:
                break
        if (best is not None and symmetric and best[1] and not chunk_size and m == "structured"
                and best[0] >= nmax and ch.batch == "pair"):
            # a symmetric kernel in one chunk computes both triangles: split it into a few
            # chunks (tiles stay large enough for efficient GEMMs) and mirror
            k = max(1, min(2, nmax // 200))
            if k > 1:
                Bk = math.ceil(nmax / k)
                pk, fk, ck = cost(Bk, True)
                if pk <= budget:
                    best = (Bk, True, pk, fk, ck)
        if best is None:
            B = cands[-1]
            peak, fb, ct = cost(B, False)
            paths[m] = {"bytes": int(peak), **timed(m, items, B, False), "chunk_size": B, "cache": False,
                        "fits": False}
        else:
            B, cache, peak, fb, ct = best
            paths[m] = {"bytes": int(peak), **timed(m, items, B, cache), "chunk_size": B, "cache": cache,
                        "fits": True}
        if corrections and m in corrections:
            paths[m].update(seconds=paths[m]["seconds"] * corrections[m], correction=corrections[m])
        if m == "structured":
            det: dict = {}
            B0 = paths[m]["chunk_size"]
            path_cost(m, items, n1=n1, n2=n2, C=C, ch=ch, B=B0, cache=True, symmetric=symmetric,
                      out_bytes=out_bytes, s=s, act=act, fp=fp, _detail=det)
            layout, lbytes, cblock = walk_layout(items, n1=n1, n2=n2, C=C, ch=ch, B=B0,
                                                 symmetric=symmetric, out_bytes=out_bytes, s=s, act=act,
                                                 budget=budget, store=det["store"], work=det["work"],
                                                 fits=paths[m]["fits"], forced_chunk=bool(chunk_size))
            paths[m].update(layout=layout, class_block=cblock)
            if layout != "chunks":
                paths[m].update(bytes=lbytes, fits=True)

    fitting = [m for m in todo if paths[m]["fits"]]
    if fitting:
        chosen = min(fitting, key=lambda m: (paths[m]["seconds"], METHODS.index(m)))
        if (not corrections and "structured" in fitting
                and paths["structured"]["seconds"] <= PREFER_STRUCTURED * paths[chosen]["seconds"]):
            chosen = "structured"
        p = paths[chosen]
        layout, cblock = p.get("layout", "chunks"), p.get("class_block", 0)
        return Plan(chosen, p["chunk_size"], p["cache"], p["bytes"], out_bytes, p["flops"], p["seconds"],
                    budget, True, paths, forms, desc, layout=layout, class_block=cblock, device=dev,
                    rates=rates.source), request
    cheapest = min(todo, key=lambda m: paths[m]["bytes"])
    p = paths[cheapest]
    return Plan(None, p["chunk_size"], False, p["bytes"], out_bytes, p["flops"], p["seconds"],
                budget, False, paths, forms, desc, device=dev, rates=rates.source), request


def _fits(n1, n2, C, groups, reduction, dtype, by_layer, method, budget, act, ch, device, profile=None) -> Plan:
    """The plan of a smaller request (no suggestion: :func:`_estimate`)."""
    return _estimate(n1, n2, C, groups, reduction, dtype, by_layer=by_layer, symmetric=None, method=method,
                     chunk_size=None, memory_budget=budget, device=device, activation_per_example=act,
                     channels=ch, out_elems=None, profile=profile)[0]


def _suggest(n1, n2, C, groups, reduction, dtype, by_layer, method, budget, act, ch, device, profile=None) -> str:
    """What would fit: fewer inputs, one layer group, a smaller reduction, or top-k."""
    tips: list[str] = []
    # fewer inputs (scale both sides by the same factor)
    lo, hi = 0, n1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        m2 = None if n2 is None else max(1, round(n2 * mid / n1))
        if _fits(mid, m2, C, groups, reduction, dtype, by_layer, method, budget, act, ch, device).fits:
            lo = mid
        else:
            hi = mid
    if lo >= 1:
        tips.append(f"at most {lo} inputs" + ("" if n2 is None else " per side"))
    # one layer group
    if len(groups) > 1:
        ok = [g for g in groups
              if _fits(n1, n2, C, {g: groups[g]}, reduction, dtype, False, method, budget, act, ch, device).fits]
        if ok:
            tips.append("one layer group (" + ", ".join(repr(g) for g in ok[:4]) + (", ..." if len(ok) > 4 else "") + ")")
    # a smaller reduction
    if ch.kp_left > 1:
        for r in ("trace", "mean"):
            p = _fits(n1, n2, C, groups, r, dtype, by_layer, method, budget, act, shorthand_channels(r, C), device)
            if p.fits:
                tips.append(f"reduction={r!r} (~{format_bytes(p.bytes)})")
                break
        if reduction in ("full", "flat"):
            tips.append("top-k eigenpairs of the flattened kernel without forming it "
                        "(entk_core.top_eigenpairs(model, k, x=x))")
    return "what would fit: " + ("; or ".join(tips) if tips else "nothing at this size; raise the budget")


def choose(*args: Any, **kwargs: Any) -> Plan:
    """:func:`estimate`, raising :class:`MemoryBudgetError` (one line) when nothing fits."""
    plan = estimate(*args, **kwargs)
    if not plan.fits:
        raise MemoryBudgetError(
            f"{plan.request} needs about {format_bytes(plan.bytes)} (output {format_bytes(plan.output_bytes)}) "
            f"but the memory budget is {format_bytes(plan.budget)}; {plan.suggestion}"
        )
    return plan
