"""Benchmark of the fast eNTK paths against the reference, the PyTorch NTK tutorial.

The reference of cases a-e is the tutorial's Jacobian contraction written in the bench
itself (:mod:`entk_core.bench.reference`: ``functional_call`` + ``vmap(jacrev)`` +
``einsum`` per parameter, summed), never the library's own path; once per case it is
checked against a float64 brute-force kernel (one ``autograd.grad`` per example and
channel) on a few inputs (``ref_check_rel_error_f64``). Every case runs in its own child
process (so peak memory can be read from ``/proc/self/status`` ``VmHWM``, reset through
``/proc/self/clear_refs`` before each measured computation) and times the fast path and
the reference the same way (:func:`entk_core.bench.measure.compare`): the same warm-up (the
same call on 8 inputs), then ``--repeats`` rounds (default 3; case b 1) in which each side
runs once, alternating the order, the statistic the best round of each (medians kept):

* ``a`` -- modular-addition MLP (p=29, width 512, 841 inputs): class-traced layerwise
  kernels (``empirical_ntk_by_layer(reduction="trace")``), plus the *floor*: the time
  of the unavoidable final matrix products ``(N, C·width) @ (C·width, N)`` (one per layer,
  with the ``(N, d_in) @ (d_in, N)`` input Gram), timed in the same rounds.
* ``b`` -- same model, full flattened kernel ``(24,389 × 24,389)``. ``--quick`` times both
  sides on two input subsets and extrapolates (``t = αn + βn²``), labelled as such.
* ``c`` -- a toy model of superposition ``y = ReLU(x Wᵀ W + b)`` (W 10×50, N=500 unit-norm
  sparse inputs, C=50, class weights ``0.8^(c·β/2)``, β=1): top-80 eigenpairs of the
  flattened kernel via the Gram trick, against ``scipy.sparse.linalg.eigsh`` on ``J(Jᵀv)``
  with ``J`` the tutorial's Jacobian.
* ``d`` -- 1-layer attention model on 3-token sequences (vocab 30, d_model 64, 4 heads,
  MLP 256, no LayerNorm, no biases), all 841 inputs, all-class-mean kernel.
* ``check`` -- the cost of ``check=4`` (the spot check) on cases a, c, d, e, as a share of
  each call (:mod:`entk_core.bench.check`, the engine's).
* ``e``, ``f`` -- the engine's cases (:mod:`entk_core.bench.engine`): a CNN's trace and
  full kernels against the tutorial reference; the demo MLP's flattened top-200 spectrum
  against a dense float64 reference.

Relative error is ``max|K_fast − K_ref| / max|K_ref|``. The JSON records the load average
before and after each case (the machine may be shared) and the command.

``--peers`` (:mod:`entk_core.bench.peers`) times entk_core against the peer libraries;
``--methods`` (:mod:`entk_core.bench.methods`) times ``auto`` against every forced method.

``--device`` (``cpu`` by default, ``cuda``, ``mps``, ``auto``: resolved by
:func:`entk_core.engine.devices.resolve_device`) is where each case runs, fast path and
reference alike: the model and inputs are moved there and the library calls get
``device=``. On CUDA the timers are bracketed by ``torch.cuda.synchronize()`` and each case
also reports ``peak_gpu_mb`` (``torch.cuda.max_memory_allocated()``, reset before each
measured computation) next to the host ``peak_rss_mb``; the host-memory targets are CPU
targets and are not checked on another device. The JSON's ``machine`` names the device
(and on CUDA the GPU).

Run ``python -m entk_core.bench`` (table) or ``--json``; ``--cases a,c``; ``--quick``;
``--device cuda`` (``benchmarks/bench_device.py`` runs it and keeps the figures).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

from .measure import machine_info


__all__ = ["machine_info", "run_bench", "format_table", "build_parser", "main", "CASE_MODULES", "DEVICES"]

CASE_MODULES = ("entk_core.bench.toy", "entk_core.bench.engine", "entk_core.bench.lm", "entk_core.bench.check")
"""Modules defining cases: each has ``CASES`` (name -> ``fn(dtype, quick, device) -> dict``, ``device``
a :class:`torch.device`) and ``TARGETS``."""
TOL = {"float32": 1e-5, "float64": 1e-10}
DEVICES = ("cpu", "cuda", "mps", "auto")


def _registry() -> tuple[dict[str, Callable], dict[str, dict[str, float]]]:
    cases: dict[str, Callable] = {}
    targets: dict[str, dict[str, float]] = {}
    for name in CASE_MODULES:
        mod = importlib.import_module(name)
        cases.update(mod.CASES)
        targets.update(getattr(mod, "TARGETS", {}))
    return cases, targets


def _child(case: str, dtype_name: str, quick: bool, device_name: str = "cpu", repeats: int | None = None,
           threads: int | None = None) -> dict[str, Any]:
    import inspect

    import torch

    if threads:
        torch.set_num_threads(threads)
    from ..engine.devices import resolve_device

    dtype = getattr(torch, dtype_name)
    device = resolve_device(device_name)
    t0 = time.perf_counter()
    load0 = list(os.getloadavg())
    fn = _registry()[0][case]
    kw = {"repeats": repeats} if repeats and "repeats" in inspect.signature(fn).parameters else {}
    res = fn(dtype, quick, device, **kw)
    res.update({"case": case, "dtype": dtype_name, "device": str(device), "wall_s": time.perf_counter() - t0,
                "torch_threads": torch.get_num_threads(),
                "loadavg_before": load0, "loadavg_after": list(os.getloadavg())})
    return res


def _check(res: dict[str, Any]) -> dict[str, bool]:
    t = _registry()[1].get(res["case"], {})
    off_cpu = res.get("device", "cpu") != "cpu"
    met = {}
    for key, lim in t.items():
        if key not in res:
            continue
        if off_cpu and key.endswith("_rss_mb"):  # host-memory targets are CPU targets (a GPU's runtime adds its own)
            continue
        met[key] = res[key] >= lim if key.startswith("speedup") else res[key] < lim if key == "time_fast" else res[key] <= lim
    met["max_rel_error"] = res["max_rel_error"] <= TOL.get(res["dtype"], 1e-5)
    return met


# --------------------------------------------------------------------------- API
def run_bench(cases=("a", "b", "c", "d", "e", "f"), dtype: str = "float32", progress: Callable | None = None,
              quick: bool = False, device: Any = "cpu", repeats: int | None = None,
              threads: int | None = None) -> dict[str, Any]:
    """Run the benchmark cases (each in a child process) on ``device`` (``"cpu"``, ``"cuda"``,
    ``"mps"``, ``"auto"``) and return a JSON-able dict: ``{"machine": {...}, "cases": {case: {...}}}``.
    ``repeats``: timed rounds per side (default per case: 3, case b 1).
    ``progress(done, total, message)``. A device that is not available: a one-line ``ValueError``."""
    from ..engine.devices import resolve_device
    from ._runner import command_line

    if dtype not in TOL:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    dev = resolve_device("cpu" if device is None else device)
    if dev.type == "mps" and dtype == "float64":
        raise ValueError("MPS has no float64; use --dtype float32 or another device")
    cases = [c.strip() for c in (cases.split(",") if isinstance(cases, str) else cases)]
    for c in cases:
        if c not in _registry()[0]:
            raise ValueError(f"unknown case {c!r}; known: {sorted(_registry()[0])}")
    result: dict[str, Any] = {"machine": machine_info(dev), "device": str(dev), "dtype": dtype, "quick": quick,
                              "repeats": repeats, "threads": threads, "command": command_line(),
                              "cases": {}}
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for i, c in enumerate(cases):
        if progress:
            progress(i, len(cases), f"case {c}")
        cmd = ([sys.executable, "-m", "entk_core.bench", "--_child", c, "--dtype", dtype, "--_device", str(dev)]
               + (["--quick"] if quick else []) + (["--repeats", str(repeats)] if repeats else [])
               + (["--threads", str(threads)] if threads else []))
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
    device = m.get("device", "cpu")
    gpu = any("peak_gpu_mb" in r for r in result["cases"].values())
    lines = [
        f"machine: {m['cpu_model']}, {m['usable_cores']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), loadavg start {m['loadavg_start'][0]:.2f} end {m['loadavg_end'][0]:.2f}",
        f"device {device}" + (f" ({m['gpu_name']}, {m['gpu_memory_mb'] / 1024:.0f} GiB, CUDA {m.get('cuda')})"
                              if "gpu_name" in m else "")
        + f", dtype {result['dtype']}{' (quick)' if result['quick'] else ''}",
        f"{'case':4} {'t_ref s':>10} {'t_fast s':>9} {'speedup':>8} {'rel.err':>9} {'peak MB':>8} "
        + (f"{'GPU MB':>8} " if gpu else "") + f"{'extra':<32} met",
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
        gcol = (f"{r['peak_gpu_mb']:8.0f} " if "peak_gpu_mb" in r else f"{'-':>8} ") if gpu else ""
        lines.append(f"{c:4} {r['time_ref']:10.3f} {r['time_fast']:9.3f} {r['speedup']:8.1f} "
                     f"{r['max_rel_error']:9.1e} {r['peak_rss_mb']:8.0f} {gcol}{extra:<32} {ok}")
        lines.append(f"     {r['description']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m entk_core.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="a,b,c,d,e,f", help="comma-separated cases (default a,b,c,d,e,f)")
    ap.add_argument("--dtype", default="float32", choices=sorted(TOL))
    ap.add_argument("--device", default="cpu", choices=DEVICES,
                    help="where the cases run, fast path and reference alike (default cpu; auto: CUDA, else MPS, "
                         "else CPU); on CUDA the peak GPU memory is reported too")
    ap.add_argument("--quick", action="store_true", help="case b: time the reference on subsets and extrapolate; "
                    "case e: N=200; case f: ARPACK reference instead of the dense one")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed rounds per side (default per case: a, c, d, e 3; b 1); both sides get the same")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads in each case (default torch's: the usable cores). On a machine loaded "
                         "beyond its cores, 2 threads thrash the many small operations of the fast paths "
                         "(measured: case d 10x slower) far more than the tutorial's few large ones; 1 is fairer there")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--peers", action="store_true",
                    help="time entk_core against the peer libraries instead (entk_core.bench.peers; --help there)")
    ap.add_argument("--methods", action="store_true",
                    help="time auto against every forced method instead (entk_core.bench.methods; --help there)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_device", default="cpu", help=argparse.SUPPRESS)  # the child's resolved device (cuda:1, ...)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--peers" in argv:  # its own parser: python -m entk_core bench --peers --help
        from .peers import main as peers_main

        return peers_main([a for a in argv if a != "--peers"])
    if "--methods" in argv:
        from .methods import main as methods_main

        return methods_main([a for a in argv if a != "--methods"])
    args = build_parser().parse_args(argv)
    if args._child:
        from ._runner import save_partial

        rec = _child(args._child, args.dtype, args.quick, args._device, args.repeats, args.threads)
        save_partial(args._child, rec)
        print(json.dumps(rec))
        return 0

    def prog(done, total, msg):
        print(f"[{done}/{total}] {msg}", file=sys.stderr, flush=True)

    try:
        res = run_bench(args.cases, args.dtype, progress=prog, quick=args.quick, device=args.device,
                        repeats=args.repeats, threads=args.threads)
    except ValueError as e:  # an unknown case, a device that is not here: one line, no traceback
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0 if all("error" not in r for r in res["cases"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
