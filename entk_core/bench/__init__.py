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
* ``e``, ``f`` -- the engine's cases (:mod:`entk_core.bench.engine`): a CNN's trace and
  full kernels against the Jacobian-contraction reference; the demo MLP's flattened
  top-200 spectrum against a dense float64 reference.

Fast-path times are the best of a few warm runs; reference times are one warm run.
Relative error is ``max|K_fast − K_ref| / max|K_ref|``.

Run ``python -m entk_core.bench`` (table) or ``--json``; ``--cases a,c``; ``--quick``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Callable


__all__ = ["machine_info", "run_bench", "main", "CASE_MODULES"]

CASE_MODULES = ("entk_core.bench.toy", "entk_core.bench.engine", "entk_core.bench.lm")
"""Modules defining cases: each has ``CASES`` (name -> ``fn(dtype, quick) -> dict``) and ``TARGETS``."""
TOL = {"float32": 1e-5, "float64": 1e-10}


def _registry() -> tuple[dict[str, Callable], dict[str, dict[str, float]]]:
    cases: dict[str, Callable] = {}
    targets: dict[str, dict[str, float]] = {}
    for name in CASE_MODULES:
        mod = importlib.import_module(name)
        cases.update(mod.CASES)
        targets.update(getattr(mod, "TARGETS", {}))
    return cases, targets


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


def _child(case: str, dtype_name: str, quick: bool) -> dict[str, Any]:
    import torch

    dtype = getattr(torch, dtype_name)
    t0 = time.perf_counter()
    load0 = list(os.getloadavg())
    res = _registry()[0][case](dtype, quick)
    res.update({"case": case, "dtype": dtype_name, "wall_s": time.perf_counter() - t0,
                "loadavg_before": load0, "loadavg_after": list(os.getloadavg())})
    return res


def _check(res: dict[str, Any]) -> dict[str, bool]:
    t = _registry()[1].get(res["case"], {})
    met = {}
    for key, lim in t.items():
        if key not in res:
            continue
        met[key] = res[key] >= lim if key.startswith("speedup") else res[key] < lim if key == "time_fast" else res[key] <= lim
    met["max_rel_error"] = res["max_rel_error"] <= TOL.get(res["dtype"], 1e-5)
    return met


# --------------------------------------------------------------------------- API
def run_bench(cases=("a", "b", "c", "d", "e", "f"), dtype: str = "float32", progress: Callable | None = None,
              quick: bool = False) -> dict[str, Any]:
    """Run the benchmark cases (each in a child process) and return a JSON-able dict:
    ``{"machine": {...}, "cases": {case: {...}}}``. ``progress(done, total, message)``."""
    if dtype not in TOL:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    cases = [c.strip() for c in (cases.split(",") if isinstance(cases, str) else cases)]
    for c in cases:
        if c not in _registry()[0]:
            raise ValueError(f"unknown case {c!r}; known: {sorted(_registry()[0])}")
    result: dict[str, Any] = {"machine": machine_info(), "dtype": dtype, "quick": quick, "cases": {}}
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
        if "skipped" in res:  # e.g. the LM cases without the Gemma package
            result["cases"][c] = {"case": c, "skipped": res["skipped"]}
            continue
        res["targets"] = _registry()[1].get(c, {})
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
        if "skipped" in r:
            lines.append(f"{c:4} SKIPPED: {r['skipped']}")
            continue
        extra = ""
        if "time_floor" in r:
            extra = f"floor {r['time_floor']:.3f}s (x{r['fast_over_floor']:.2f})"
        if r.get("ref_extrapolated"):
            extra += "ref EXTRAPOLATED"
        if c == "c":
            extra = f"eig top rel.err {r['eig_rel_error_top']:.1e}"
        if r.get("extra"):
            extra = str(r["extra"])
        ok = "yes" if all(r["met"].values()) else "NO " + ",".join(k for k, v in r["met"].items() if not v)
        lines.append(f"{c:4} {r['time_ref']:10.3f} {r['time_fast']:9.3f} {r['speedup']:8.1f} "
                     f"{r['max_rel_error']:9.1e} {r['peak_rss_mb']:8.0f} {extra:<32} {ok}")
        lines.append(f"     {r['description']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m entk_core.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="a,b,c,d,e,f", help="comma-separated cases (default a,b,c,d,e,f)")
    ap.add_argument("--dtype", default="float32", choices=sorted(TOL))
    ap.add_argument("--quick", action="store_true", help="case b: time the reference on subsets and extrapolate; "
                    "case e: N=200; case f: ARPACK reference instead of the dense one")
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
