"""Benchmark of the fast eNTK paths against the reference Jacobian path.

Every case runs in its own child process (so peak memory can be read from
``/proc/self/status`` ``VmHWM``, reset through ``/proc/self/clear_refs`` before each
measured computation) and times the fast path and the reference in the same run:

* ``a`` -- modular-addition MLP (p=29, width 512, 841 inputs): class-traced layerwise
  kernels (``empirical_ntk_by_layer(reduction="trace")``), plus the *floor*: the time
  of the unavoidable final matrix products ``(N, C·width) @ (C·width, N)`` (one per layer,
  with the ``(N, d_in) @ (d_in, N)`` input Gram).
* ``b`` -- same model, full flattened kernel ``(24,389 × 24,389)``. ``--quick`` times the
  reference on two input subsets and extrapolates (``t = αn + βn²``), labelled as such.
* ``c`` -- a toy model of superposition ``y = ReLU(x Wᵀ W + b)`` (W 10×50, N=500 unit-norm
  sparse inputs, C=50, class weights ``0.8^(c·β/2)``, β=1): top-80 eigenpairs of the
  flattened kernel via the Gram trick, against ``scipy.sparse.linalg.eigsh`` on the
  matrix-free operator.
* ``d`` -- 1-layer attention model on 3-token sequences (vocab 30, d_model 64, 4 heads,
  MLP 256, no LayerNorm, no biases), all 841 inputs, all-class-mean kernel.

Fast-path times are the best of a few warm runs; reference times are one warm run.
Relative error is ``max|K_fast − K_ref| / max|K_ref|``.

Run ``python -m entk_core.bench`` (table) or ``--json``; ``--cases a,c``; ``--quick``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable

__all__ = ["machine_info", "run_bench", "main"]

TARGETS = {
    "a": {"speedup": 30.0, "fast_over_floor": 3.0, "peak_rss_mb": 1000.0},
    "b": {"speedup": 30.0},
    "c": {"time_fast": 1.0},
    "d": {"speedup": 5.0},
}
TOL = {"float32": 1e-5, "float64": 1e-10}


# ------------------------------------------------------------------ machine info
def machine_info() -> dict[str, Any]:
    import torch

    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_model": model or platform.processor(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }


# ---------------------------------------------------------------- memory helpers
def _status(field: str) -> float:
    """A ``/proc/self/status`` field in MB (0 when unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _measure(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float, float, float]:
    """Run ``fn`` ``repeats`` times; return (last result, best seconds, peak RSS MB during the
    first run, RSS MB before it)."""
    import gc

    gc.collect()
    base = _status("VmRSS")
    _reset_peak()
    best, out = math.inf, None
    peak = None
    for i in range(repeats):
        out = None
        gc.collect()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
        if peak is None:
            peak = _status("VmHWM")
    return out, best, peak or 0.0, base


def _max_rel_err(A, B) -> float:
    """``max|A − B| / max|B|`` computed in row blocks (no full-size temporary)."""
    A2, B2 = A.reshape(A.shape[0], -1), B.reshape(B.shape[0], -1)
    num = den = 0.0
    step = max(1, (1 << 24) // max(1, A2.shape[1]))
    for i in range(0, A2.shape[0], step):
        a, b = A2[i:i + step].double(), B2[i:i + step].double()
        num = max(num, float((a - b).abs().max()))
        den = max(den, float(b.abs().max()))
    return num / den if den else num


# ------------------------------------------------------------------------ models
def _modadd_mlp():
    from .models import get_family

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

    try:
        from .families.modadd_transformer import ModAddTransformer  # type: ignore

        torch.manual_seed(2)
        model = ModAddTransformer(p, d_model=64, n_heads=4, d_mlp=256)
        source = "entk_core.families.modadd_transformer.ModAddTransformer"
    except ImportError:
        model = _PrivateTransformer(p)
        source = "entk_core.bench._PrivateTransformer (equivalent stand-in)"
    pairs = torch.cartesian_prod(torch.arange(p), torch.arange(p))
    x = torch.cat([pairs, torch.full((p * p, 1), p)], 1)
    return model, x, source


def _private_transformer_cls():
    import torch
    from torch import nn

    class _Pos(nn.Module):
        def __init__(self, T, d):
            super().__init__()
            self.W_pos = nn.Parameter(torch.randn(T, d) / math.sqrt(d))

    class _Attn(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.h = h
            self.W_Q, self.W_K, self.W_V, self.W_O = (nn.Linear(d, d, bias=False) for _ in range(4))

        def forward(self, x):
            B, T, d = x.shape
            dh = d // self.h
            q, k, v = (w(x).view(B, T, self.h, dh).transpose(1, 2) for w in (self.W_Q, self.W_K, self.W_V))
            s = q @ k.transpose(-1, -2) / math.sqrt(dh)
            mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), 1)
            a = torch.softmax(s.masked_fill(mask, float("-inf")), -1)
            return self.W_O((a @ v).transpose(1, 2).reshape(B, T, d))

    class _MLP(nn.Module):
        def __init__(self, d, dm):
            super().__init__()
            self.W_in, self.W_out = nn.Linear(d, dm, bias=False), nn.Linear(dm, d, bias=False)

        def forward(self, x):
            return self.W_out(torch.relu(self.W_in(x)))

    class PrivateTransformer(nn.Module):
        def __init__(self, p, d_model=64, n_heads=4, d_mlp=256):
            super().__init__()
            g = torch.Generator().manual_seed(2)
            torch.manual_seed(2)
            self.embed = nn.Embedding(p + 1, d_model)
            self.pos_embed = _Pos(3, d_model)
            self.attn = _Attn(d_model, n_heads)
            self.mlp = _MLP(d_model, d_mlp)
            self.unembed = nn.Linear(d_model, p + 1, bias=False)
            with torch.no_grad():
                for prm in self.parameters():
                    prm.normal_(0.0, 1.0 / math.sqrt(prm.shape[-1]), generator=g)

        def forward(self, tok):
            x = self.embed(tok) + self.pos_embed.W_pos[: tok.shape[1]]
            x = x + self.attn(x)
            x = x + self.mlp(x)
            return self.unembed(x[:, -1])

    return PrivateTransformer


def _PrivateTransformer(p: int):
    return _private_transformer_cls()(p)


# ------------------------------------------------------------------------- cases
def _case_a(dtype, quick: bool) -> dict[str, Any]:
    import torch

    from .kernels import empirical_ntk_by_layer

    model, x = _modadd_mlp()
    model = model.to(dtype)
    x = x.to(dtype)
    N, C, width, d_in = x.shape[0], model.p, model.width, x.shape[1]

    def fast():
        return empirical_ntk_by_layer(model, x, reduction="trace", method="auto")

    fast()  # warm-up
    Kf, _, peak, base = _measure(fast)
    g = torch.Generator().manual_seed(0)
    G0 = torch.randn(N, C * width, generator=g, dtype=dtype)
    G3 = torch.randn(N, C * C, generator=g, dtype=dtype)
    A0 = torch.randn(N, d_in, generator=g, dtype=dtype)
    A3 = torch.randn(N, width, generator=g, dtype=dtype)

    def floor():
        return (G0 @ G0.T) * (A0 @ A0.T), (G3 @ G3.T) * (A3 @ A3.T)

    floor()
    # interleave fast path and floor so both see the same machine load; best of 5 each
    t_fast = t_floor = math.inf
    for _ in range(5):
        t_floor = min(t_floor, _measure(floor)[1])
        t_fast = min(t_fast, _measure(fast)[1])
    empirical_ntk_by_layer(model, x[:8], reduction="trace", method="jacobian")  # warm-up
    Kr, t_ref, peak_ref, base_ref = _measure(
        lambda: empirical_ntk_by_layer(model, x, reduction="trace", method="jacobian"))
    err = max(_max_rel_err(Kf[g_], Kr[g_]) for g_ in Kr)
    return {
        "description": f"modadd MLP p={C} width {width}: class-traced layerwise kernels, N={N}",
        "shape": [N, N], "groups": list(Kf),
        "time_fast": t_fast, "time_ref": t_ref, "time_floor": t_floor,
        "fast_over_floor": t_fast / t_floor, "speedup": t_ref / t_fast, "max_rel_error": err,
        "peak_rss_mb": peak, "peak_delta_mb": peak - base, "ref_peak_rss_mb": peak_ref,
        "ref_extrapolated": False,
    }


def _case_b(dtype, quick: bool) -> dict[str, Any]:
    from .kernels import empirical_ntk

    model, x = _modadd_mlp()
    model = model.to(dtype)
    x = x.to(dtype)
    N, C = x.shape[0], model.p

    def fast(xs=x):
        return empirical_ntk(model, xs, reduction="flat", method="auto")

    fast(x[:64])  # warm-up
    Kf, t_fast, peak, base = _measure(fast, repeats=2)
    out: dict[str, Any] = {"description": f"modadd MLP p={C} width {model.width}: flattened kernel "
                                          f"({C * N}x{C * N})", "shape": [C * N, C * N]}
    empirical_ntk(model, x[:8], reduction="flat", method="jacobian")  # warm-up
    if quick:
        sizes = (100, 200)
        times = []
        err = 0.0
        Kv = Kf.view(C, N, C, N)
        for n in sizes:
            Kr, t, peak_ref, _ = _measure(lambda n=n: empirical_ntk(model, x[:n], reduction="flat", method="jacobian"))
            times.append(t)
            sub = Kv[:, :n, :, :n].reshape(C * n, C * n)
            err = max(err, _max_rel_err(sub, Kr))
            del Kr
        (n1, n2), (t1, t2) = sizes, times
        beta = max(0.0, (t2 / n2 - t1 / n1) / (n2 - n1))
        alpha = max(0.0, t1 / n1 - beta * n1)
        t_ref = alpha * N + beta * N * N
        out.update({"ref_extrapolated": True, "ref_subset_sizes": list(sizes), "ref_subset_times": times})
    else:
        Kr, t_ref, peak_ref, _ = _measure(lambda: empirical_ntk(model, x, reduction="flat", method="jacobian"))
        err = _max_rel_err(Kf, Kr)
        out["ref_extrapolated"] = False
        del Kr
    out.update({"time_fast": t_fast, "time_ref": t_ref, "speedup": t_ref / t_fast, "max_rel_error": err,
                "peak_rss_mb": peak, "peak_delta_mb": peak - base, "ref_peak_rss_mb": peak_ref})
    return out


def _case_c(dtype, quick: bool) -> dict[str, Any]:
    import numpy as np
    import torch

    from .operators import KernelOperator, flat_top_eigenpairs

    model, x = _tms()
    model = model.to(dtype)
    x = x.to(dtype)
    beta, k = 1.0, 80
    C, N = x.shape[1], x.shape[0]
    w = torch.tensor([0.8 ** (c * beta / 2) for c in range(C)], dtype=dtype)

    def fast():
        return flat_top_eigenpairs(model, x, k, class_weights=w, method="gram")

    fast()
    (vals, vecs), t_fast, peak, base = _measure(fast, repeats=3)

    def ref():
        from scipy.sparse.linalg import eigsh

        op = KernelOperator(model, x, class_weights=w)
        v, V = eigsh(op.as_linear_operator(), k=k, which="LA")
        o = np.argsort(v)[::-1]
        return v[o], V[:, o], op.mode

    (rv, rV, mode), t_ref, peak_ref, _ = _measure(ref)
    rel = np.abs(vals - rv) / np.abs(rv)
    overlap = np.abs(np.sum(vecs * rV, axis=0))
    return {
        "description": f"TMS m=10 n={C}, N={N}, C={C}: top-{k} eigenpairs of the flattened kernel "
                       f"({C * N}x{C * N}), beta={beta}; reference scipy eigsh on the operator ({mode} mode)",
        "shape": [C * N, C * N],
        "time_fast": t_fast, "time_ref": t_ref, "speedup": t_ref / t_fast,
        "max_rel_error": float(rel.max()), "eig_rel_error_top": float(rel[0]),
        "min_vector_overlap": float(overlap.min()), "median_vector_overlap": float(np.median(overlap)),
        "peak_rss_mb": peak, "peak_delta_mb": peak - base, "ref_peak_rss_mb": peak_ref,
        "ref_extrapolated": False,
    }


def _case_d(dtype, quick: bool) -> dict[str, Any]:
    from .kernels import empirical_ntk

    model, x, source = _transformer()
    model = model.to(dtype)

    def fast():
        return empirical_ntk(model, x, reduction="mean", method="auto")

    fast()
    Kf, t_fast, peak, base = _measure(fast, repeats=3)
    empirical_ntk(model, x[:8], reduction="mean", method="jacobian")
    Kr, t_ref, peak_ref, _ = _measure(lambda: empirical_ntk(model, x, reduction="mean", method="jacobian"))
    return {
        "description": f"1-layer attention (vocab 30, d 64, 4 heads, MLP 256), N={x.shape[0]}: "
                       f"all-class mean kernel; model: {source}",
        "shape": list(Kf.shape), "n_params": sum(p.numel() for p in model.parameters()),
        "time_fast": t_fast, "time_ref": t_ref, "speedup": t_ref / t_fast,
        "max_rel_error": _max_rel_err(Kf, Kr),
        "peak_rss_mb": peak, "peak_delta_mb": peak - base, "ref_peak_rss_mb": peak_ref,
        "ref_extrapolated": False,
    }


_CASES = {"a": _case_a, "b": _case_b, "c": _case_c, "d": _case_d}


def _child(case: str, dtype_name: str, quick: bool) -> dict[str, Any]:
    import torch

    dtype = getattr(torch, dtype_name)
    t0 = time.perf_counter()
    load0 = list(os.getloadavg())
    res = _CASES[case](dtype, quick)
    res.update({"case": case, "dtype": dtype_name, "wall_s": time.perf_counter() - t0,
                "loadavg_before": load0, "loadavg_after": list(os.getloadavg())})
    return res


def _check(res: dict[str, Any]) -> dict[str, bool]:
    t = TARGETS.get(res["case"], {})
    met = {}
    for key, lim in t.items():
        if key not in res:
            continue
        met[key] = res[key] >= lim if key == "speedup" else res[key] < lim if key == "time_fast" else res[key] <= lim
    met["max_rel_error"] = res["max_rel_error"] <= TOL.get(res["dtype"], 1e-5)
    return met


# --------------------------------------------------------------------------- API
def run_bench(cases=("a", "b", "c", "d"), dtype: str = "float32", progress: Callable | None = None,
              quick: bool = False) -> dict[str, Any]:
    """Run the benchmark cases (each in a child process) and return a JSON-able dict:
    ``{"machine": {...}, "cases": {case: {...}}}``. ``progress(done, total, message)``."""
    if dtype not in TOL:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    cases = [c.strip() for c in (cases.split(",") if isinstance(cases, str) else cases)]
    for c in cases:
        if c not in _CASES:
            raise ValueError(f"unknown case {c!r}; known: {sorted(_CASES)}")
    result: dict[str, Any] = {"machine": machine_info(), "dtype": dtype, "quick": quick, "cases": {}}
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for i, c in enumerate(cases):
        if progress:
            progress(i, len(cases), f"case {c}")
        cmd = [sys.executable, "-m", "entk_core.bench", "--_child", c, "--dtype", dtype] + (["--quick"] if quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            result["cases"][c] = {"case": c, "error": (proc.stderr or proc.stdout).strip().splitlines()[-5:]}
            continue
        res = json.loads(lines[-1])
        res["targets"] = TARGETS.get(c, {})
        res["met"] = _check(res)
        result["cases"][c] = res
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    if progress:
        progress(len(cases), len(cases), "done")
    return result


def format_table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"machine: {m['cpu_model']}, {m['usable_cores']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), loadavg start {m['loadavg_start'][0]:.2f} end {m['loadavg_end'][0]:.2f}",
        f"dtype {result['dtype']}{' (quick)' if result['quick'] else ''}",
        f"{'case':4} {'t_ref s':>10} {'t_fast s':>9} {'speedup':>8} {'rel.err':>9} {'peak MB':>8} {'extra':<32} met",
    ]
    for c, r in result["cases"].items():
        if "error" in r:
            lines.append(f"{c:4} ERROR: {' | '.join(r['error'])}")
            continue
        extra = ""
        if "time_floor" in r:
            extra = f"floor {r['time_floor']:.3f}s (x{r['fast_over_floor']:.2f})"
        if r.get("ref_extrapolated"):
            extra += "ref EXTRAPOLATED"
        if c == "c":
            extra = f"eig top rel.err {r['eig_rel_error_top']:.1e}"
        ok = "yes" if all(r["met"].values()) else "NO " + ",".join(k for k, v in r["met"].items() if not v)
        lines.append(f"{c:4} {r['time_ref']:10.3f} {r['time_fast']:9.3f} {r['speedup']:8.1f} "
                     f"{r['max_rel_error']:9.1e} {r['peak_rss_mb']:8.0f} {extra:<32} {ok}")
        lines.append(f"     {r['description']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m entk_core.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="a,b,c,d", help="comma-separated cases (default a,b,c,d)")
    ap.add_argument("--dtype", default="float32", choices=sorted(TOL))
    ap.add_argument("--quick", action="store_true", help="case b: time the reference on subsets and extrapolate")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        print(json.dumps(_child(args._child, args.dtype, args.quick)))
        return 0

    def prog(done, total, msg):
        print(f"[{done}/{total}] {msg}", file=sys.stderr, flush=True)

    res = run_bench(args.cases, args.dtype, progress=prog, quick=args.quick)
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0 if all("error" not in r for r in res["cases"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
