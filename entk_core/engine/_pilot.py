"""A timed pilot for ``method="auto"`` (a private module of :mod:`entk_core.engine`).

The planner's time model (:mod:`.planner`, :mod:`._work`) counts each path's work and prices
it with this machine's measured rates. Some work runs far from those rates. NTK-vector products
vmapped over thousands of basis vectors run many tiny batched products well below the GEMM
rate. On the toy model of superposition (full kernel, N = 500, one thread), ``ntk_vp`` was
estimated at 3.4 s and measured at 14.6 s; ``structured`` ran in 8.9 s. So ``auto`` measures
before it leaves the structured path:

* the condition: the call is estimated at :data:`MIN_SECONDS` or more, and the estimates pick
  another path over ``structured``, which fits. The structured path's cost is the one the
  counts model best (it measured 0.6-2.2x its estimate on the bench models at full N, the
  others up to 5.8x), and a pilot on a slice of the inputs overstates the per-chunk
  overhead of its per-example factors (ViT and ResNet trace kernels: 3.3x and 2.0x on an
  eighth of the inputs against 2.0x and 1.6x on all of them), so it is not second-guessed;
* the contenders: the estimates' pick and ``structured``, when that is estimated within
  :data:`SPREAD` of the pick;
* the pilot: each runs once on the first inputs (:data:`SHARE` of them, at most its own
  chunk), when the pilots' estimated cost is under :data:`MAX_COST` of the call's;
* the choice: each timed path's estimate is scaled by its own measured / estimated ratio,
  every other path's by the largest of them, and the fastest scaled path runs.

The ratios are remembered per request shape in this process, so a sweep over checkpoints
pilots once. What was timed and chosen is in ``KernelInfo.pilot``.
"""
from __future__ import annotations

import math
import time
import warnings
from collections import OrderedDict
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_map

from ._guards import error_reason, eval_mode

__all__ = ["MAX_COST", "MIN_SECONDS", "SHARE", "SPREAD", "maybe_pilot"]

#: Pilot only calls estimated at this many seconds or more (below, a wrong pick costs little).
MIN_SECONDS = 2.0
#: The structured path is timed against the estimates' pick when it is estimated within this
#: factor of it (the paths other than structured measured up to 5.8x their estimates).
SPREAD = 4.0
#: The pilot runs on this share of the inputs (one chunk at most): an eighth of the examples
#: is 1/64 of a kernel's tiles.
SHARE = 1 / 8
#: ... when its estimated cost (both contenders) is under this share of the call's best estimate.
MAX_COST = 0.2
_FAILED = 1e6   # the correction of a path whose pilot raised: never chosen
_SEEN: "OrderedDict[tuple, tuple[dict[str, float], dict]]" = OrderedDict()
_SEEN_MAX = 256


def _key(ctx) -> tuple:
    """What the measured ratios depend on: the model's parameters, the inputs' sizes, the
    channels, dtype and device."""
    return (ctx.model_name, tuple((n, tuple(ctx.shapes[n])) for n in ctx.names), ctx.N1, ctx.N2,
            ctx.x2 is None, repr(ctx.ch_shape), str(ctx.dtype), str(ctx.device), ctx.by_layer,
            ctx.x1.signature())


def _head(x: Any, n: int) -> Any:
    return tree_map(lambda t: t[:n] if isinstance(t, torch.Tensor) and t.ndim else t, x)


def _pilot_sizes(ctx, chunks: dict[str, int], best: float) -> dict[str, int]:
    """Inputs per contender's pilot: :data:`SHARE` of them, at most the path's own chunk (a
    tile of a different size runs at a different speed: the superposition toy's NTK-vector products ran
    5.0x their estimate on chunks of 63 and 3.0x on chunks of 32); empty when the pilots'
    estimated cost is over :data:`MAX_COST` of the best estimate."""
    n_max = max(ctx.N1, ctx.N2)
    sizes = {m: max(1, min(c, math.ceil(n_max * SHARE))) for m, c in chunks.items()}
    cost = sum(ctx.estimate_head(n, m) for m, n in sizes.items())
    return sizes if cost <= MAX_COST * best else {}


def maybe_pilot(ctx, x1: Any, x2: Any, make_ctx: Callable[..., Any], run: Callable[[Any], Any]) -> None:
    """Time an ``auto`` request's pick and the structured path on its first inputs and plan ``ctx``
    again with their measured / estimated ratios (:meth:`~._request.Ctx.adopt_pilot`).
    ``make_ctx(method, chunk_size, x1, x2)`` builds the pilot's request; ``run(ctx)`` computes it."""
    plan = ctx.plan
    if plan is None or ctx._plan_args[1] != "auto" or ctx._plan_args[2] or ctx.excluded:
        return
    if ctx.work_seconds < MIN_SECONDS:
        return
    fitting = {m: p for m, p in plan.paths.items() if p.get("fits")}
    if plan.method == "structured" or "structured" not in fitting:
        return
    best = fitting[plan.method]["seconds"]
    if fitting["structured"]["seconds"] > SPREAD * best:   # far behind: the estimates decide
        return
    contenders = [plan.method, "structured"]
    key = _key(ctx)
    if key in _SEEN:
        _SEEN.move_to_end(key)
        corrections, record = _SEEN[key]
        ctx.adopt_pilot(corrections, {**record, "reused": True, "seconds": 0.0})
        return
    t0 = time.perf_counter()
    sizes = _pilot_sizes(ctx, {m: int(fitting[m]["chunk_size"]) for m in contenders}, best)
    if not sizes:
        return
    timed: dict[str, dict] = {}
    corrections: dict[str, float] = {}
    for m, n in sizes.items():
        a = _head(x1, n)
        b = None if x2 is None else _head(x2, n)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pctx = make_ctx(m, n, a, b)
                if pctx.method != m:   # the path cannot run on this model (recorded by the main call)
                    raise RuntimeError(f"planned {pctx.method} instead")
                with eval_mode(pctx.model):
                    t = time.perf_counter()
                    pctx.run_with_fallbacks(lambda: run(pctx))
                    measured = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - a path that fails its pilot is not chosen; the main call reports
            timed[m] = {"error": error_reason(e)}
            corrections[m] = _FAILED
            continue
        est = max(float(pctx.work_seconds), 1e-9)
        timed[m] = {"measured_s": measured, "estimated_s": est, "ratio": measured / est}
        corrections[m] = measured / est
    # a path that was not timed was estimated slower than the pick: scaled by the largest
    # measured ratio, so an untested estimate cannot win over measured ones
    worst = max((c for c in corrections.values() if c < _FAILED), default=1.0)
    for m in fitting:
        corrections.setdefault(m, worst)
    record = {"paths": timed, "inputs": max(sizes.values()), "seconds": time.perf_counter() - t0, "reused": False}
    _SEEN[key] = (corrections, record)
    while len(_SEEN) > _SEEN_MAX:
        _SEEN.popitem(last=False)
    ctx.adopt_pilot(corrections, record)
