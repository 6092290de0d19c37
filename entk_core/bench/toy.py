"""Benchmark cases on the toy models (paper §3-§5): a, b, c, d (see :mod:`entk_core.bench`)."""
from __future__ import annotations

import math
from typing import Any

from .measure import compare as _compare
from .measure import max_rel_err as _max_rel_err
from .measure import memory_fields as _memory

__all__ = ["CASES", "TARGETS", "REPEATS"]

TARGETS = {
    "a": {"speedup": 30.0, "fast_over_floor": 3.0, "peak_rss_mb": 1000.0},
    "b": {"speedup": 30.0},
    "c": {"time_fast": 1.0},
    "d": {"speedup": 5.0},
}


# ------------------------------------------------------------------------ models
def _modadd_mlp():
    from ..families.base import get_family

    fam = get_family("modadd-mlp")
    cfg = fam.Config()
    return fam.build_model(cfg), fam.make_data(cfg).kernel_x


def _tms(m: int = 10, n: int = 50, N: int = 500, S: float = 0.9, seed: int = 0):
    import torch
    from torch import nn

    class _ReluModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.empty(m, n))
            self.b = nn.Parameter(torch.zeros(n))

        def forward(self, x):
            return torch.relu(x @ self.W.T @ self.W + self.b)

    g = torch.Generator().manual_seed(seed)
    model = _ReluModel()
    with torch.no_grad():
        model.W.normal_(0.0, math.sqrt(2.0 / (m + n)), generator=g)
        model.b.normal_(0.0, 0.05, generator=g)
    x = torch.rand(N, n, generator=g) * (torch.rand(N, n, generator=g) >= S)
    empty = x.abs().sum(1) == 0
    x[empty, torch.randint(0, n, (int(empty.sum()),), generator=g)] = 1.0
    x = x / (x.norm(dim=1, keepdim=True) + 1e-8)
    return model, x


def _transformer(p: int = 29):
    import torch

    from ..families.modadd_transformer import ModAddTransformer

    torch.manual_seed(2)
    model = ModAddTransformer(p, d_model=64, n_heads=4, d_mlp=256)
    pairs = torch.cartesian_prod(torch.arange(p), torch.arange(p))
    x = torch.cat([pairs, torch.full((p * p, 1), p)], 1)
    return model, x


# ------------------------------------------------------------------------- cases
# Each case is ``fn(dtype, quick, device, repeats)``: the model and inputs are moved to
# ``device`` (a torch.device), the library calls get ``device=``, the reference (the PyTorch
# NTK tutorial's Jacobian contraction, :mod:`entk_core.bench.reference`) runs there too.
# Both sides get the same warm-up (the same call on 8 inputs) and are timed the same way
# (:func:`entk_core.bench.measure.compare`: ``repeats`` interleaved rounds, best of them).
REPEATS = {"a": 3, "b": 1, "c": 3, "d": 3}


def _sides(res: dict, fast: str = "fast", ref: str = "ref") -> dict[str, Any]:
    f, r = res[fast], res[ref]
    return {"time_fast": f.seconds, "time_ref": r.seconds, "speedup": r.seconds / f.seconds,
            "times_fast": f.times, "times_ref": r.times, "median_fast": f.median, "median_ref": r.median,
            "statistic": f"best of {len(f.times)} interleaved rounds, same warm-up, both sides",
            **_memory(f, r), "ref_peak_delta_mb": r.peak_rss_mb - r.base_rss_mb}


def _case_a(dtype, quick: bool, device, repeats: int | None = None) -> dict[str, Any]:
    import torch

    from ..engine.kernels import empirical_ntk_by_layer
    from .reference import check_reference, tutorial_ntk

    model, x = _modadd_mlp()
    model = model.to(device=device, dtype=dtype)
    x = x.to(device=device, dtype=dtype)
    N, C, width, d_in = x.shape[0], model.p, model.width, x.shape[1]
    g = torch.Generator().manual_seed(0)  # drawn on the CPU (the same numbers on every device), then moved
    G0 = torch.randn(N, C * width, generator=g, dtype=dtype).to(device)
    G3 = torch.randn(N, C * C, generator=g, dtype=dtype).to(device)
    A0 = torch.randn(N, d_in, generator=g, dtype=dtype).to(device)
    A3 = torch.randn(N, width, generator=g, dtype=dtype).to(device)

    def fast(xs=x):
        return empirical_ntk_by_layer(model, xs, reduction="trace", method="auto", device=device)

    def ref(xs=x):
        return tutorial_ntk(model, xs, reduction="trace", by_layer=True)

    def floor():
        return (G0 @ G0.T) * (A0 @ A0.T), (G3 @ G3.T) * (A3 @ A3.T)

    res = _compare({"fast": fast, "ref": ref, "floor": floor}, repeats or REPEATS["a"], device,
                   warmup={"fast": lambda: fast(x[:8]), "ref": lambda: ref(x[:8]), "floor": floor})
    Kf, Kr = res["fast"].out, res["ref"].out
    err = max(_max_rel_err(Kf[g_], Kr[g_]) for g_ in Kr)
    t_fast, t_floor = res["fast"].seconds, res["floor"].seconds
    return {
        "description": f"modadd MLP p={C} width {width}: class-traced layerwise kernels, N={N}; reference: the "
                       "PyTorch NTK tutorial's vmap(jacrev) contraction (trace, per layer)",
        "shape": [N, N], "groups": list(Kf), **_sides(res),
        "time_floor": t_floor, "fast_over_floor": t_fast / t_floor, "max_rel_error": err,
        "ref_check_rel_error_f64": check_reference(model, x, reduction="trace", by_layer=True),
        "ref_extrapolated": False,
    }


def _case_b(dtype, quick: bool, device, repeats: int | None = None) -> dict[str, Any]:
    from ..engine.kernels import empirical_ntk
    from .reference import check_reference, tutorial_ntk

    model, x = _modadd_mlp()
    model = model.to(device=device, dtype=dtype)
    x = x.to(device=device, dtype=dtype)
    N, C = x.shape[0], model.p

    def fast(xs=x):
        return empirical_ntk(model, xs, reduction="flat", method="auto", device=device)

    def ref(xs=x):  # per_param: the largest parameter's Jacobian at a time (2.9 GB, not 4.4 GB)
        return tutorial_ntk(model, xs, reduction="flat", per_param=True)

    out: dict[str, Any] = {"description": f"modadd MLP p={C} width {model.width}: flattened kernel "
                                          f"({C * N}x{C * N}); reference: the PyTorch NTK tutorial's vmap(jacrev) "
                                          "contraction", "shape": [C * N, C * N],
                           "ref_check_rel_error_f64": check_reference(model, x, reduction="flat")}
    warm = {"fast": lambda: fast(x[:8]), "ref": lambda: ref(x[:8])}
    if quick:  # both sides on two subsets; the full-size times extrapolated by t = αn + βn² (labelled)
        sizes, err, times = (100, 200), 0.0, {"fast": [], "ref": []}
        for n in sizes:
            res = _compare({"fast": lambda n=n: fast(x[:n]), "ref": lambda n=n: ref(x[:n])},
                           repeats or REPEATS["b"], device, warmup=warm)
            warm = None
            err = max(err, _max_rel_err(res["fast"].out, res["ref"].out))
            for k in times:
                times[k].append(res[k].seconds)
        (n1, n2) = sizes
        ext = {}
        for k, (t1, t2) in times.items():
            beta = max(0.0, (t2 / n2 - t1 / n1) / (n2 - n1))
            ext[k] = max(0.0, t1 / n1 - beta * n1) * N + beta * N * N
        out.update({"ref_extrapolated": True, "ref_subset_sizes": list(sizes), "subset_times": times,
                    "time_fast": ext["fast"], "time_ref": ext["ref"], "speedup": ext["ref"] / ext["fast"],
                    "max_rel_error": err, **_memory(res["fast"], res["ref"]),
                    "statistic": "extrapolated from two subsets, same warm-up, both sides"})
        return out
    res = _compare({"fast": fast, "ref": ref}, repeats or REPEATS["b"], device, warmup=warm)
    out.update({**_sides(res), "max_rel_error": _max_rel_err(res["fast"].out, res["ref"].out),
                "ref_extrapolated": False})
    return out


def _case_c(dtype, quick: bool, device, repeats: int | None = None) -> dict[str, Any]:
    import numpy as np
    import torch

    from ..engine.eigenpairs import top_eigenpairs
    from .reference import check_reference, tutorial_flat_operator

    model, x = _tms()
    model = model.to(device=device, dtype=dtype)
    x = x.to(device=device, dtype=dtype)
    beta, k = 1.0, 80
    C, N = x.shape[1], x.shape[0]
    w = torch.tensor([0.8 ** (c * beta / 2) for c in range(C)], dtype=dtype, device=device)

    def fast(xs=x, k=k):
        return top_eigenpairs(model, k, x=xs, class_weights=w, method="gram", device=device)

    def ref(xs=x, k=k):
        from scipy.sparse.linalg import eigsh

        v, V = eigsh(tutorial_flat_operator(model, xs, weights=w), k=k, which="LA")
        o = np.argsort(v)[::-1]
        return v[o], V[:, o]

    res = _compare({"fast": fast, "ref": ref}, repeats or REPEATS["c"], device,
                   warmup={"fast": lambda: fast(x[:8], 4), "ref": lambda: ref(x[:8], 4)})
    (vals, vecs), (rv, rV) = res["fast"].out, res["ref"].out
    rel = np.abs(vals - rv) / np.abs(rv)
    overlap = np.abs(np.sum(vecs * rV, axis=0))
    return {
        "description": f"TMS m=10 n={C}, N={N}, C={C}: top-{k} eigenpairs of the flattened kernel "
                       f"({C * N}x{C * N}), beta={beta}; reference: scipy eigsh on J(Jᵀv) with J the PyTorch NTK "
                       "tutorial's vmap(jacrev) Jacobian",
        "shape": [C * N, C * N], **_sides(res),
        "max_rel_error": float(rel.max()), "eig_rel_error_top": float(rel[0]),
        "min_vector_overlap": float(overlap.min()), "median_vector_overlap": float(np.median(overlap)),
        "ref_check_rel_error_f64": check_reference(model, x, reduction="flat", weights=w),
        "ref_extrapolated": False,
    }


def _case_d(dtype, quick: bool, device, repeats: int | None = None) -> dict[str, Any]:
    from ..engine.kernels import empirical_ntk
    from .reference import check_reference, tutorial_ntk

    model, x = _transformer()
    model = model.to(device=device, dtype=dtype)
    x = x.to(device)  # token ids: integer, only moved

    def fast(xs=x):
        return empirical_ntk(model, xs, reduction="mean", method="auto", device=device)

    def ref(xs=x):
        return tutorial_ntk(model, xs, reduction="mean")

    res = _compare({"fast": fast, "ref": ref}, repeats or REPEATS["d"], device,
                   warmup={"fast": lambda: fast(x[:8]), "ref": lambda: ref(x[:8])})
    Kf, Kr = res["fast"].out, res["ref"].out
    return {
        "description": f"1-layer attention (vocab 30, d 64, 4 heads, MLP 256), N={x.shape[0]}: "
                       "all-class mean kernel; model: entk_core.families.modadd_transformer.ModAddTransformer; "
                       "reference: the PyTorch NTK tutorial's vmap(jacrev) contraction of mean_c f_c",
        "shape": list(Kf.shape), "n_params": sum(p.numel() for p in model.parameters()), **_sides(res),
        "max_rel_error": _max_rel_err(Kf, Kr),
        "ref_check_rel_error_f64": check_reference(model, x, reduction="mean"),
        "ref_extrapolated": False,
    }


CASES = {"a": _case_a, "b": _case_b, "c": _case_c, "d": _case_d}

tms_model = _tms
"""Case c's toy model of superposition and inputs: ``tms_model(m, n, N, S, seed) -> (model, x)``."""
attention_model = _transformer
"""Case d's 1-layer attention model and its 841 sequences: ``attention_model(p) -> (model, x)``."""
