"""The cost of the spot check (issue 18.3): case ``check`` (see :mod:`entk_core.bench`).

Owned by the engine (``check=`` is :mod:`entk_core.engine.checks`); kept apart from the
other cases' modules. For each of the bench cases a, c, d and e it makes the case's own
library call (the fast path, ``method="auto"``) with ``check=4`` and reads, from that same
call's :class:`~entk_core.engine.info.KernelInfo`, the seconds of the kernel
(``info.seconds``) and of the check (``info.check["seconds"]``): their ratio, measured in one
run, is the check's cost. Three calls per case (``--repeats``), the median ratio reported;
the target is ``check_cost_ratio <= 0.10`` (the worst case). ``--quick``: case e at N = 200.
The models are the cases' models built through the public API: the modadd MLP and
Transformer families' default configs (cases a and d build exactly these), the TMS
family's default config (case c's shapes: m = 10, n = 50, N = 500, sparsity 0.9; its own
seed) and the case-e CNN.
"""
from __future__ import annotations

import statistics
from typing import Any, Callable

from .engine import bench_cnn
from .measure import measure as _measure
from .measure import memory_fields as _memory

__all__ = ["CASES", "TARGETS", "check_cost"]

TARGETS = {"check": {"check_cost_ratio": 0.10}}
K = 4


def check_cost(call: Callable[[], Any], repeats: int = 3) -> dict[str, Any]:
    """``call()`` returns a :class:`KernelInfo` of a call made with ``check=K``: the median
    over ``repeats`` calls of the check's seconds over the kernel's, and the figures."""
    rows = []
    for _ in range(repeats):
        info = call()
        c = info.check
        kernel_s = info.seconds - (c["seconds"] if info.path else 0.0)   # top-k: info.seconds includes the check
        rows.append({"kernel_s": kernel_s, "check_s": c["seconds"], "ratio": c["seconds"] / kernel_s,
                     "max_rel_error": c["max_rel_error"], "tolerance": c["tolerance"], "entries": c["entries"],
                     "dtype": c["dtype"]})
    med = statistics.median(r["ratio"] for r in rows)
    best = min(rows, key=lambda r: abs(r["ratio"] - med))
    return {**best, "ratio": med, "ratios": [r["ratio"] for r in rows]}


def _family(name: str):
    from ..families.base import get_family

    fam = get_family(name)
    cfg = fam.Config()
    return fam.build_model(cfg), fam.make_data(cfg).kernel_x


def _case_check(dtype, quick: bool, device, repeats: int | None = None) -> dict[str, Any]:
    import torch

    from ..engine.eigenpairs import top_eigenpairs
    from ..engine.kernels import empirical_ntk, empirical_ntk_by_layer

    n = repeats or 3
    sub: dict[str, Any] = {}
    # a: modadd MLP, class-traced layerwise kernels, N = 841
    model, x = _family("modadd-mlp")
    model, x = model.to(device=device, dtype=dtype), x.to(device=device, dtype=dtype)
    empirical_ntk_by_layer(model, x[:16], reduction="trace", device=device, check=K)          # warm-up
    sub["a"] = check_cost(lambda: empirical_ntk_by_layer(model, x, reduction="trace", device=device, check=K,
                                                         return_info=True)[1], n)
    # c: TMS, top-80 eigenpairs of the flattened kernel (Gram path), beta = 1
    model, x = _family("tms")
    model, x = model.to(device=device, dtype=dtype), x.to(device=device, dtype=dtype)
    w = torch.tensor([0.8 ** (c / 2) for c in range(x.shape[1])], dtype=dtype, device=device)
    top_eigenpairs(model, 80, x=x, class_weights=w, method="gram", device=device, check=K)
    sub["c"] = check_cost(lambda: top_eigenpairs(model, 80, x=x, class_weights=w, method="gram", device=device,
                                                 check=K, return_info=True)[2], n)
    # d: 1-layer attention, all-class mean kernel, N = 841
    model, x = _family("modadd-transformer")
    model, x = model.to(device=device, dtype=dtype), x.to(device)
    empirical_ntk(model, x, reduction="mean", device=device, check=K)
    sub["d"] = check_cost(lambda: empirical_ntk(model, x, reduction="mean", device=device, check=K,
                                                return_info=True)[1], n)
    # e: CNN, trace and full kernels, N = 1,000 (200 with --quick)
    model = bench_cnn().to(device=device, dtype=dtype)
    N = 200 if quick else 1000
    x = torch.randn(N, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)
    empirical_ntk(model, x[:16], reduction="trace", device=device, check=K)
    for red in ("trace", "full"):
        sub[f"e-{red}"] = check_cost(lambda red=red: empirical_ntk(model, x, reduction=red, device=device, check=K,
                                                                   return_info=True)[1], n)
    mem = _measure(lambda: empirical_ntk(model, x[:64], reduction="trace", device=device, check=K), device=device)
    worst = max(sub, key=lambda c: sub[c]["ratio"])
    kernel = sum(r["kernel_s"] for r in sub.values())
    checks = sum(r["check_s"] for r in sub.values())
    return {
        "description": f"spot check check={K}: its seconds over the call's, same call, on cases a, c, d, e "
                       f"(e at N={N}); median of {n} calls each",
        "cases": sub, "check_cost_ratio": sub[worst]["ratio"], "worst_case": worst,
        "time_fast": checks, "time_ref": kernel, "speedup": kernel / checks,
        "max_rel_error": max(r["max_rel_error"] for r in sub.values()),
        **_memory(mem._replace(out=None)),
        "extra": " ".join(f"{c} {100 * r['ratio']:.1f}%" for c, r in sub.items()),
    }


CASES = {"check": _case_check}
