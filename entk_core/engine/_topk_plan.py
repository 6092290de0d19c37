"""The planner of the top-k paths of a flattened eNTK (a private module of
:mod:`entk_core.engine`; used by :mod:`entk_core.engine.eigenpairs`).

For a model, inputs and ``k``, :func:`plan_topk` estimates the seconds and bytes of every
path (``"gram"``, ``"dense"``, ``"lanczos"`` on each operator, ``"iterative"``) and picks
the fastest that fits the memory budget, or writes a one-line refusal saying what would
fit (:func:`topk_refusal`). The Lanczos cost model (:func:`lanczos_shape`) was measured on
the paper's toy MLP (k = 200: ~2,300 products, block 50) and on synthetic spectra; rough.
"""
from __future__ import annotations

import math

import torch

from . import planner
from ._flat import flat_ctx, structured_bytes, structured_flops
from ._request import Ctx
from .machine import Rates, eigh_seconds, machine_rates, resolve_budget
from .planner import Plan
from .units import format_bytes

__all__ = ["DENSE_MAX", "TOPK_METHODS", "lanczos_shape", "ncv", "plan_topk", "topk_refusal"]

TOPK_METHODS = ("auto", "gram", "dense", "lanczos", "iterative")
"""The top-k paths of a model's flattened eNTK (``"auto"``: the fastest that fits)."""
DENSE_MAX = 12_000
"""Largest ``C·N`` for which the dense path is costed under ``method="auto"``."""


def lanczos_shape(R: int, k: int) -> tuple[int, int, int]:
    """(block, max basis, expected products) of :func:`block_lanczos` for the top ``k`` of
    an ``R × R`` operator: measured on the paper's toy MLP (k = 200: ~2,300 products,
    block 50) and synthetic spectra; rough."""
    b = max(8, min(64, k // 4))
    basis = int(min(R, max(15 * k, k + 16 * b)))
    products = int(min(R * 1.0, 12 * k + 20 * b)) if R > k + 2 * b else R
    return b, basis, products


def lanczos_seconds(R: int, k: int, flops_per_vector: float, rates: Rates) -> tuple[float, int]:
    """(seconds, bytes) of the Lanczos iteration itself (products excluded from bytes)."""
    b, basis, products = lanczos_shape(R, k)
    g64 = rates.gemm_rate("float64")
    orth = 4.0 * R * 0.5 * min(basis, products) * products * 1.5
    m_end = min(basis, products)
    checks = 2.0 * 9.0 * m_end ** 3          # checks every 25% of growth: ~2 eigh of the final size
    t = (products * flops_per_vector + orth + checks) / g64
    mem = R * (basis + b) * 8 + (basis + b) ** 2 * 8 + 4 * R * b * 8
    return t, int(mem)


def fb_seconds(ctx: Ctx, rates: Rates, sides: int = 1) -> float:
    """Seconds of the forward + per-channel backward passes over all inputs (the factors)."""
    fp = 0.0
    for specs in ctx.group_specs().values():
        for p in specs:
            fp += 2 * p.positions * p.numel if p.kind in ("linear_weight", "other") else p.positions * p.numel
    return sides * ctx.N1 * max(fp, 1.0) * (1 + 2 * ctx.C) / rates.autograd_rate(ctx.dtype)


def plan_topk(ctx: Ctx, k: int, method: str, memory_budget, tol: float) -> Plan:
    C, N = ctx.C, ctx.N1
    R = C * N
    P = sum(math.prod(ctx.shapes[n]) for n in ctx.names)
    s = ctx.dtype.itemsize
    budget = resolve_budget(memory_budget, ctx.device)
    rates = machine_rates(ctx.device)
    g, g64 = rates.gemm_rate(ctx.dtype), rates.gemm_rate("float64")
    t_fac = fb_seconds(ctx, rates)
    paths: dict[str, dict] = {}
    out_bytes = (R * k + k) * 8
    # gram: J (R, P), Jᵀ J (P, P) in float64, eigh(P), back-map
    jb = R * P * s
    if P < R:
        paths["gram"] = {"bytes": int(2 * jb + 3 * P * P * 8 + out_bytes), "seconds": t_fac + 2.0 * R * P * P / g
                         + eigh_seconds(P, rates) + 2.0 * R * P * k / g, "operator": "jacobian"}
    else:   # J Jᵀ formed from the explicit J, then a dense eigendecomposition
        paths["gram"] = {"bytes": int(jb + 4 * R * R * 8 + out_bytes), "seconds": t_fac + 2.0 * R * R * P / g
                         + eigh_seconds(R, rates), "operator": "jacobian"}
    # the formed flat kernel (structured path) and its cost
    try:
        kp = planner.estimate(N, None, C, ctx.group_specs(), "flat", ctx.dtype, method="structured",
                              memory_budget=budget, device=ctx.device, activation_per_example=ctx.act)
        t_kernel, b_kernel, kfits = kp.seconds, kp.bytes, kp.fits
    except ValueError:
        t_kernel, b_kernel, kfits = math.inf, math.inf, False
    if R <= DENSE_MAX or method == "dense":
        paths["dense"] = {"bytes": int(max(b_kernel, R * R * s) + 3 * R * R * 8 + out_bytes),
                          "seconds": t_kernel + eigh_seconds(R, rates), "operator": "kernel",
                          "fits_kernel": kfits}
    # Lanczos on each operator
    lan: dict[str, dict] = {}
    sb = structured_bytes(ctx, torch.float64)
    t_l, b_l = lanczos_seconds(R, k, structured_flops(ctx), rates)
    lan["structured"] = {"bytes": int(sb + b_l + out_bytes), "seconds": t_fac + t_l}
    t_l2, b_l2 = lanczos_seconds(R, k, 2.0 * R * R, rates)
    lan["kernel"] = {"bytes": int(max(b_kernel, R * R * s) + R * R * 8 + b_l2 + out_bytes),
                     "seconds": t_kernel + R * R * 8 / 2e9 + t_l2}
    fp = fb_seconds(ctx, rates) / max(1, 1 + 2 * C) * 6.0 * g / g64
    t_l3, b_l3 = lanczos_seconds(R, k, 0.0, rates)
    _, _, products = lanczos_shape(R, k)
    lan["vjp"] = {"bytes": int(b_l3 + 4 * P * 8 * 64 + min(256, N) * (ctx.act + C) * s * 4 * 64 + out_bytes),
                  "seconds": t_l3 + products * fp}
    fit_ops = {o: v for o, v in lan.items() if v["bytes"] <= budget}
    best_op = min(fit_ops or lan, key=lambda o: (fit_ops or lan)[o]["seconds"])
    paths["lanczos"] = {**lan[best_op], "operator": best_op, "operators": lan}
    # iterative (ARPACK) on the auto operator, for the record
    op_mode = "structured" if structured_bytes(ctx, ctx.dtype) <= budget // 2 else "vjp"
    flops_it = structured_flops(ctx) if op_mode == "structured" else products * fp * g64
    n_cv = ncv(k, R)
    it_products = 6 * k + 3 * n_cv
    paths["iterative"] = {"bytes": int((n_cv + 4) * R * 8 + structured_bytes(ctx, ctx.dtype) + out_bytes),
                          "seconds": t_fac + it_products * (flops_it / g + 2 * R * 1e-9 * n_cv)
                          + 4.0 * R * n_cv * n_cv / g64 * max(1, it_products // n_cv), "operator": op_mode}
    for v in paths.values():
        v["fits"] = v["bytes"] <= budget
        v["seconds"] = float(v["seconds"])
    desc = (f"top_eigenpairs(N={N}, C={C}, P={P}, k={k}, {str(ctx.dtype).replace('torch.', '')}, "
            f"{len(ctx.groups)} group{'s' if len(ctx.groups) != 1 else ''})")
    if method == "auto":
        cands = [m for m in ("gram", "dense", "lanczos") if m in paths and paths[m]["fits"]]
        if k >= R - 1 and "dense" in paths and paths["dense"]["fits"]:
            cands = ["dense"]
        chosen = min(cands, key=lambda m: paths[m]["seconds"]) if cands else None
    else:
        chosen = method if method in paths and paths[method]["fits"] else None
        if method == "dense" and "dense" not in paths:
            chosen = None
    if chosen is None:
        m = method if method != "auto" else min(paths, key=lambda q: paths[q]["bytes"])
        p = paths.get(m, paths["lanczos"])
        plan = Plan(None, N, False, p["bytes"], out_bytes, 0.0, p["seconds"], budget, False, paths, {}, desc,
                    device=str(ctx.device), rates=rates.source)
        plan.suggestion = topk_refusal(ctx, m, R, P, k, p["bytes"], budget, requested=method)
        return plan
    p = paths[chosen]
    name = chosen if chosen != "lanczos" else f"lanczos ({p['operator']} operator)"
    return Plan(name, N, False, p["bytes"], out_bytes, 0.0, p["seconds"], budget, True, paths, {}, desc,
                layout=p.get("operator", ""), device=str(ctx.device), rates=rates.source)


def ncv(k: int, R: int) -> int:
    """Lanczos vectors of scipy's ``eigsh`` for the top ``k`` of an ``R × R`` operator."""
    return min(R, max(2 * k + 1, 20))


def _fits_alone(ctx: Ctx, group: str, k: int, method: str, budget: int) -> bool:
    """Whether the top-``k`` request restricted to one layer group fits the budget."""
    sub = flat_ctx(ctx.model, ctx.x1.build(), ctx.w, group, ctx.dtype, ctx.device, check_finite=False)
    return plan_topk(sub, max(1, min(k, sub.C * sub.N1)), method, budget, 1e-6).fits


def topk_refusal(ctx: Ctx, method: str, R: int, P: int, k: int, need: int, budget: int,
                 requested: str = "auto") -> str:
    """One line: the request, its estimate, the budget and what would fit (fewer inputs,
    a smaller ``k``, one layer group that fits alone, a trace kernel), or that nothing does."""
    C, N = ctx.C, ctx.N1
    s = ctx.dtype.itemsize
    tips = []
    per_input = C * (((ncv(k, R) + 4) * 8) + (P * s if method in ("gram", "dense") else 0))
    fixed = 3 * P * s + min(256, N) * (ctx.act + C) * s * 4
    n_fit = int((budget - fixed) // max(1, per_input))
    if 1 <= n_fit < N:
        tips.append(f"at most {n_fit} inputs")
    k_fit = int(((budget - fixed) // (R * 8) - 4 - 1) // 2)
    if method in ("iterative", "lanczos") and 1 <= k_fit < k:
        tips.append(f"top-k with k <= {k_fit}")
    if len(ctx.groups) > 1:
        ok = [g for g in ctx.groups if _fits_alone(ctx, g, k, requested, budget)]
        if ok:
            tips.append("one layer group (" + ", ".join(repr(g) for g in ok[:4]) + (", ..." if len(ok) > 4 else "") + ")")
    if N * N * s * 3 <= budget:
        tips.append(f"reduction='trace' (an {N}x{N} kernel, {format_bytes(N * N * s)})")
    return (f"top_eigenpairs(N={N}, C={C}, P={P}, k={k}, method={method!r}) needs about "
            f"{format_bytes(need)} but the memory budget is {format_bytes(budget)}; what would fit: "
            + ("; or ".join(tips) if tips else "nothing at this size; raise the budget"))
