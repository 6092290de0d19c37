"""entk_core side by side with the PyTorch libraries a researcher would otherwise use.

``python -m entk_core bench --peers [--cases ...] [--libs ...] [--json]`` (also
``python benchmarks/bench_peers.py``) installs nothing: it times each library that is
importable in this environment, in the same process per case (one child process per case,
the libraries one after the other, each after the same warm-up on 8 inputs), and reports
per case and library the seconds, the peak host memory (VmHWM, reset before the call; also
the rise over the memory held before it) and the max relative error against a float64
reference.

Libraries (each used the way its documentation computes an NTK / Gram matrix /
per-sample gradients):

* ``entk_core`` -- ``empirical_ntk(model, x, reduction=..., method="auto")``.
* ``torch.func`` -- the PyTorch NTK tutorial's Jacobian contraction
  (:func:`entk_core.bench.reference.tutorial_ntk`; tiled over example chunks when the whole
  Jacobian would not fit ``--max-mem-gb``).
* ``nngeometry`` (0.4) -- ``nngeometry.gram.GramMatrix(model, loader)`` (its
  ``TorchHooksJacobianBackend``, an ``FMatDense`` of shape ``(C, N, C, N)``); the trace
  kernel is its diagonal mean (nngeometry computes the full kernel either way).
* ``asdl`` (``asdfghjkl`` 0.1a5) -- trace: ``asdl.kernel.batch(empirical_class_wise_direct_ntk,
  model, x, batch_size=N)`` (its structured class-wise kernel ``(N, N, C)``, averaged over
  ``C``); full: its per-sample gradients (``with extend(model, OP_BATCH_GRADS) as cxt``, one
  backward per class, ``cxt.full_batch_grads(model)``) contracted like ``torch.func``
  (its own ``empirical_direct_ntk`` fails in 0.1a5: it reads ``module.operation``, which
  ``extend`` no longer sets, and raises ``torch.cat(): expected a non-empty list``).
* ``backpack`` (``backpack-for-pytorch`` 1.7.1) -- per-sample gradients by
  ``with backpack(BatchGrad()): out[:, c].sum().backward()`` for each output ``c`` on an
  ``extend``-ed model; trace kernel ``Σ_c G_c G_cᵀ / C`` accumulated class by class, full
  kernel by contracting the per-class gradients (tiled like ``torch.func``).

Error: ``max|K − K64| / max|K64|`` over a fixed set of 48 rows (all columns; all rows when
N ≤ 48) of the float64 kernel by the tutorial recipe on a float64 copy of the model (itself
checked against brute force in the unit tests). A library that cannot run a case (an
unsupported layer, an import error, a request over ``--max-mem-gb`` or, by its flop count
at the measured GEMM rate, over ``--max-seconds``) is reported with the reason, not run.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import math
import os
import time
import warnings
from typing import Any, Callable

from ._runner import Timeout, cli, command_line, common_args, one_line, run_children, split_names, table_head, table_rows, time_limit

__all__ = ["CASES", "LIBS", "peer_status", "run_case", "run_peers", "format_table", "main"]

CASES = {
    "mlp-paper-trace": ("mlp-paper", "trace"), "mlp-paper-full": ("mlp-paper", "full"),
    "cnn-trace": ("cnn", "trace"), "cnn-full": ("cnn", "full"),
    "mlp784-trace": ("mlp784", "trace"), "mlp784-full": ("mlp784", "full"),
    "vit-trace": ("vit", "trace"), "vit-full": ("vit", "full"),
}
LIBS = ("entk_core", "torch.func", "nngeometry", "asdl", "backpack")
PACKAGES = {"nngeometry": "nngeometry", "asdl": "asdfghjkl", "backpack": "backpack-for-pytorch"}
ERR_ROWS = 48


def peer_status() -> dict[str, str]:
    """``{library: "ok <version>" | "not installed: <the import error>"}`` (imports nothing twice)."""
    from importlib import metadata

    out = {"entk_core": "ok", "torch.func": "ok"}
    for lib, pkg in PACKAGES.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(lib)
            out[lib] = f"ok {metadata.version(pkg)}"
        except Exception as e:  # noqa: BLE001 - any import failure is the reason reported
            out[lib] = f"not installed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return out


# ------------------------------------------------------------------ Jacobian tiling
def _tiled(jac: Callable, x, reduction: str, chunk: int):
    """``Σ`` over chunk pairs of ``einsum`` of per-example Jacobians ``jac(xs) -> (B, C, P)``
    (recomputed per tile when not all chunks are held): ``(N, N)`` trace or ``(N, N, C, C)``."""
    import torch

    N = x.shape[0]
    starts = list(range(0, N, chunk))
    hold = len(starts) == 1
    J0 = jac(x[:chunk])
    C = J0.shape[1]
    K = torch.zeros((N, N) if reduction == "trace" else (N, N, C, C), dtype=J0.dtype)
    for i in starts:
        Ji = J0 if i == 0 else jac(x[i:i + chunk])
        for j in starts:
            if j < i:
                continue
            Jj = Ji if j == i else jac(x[j:j + chunk])
            if reduction == "trace":
                blk = torch.einsum("Naf,Maf->NM", Ji, Jj) / C
                K[i:i + chunk, j:j + chunk] = blk
                K[j:j + chunk, i:i + chunk] = blk.T
            else:
                blk = torch.einsum("Naf,Mbf->NMab", Ji, Jj)
                K[i:i + chunk, j:j + chunk] = blk
                K[j:j + chunk, i:i + chunk] = blk.permute(1, 0, 3, 2)
            del Jj
        if hold:
            break
    return K


def _chunk_for(N: int, C: int, P: int, budget: float, copies: int = 2) -> int:
    """Examples per Jacobian chunk so that ``copies`` chunks of ``(B, C, P)`` float32 fit ``budget`` bytes."""
    return max(1, min(N, int(budget / (copies * C * P * 4))))


# ------------------------------------------------------------------ adapters
def _entk_core(model, x, reduction, budget):
    from ..engine.kernels import empirical_ntk

    K, info = empirical_ntk(model, x, reduction=reduction, method="auto", return_info=True)
    return K, {"path": f"{info.method}/{info.layout}"}


def _torch_func(model, x, reduction, budget):
    from .reference import tutorial_jacobian, tutorial_ntk

    N, C, P = x.shape[0], _C(model, x), _P(model)
    if 2 * N * C * P * 4 <= budget:  # the tutorial as written: all Jacobians at once
        return tutorial_ntk(model, x, reduction=reduction), {"tiles": 1}
    import torch

    def jac(xs):
        return torch.cat(list(tutorial_jacobian(model, xs).values()), 2)

    chunk = _chunk_for(N, C, P, budget)
    return _tiled(jac, x, reduction, chunk), {"chunk": chunk}


def _nngeometry(model, x, reduction, budget):
    import torch
    from nngeometry.gram import GramMatrix
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(x), batch_size=x.shape[0])
    K = GramMatrix(model, loader).to_torch()      # (C, N, C, N)
    if reduction == "trace":
        return torch.diagonal(K, dim1=0, dim2=2).mean(-1), {}
    return K.permute(1, 3, 0, 2), {}


def _asdl(model, x, reduction, budget):
    import torch
    from asdl.core import extend
    from asdl.kernel import batch, empirical_class_wise_direct_ntk
    from asdl.operations import OP_BATCH_GRADS

    N, C, P = x.shape[0], _C(model, x), _P(model)
    if reduction == "trace":  # ASDL's structured class-wise kernel: (N, N, C)
        return batch(empirical_class_wise_direct_ntk, model, x, batch_size=N).mean(-1), {"batch_size": N}

    # full: ASDL's per-sample gradients (OP_BATCH_GRADS, full_batch_grads), one backward per class;
    # its own empirical_direct_ntk fails in 0.1a5 (it reads module.operation, which extend() no longer sets)
    def jac(xs):
        with extend(model, OP_BATCH_GRADS) as cxt:
            out = model(xs)
            Gs = []
            for c in range(out.shape[1]):
                cxt.clear_batch_grads()
                out[:, c].sum().backward(retain_graph=c < out.shape[1] - 1)
                Gs.append(cxt.full_batch_grads(model))
        return torch.stack(Gs, 1)                             # (B, C, P)

    chunk = _chunk_for(N, C, P, budget)
    return _tiled(jac, x, reduction, chunk), {"chunk": chunk}


def _backpack(model, x, reduction, budget):
    import torch
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad

    m = extend(model)
    params = [p for p in m.parameters() if p.requires_grad]
    N, C, P = x.shape[0], _C(model, x), _P(model)

    def per_class(xs):
        out = m(xs)
        for c in range(out.shape[1]):
            m.zero_grad()
            last = c == out.shape[1] - 1
            with backpack(BatchGrad(), retain_graph=not last):
                out[:, c].sum().backward(retain_graph=not last)
            yield torch.cat([p.grad_batch.reshape(xs.shape[0], -1) for p in params], 1)   # (B, P)

    if reduction == "trace":  # no Jacobian held: Σ_c G_c G_cᵀ
        K = torch.zeros(N, N, dtype=x.dtype)
        for G in per_class(x):
            K += G @ G.T
        return K / C, {}

    def jac(xs):
        return torch.stack(list(per_class(xs)), 1)          # (B, C, P)

    chunk = _chunk_for(N, C, P, budget)
    return _tiled(jac, x, reduction, chunk), {"chunk": chunk}


ADAPTERS = {"entk_core": _entk_core, "torch.func": _torch_func, "nngeometry": _nngeometry, "asdl": _asdl,
            "backpack": _backpack}


def _C(model, x) -> int:
    import torch

    with torch.no_grad():
        return int(model(x[:1]).reshape(1, -1).shape[1])


def _P(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ cost model (refusals, floors)
def jacobian_flops(N: int, C: int, P: int, reduction: str) -> float:
    """Flops of the Jacobian contraction's final products: ``2·N²·C·P`` (trace), ``2·(N·C)²·P`` (full)."""
    return 2.0 * N * N * C * P * (C if reduction == "full" else 1)


def _gemm_rate() -> float:
    """Measured float32 GEMM flop rate of this process (a 1024² product, best of 3)."""
    import torch

    a = torch.randn(1024, 1024)
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * 1024 ** 3 / best


def _refusal(lib: str, N: int, C: int, P: int, reduction: str, rate: float, max_s: float) -> str | None:
    """The reason a Jacobian-contraction library is not run, or ``None``."""
    if lib in ("torch.func", "backpack") or (lib == "asdl" and reduction == "full"):
        fl = jacobian_flops(N, C, P, reduction)
        if fl / rate > max_s:
            return (f"not run: its Jacobian contraction needs {fl:.2g} flops, ~{fl / rate:.0f} s at this machine's "
                    f"measured GEMM rate ({rate / 1e9:.0f} GFLOP/s), over --max-seconds {max_s:g}")
    return None


# ------------------------------------------------------------------ one case (child process)
def _reference_rows(model, x, reduction: str, rows):
    """Float64 kernel rows ``rows`` × all columns by the tutorial recipe (column chunks, one parameter at a time)."""
    import torch

    from .reference import tutorial_ntk

    m = copy.deepcopy(model).double().eval()
    xd = x.double() if x.is_floating_point() else x
    C, P = _C(model, x), max(p.numel() for p in model.parameters())
    step = max(8, int(1.0e9 / (C * P * 8)))
    parts = [tutorial_ntk(m, xd[rows], xd[j:j + step], reduction=reduction, per_param=True)
             for j in range(0, x.shape[0], step)]
    return torch.cat(parts, 1)


def run_case(case: str, libs=LIBS, repeats: int = 1, max_seconds: float = 900.0, max_mem_gb: float = 8.0,
             n: int | None = None) -> dict[str, Any]:
    """Run one case (``CASES``) for ``libs`` in this process; return its JSON-able record."""
    import gc

    import torch

    from .measure import load_fields, max_rel_err, measure
    from .models import build

    name, reduction = CASES[case]
    model, x = build(name, n)
    N, C, P = x.shape[0], _C(model, x), _P(model)
    budget = max_mem_gb * 2 ** 30
    rows = torch.arange(N) if N <= ERR_ROWS else torch.randperm(N, generator=torch.Generator().manual_seed(0))[:ERR_ROWS]
    t0 = time.perf_counter()
    Kref = _reference_rows(model, x, reduction, rows)
    rec: dict[str, Any] = {"case": case, "model": name, "reduction": reduction, "N": N, "C": C, "P": P,
                           "torch_threads": torch.get_num_threads(),
                           "error_rows": int(rows.numel()), "reference_s": time.perf_counter() - t0,
                           "flops_jacobian_contraction": jacobian_flops(N, C, P, reduction),
                           "load_before": load_fields(), "libs": {}}
    status = peer_status()
    rate = _gemm_rate()
    rec["gemm_gflops"] = rate / 1e9
    for lib in libs:
        r: dict[str, Any] = {}
        rec["libs"][lib] = r
        if not status[lib].startswith("ok"):
            r["skipped"] = status[lib]
            continue
        why = _refusal(lib, N, C, P, reduction, rate, max_seconds)
        if why:
            r["skipped"] = why
            continue
        fn = ADAPTERS[lib]
        lm = copy.deepcopy(model)  # BackPACK / ASDL attach hooks or attributes: each library its own copy
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fn(lm, x[:8], reduction, budget)                   # the same warm-up for every library
                times, out, extra, mem = [], None, {}, None
                for i in range(repeats):
                    with time_limit(max_seconds):
                        mm = measure(lambda lm=lm: fn(lm, x, reduction, budget))
                    times.append(mm.seconds)
                    if i == 0:
                        (out, extra), mem = mm.out, mm
                    del mm
            r.update({"seconds": min(times), "times": times, "peak_rss_mb": mem.peak_rss_mb,
                      "peak_delta_mb": mem.peak_rss_mb - mem.base_rss_mb, **extra})
            K = out
            r["max_rel_error"] = max_rel_err(K[rows], Kref)
            w = sorted({str(c.message).splitlines()[0][:160] for c in caught})
            if w:
                r["warnings"] = w[:5]
        except Timeout as e:
            r["skipped"] = str(e)
        except Exception as e:  # noqa: BLE001 - a library failing on a model is a result to report
            r["failed"] = one_line(e)
        out = K = None
        del lm
        gc.collect()
    rec["load_after"] = load_fields()
    rec["wall_s"] = time.perf_counter() - t0
    ran = {k: v for k, v in rec["libs"].items() if "seconds" in v and k != "entk_core"}
    if "seconds" in rec["libs"].get("entk_core", {}) and ran:
        best = min(ran, key=lambda k: ran[k]["seconds"])
        rec["best_peer"] = best
        rec["entk_core_speedup_vs_best_peer"] = ran[best]["seconds"] / rec["libs"]["entk_core"]["seconds"]
    return rec


# ------------------------------------------------------------------ driver
def run_peers(cases=tuple(CASES), libs=LIBS, repeats: int = 1, max_seconds: float = 900.0,
              max_mem_gb: float = 8.0, n: int | None = None, progress: Callable | None = None,
              threads: int | None = None) -> dict[str, Any]:
    """Every case in a child process of its own; ``{"machine", "peers", "settings", "cases"}``."""
    from .measure import machine_info

    cases = split_names(cases, CASES, "case")
    libs = split_names(libs, LIBS, "library")
    args = ["--libs", ",".join(libs), "--repeats", str(repeats), "--max-seconds", str(max_seconds),
            "--max-mem-gb", str(max_mem_gb)] + (["--n", str(n)] if n else [])
    args += ["--threads", str(threads)] if threads else []
    result = {"machine": machine_info("cpu"), "peers": peer_status(),
              "settings": {"repeats": repeats, "max_seconds": max_seconds, "max_mem_gb": max_mem_gb, "n": n,
                           "threads": threads,
                           "libs": libs, "statistic": f"best of {repeats} after the same 8-input warm-up"},
              "command": command_line(), "cases": run_children("entk_core.bench.peers", cases, args, progress)}
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    return result


def _lib_row(c: str, lib: str, r: dict) -> str:
    if "seconds" in r:
        note = r.get("path", "") or ", ".join(f"{k} {r[k]}" for k in ("batch_size", "chunk") if k in r)
        return (f"{c:16} {lib:11} {r['seconds']:9.2f} {r['peak_rss_mb']:8.0f} {r['peak_delta_mb']:7.0f} "
                f"{r['max_rel_error']:9.1e}  {note}")
    return f"{c:16} {lib:11} {'-':>9} {'-':>8} {'-':>7} {'-':>9}  {r.get('skipped') or r.get('failed')}"


def _best_line(rec: dict) -> str | None:
    if "entk_core_speedup_vs_best_peer" not in rec:
        return None
    return f"{'':16} entk_core vs best peer ({rec['best_peer']}): {rec['entk_core_speedup_vs_best_peer']:.2f}x"


def format_table(result: dict[str, Any]) -> str:
    lines = table_head(result, "peers: " + "; ".join(f"{k} {v}" for k, v in result["peers"].items()),
                       f"{'case':16} {'library':11} {'seconds':>9} {'peak MB':>8} {'+MB':>7} {'rel.err':>9}  note")
    return "\n".join(lines + table_rows(result, "libs", _lib_row, _best_line))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m entk_core bench --peers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated (default all: {', '.join(CASES)})")
    ap.add_argument("--libs", default=",".join(LIBS), help=f"comma-separated (default all: {', '.join(LIBS)})")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per library, best kept (default 1)")
    ap.add_argument("--max-seconds", type=float, default=900.0,
                    help="a library whose Jacobian contraction would take longer (by its flop count) is not run; "
                         "one that runs longer is stopped (default 900)")
    ap.add_argument("--max-mem-gb", type=float, default=8.0,
                    help="memory the Jacobian-holding libraries may use; they tile to fit (default 8)")
    common_args(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    return cli(a, lambda: run_case(a._child, a.libs.split(","), a.repeats, a.max_seconds, a.max_mem_gb, a.n),
               lambda progress: run_peers(a.cases, a.libs, a.repeats, a.max_seconds, a.max_mem_gb, a.n, progress,
                                          a.threads),
               format_table)


if __name__ == "__main__":
    raise SystemExit(main())
