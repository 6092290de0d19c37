"""Is ``auto`` the fastest path? ``auto`` against every forced method, with the planner's estimates.

``python -m entk_core bench --methods [--cases ...] [--json]`` runs, per case (a bench
model and a reduction, :data:`CASES`; one child process per case), ``empirical_ntk`` with
``method="auto"`` and each forced method (``structured``, ``jacobian``, ``ntk_vp``), each
after the same warm-up on 8 inputs, in ``--repeats`` interleaved rounds (order alternating),
the best round kept. It reports per method the measured seconds, the planner's estimate
(``estimate_ntk(..., method=m).seconds``, taken just before) and their ratio, the path
``auto`` chose, and ``auto``'s ratio to the best forced method (the issue's target:
≤ 1.2). A forced method the planner says does not fit the memory budget, or whose estimate
is over ``--max-seconds``, is not run (reason recorded); a run past ``--max-seconds`` is
stopped; a method that raises is recorded with its one-line error. This is the tool the
planner's time model is tuned with.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from typing import Any, Callable

__all__ = ["CASES", "METHODS", "run_case", "run_methods", "format_table", "main"]

METHODS = ("auto", "structured", "jacobian", "ntk_vp")
CASES = {
    "mlp-paper-trace": ("mlp-paper", "trace"), "mlp-paper-full": ("mlp-paper", "full"),
    "cnn-trace": ("cnn", "trace"), "cnn-full": ("cnn", "full"),
    "mlp784-trace": ("mlp784", "trace"), "mlp784-full": ("mlp784", "full"),
    "vit-trace": ("vit", "trace"), "vit-full": ("vit", "full"),
    "resnet-trace": ("resnet", "trace"), "resnet-full": ("resnet", "full"),
    "tms-full": ("tms", "full"), "attn-mean": ("attn", "mean"),
}


class _Timeout(Exception):
    pass


def _with_alarm(seconds: float, fn: Callable[[], Any]) -> Any:
    def handler(signum, frame):
        raise _Timeout(f"stopped after {seconds:g} s (--max-seconds)")
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def run_case(case: str, repeats: int = 1, max_seconds: float = 300.0, n: int | None = None) -> dict[str, Any]:
    """One case in this process: ``{"methods": {m: {...}}, "auto_over_best_forced", ...}``."""
    from ..engine.kernels import empirical_ntk, estimate_ntk
    from .measure import load_fields, measure
    from .models import build

    name, reduction = CASES[case]
    model, x = build(name, n)
    rec: dict[str, Any] = {"case": case, "model": name, "reduction": reduction, "N": int(x.shape[0]),
                           "P": sum(p.numel() for p in model.parameters()), "load_before": load_fields(),
                           "methods": {}}
    runnable = []
    for m in METHODS:
        r: dict[str, Any] = {}
        rec["methods"][m] = r
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plan = estimate_ntk(model, x, reduction=reduction, method=m)
            r.update({"estimated_s": plan.seconds, "estimated_bytes": plan.bytes, "planned_method": plan.method,
                      "fits": bool(plan.fits), "flops": plan.flops})
            if m == "auto":
                r["paths"] = {k: {"seconds": v.get("seconds"), "bytes": v.get("bytes"), "fits": v.get("fits")}
                              for k, v in plan.paths.items()}
        except Exception as e:  # noqa: BLE001 - reported
            r["failed"] = f"estimate: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            continue
        if not plan.fits:
            r["skipped"] = "does not fit the memory budget (planner)"
        elif m != "auto" and plan.seconds > max_seconds:
            r["skipped"] = f"estimated {plan.seconds:.0f} s, over --max-seconds {max_seconds:g}"
        else:
            runnable.append(m)

    def call(m, xs):
        return empirical_ntk(model, xs, reduction=reduction, method=m, return_info=True)

    for m in list(runnable):   # the same warm-up for every method
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                call(m, x[:8])
        except Exception as e:  # noqa: BLE001 - e.g. forward AD not implemented: reported, not run
            rec["methods"][m]["failed"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            runnable.remove(m)
    times: dict[str, list] = {m: [] for m in runnable}
    for i in range(repeats):
        for m in (runnable if i % 2 == 0 else runnable[::-1]):
            if "skipped" in rec["methods"][m] or "failed" in rec["methods"][m]:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    mm = _with_alarm(max_seconds, lambda m=m: measure(lambda: call(m, x)))
            except _Timeout as e:
                rec["methods"][m]["skipped"] = str(e)
                continue
            except Exception as e:  # noqa: BLE001
                rec["methods"][m]["failed"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                continue
            times[m].append(mm.seconds)
            if i == 0:
                info = mm.out[1]
                rec["methods"][m].update({"path": f"{info.method}/{info.layout}", "chunk_size": info.chunk_size,
                                          "peak_rss_mb": mm.peak_rss_mb,
                                          "fallbacks": len(info.fallbacks)})
            del mm
    for m, ts in times.items():
        r = rec["methods"][m]
        if ts and "skipped" not in r and "failed" not in r:
            r.update({"seconds": min(ts), "times": ts, "measured_over_estimate": min(ts) / r["estimated_s"]})
    forced = {m: rec["methods"][m]["seconds"] for m in METHODS[1:] if "seconds" in rec["methods"][m]}
    if "seconds" in rec["methods"]["auto"] and forced:
        best = min(forced, key=forced.get)
        rec.update({"best_forced": best, "auto_over_best_forced": rec["methods"]["auto"]["seconds"] / forced[best],
                    "auto_path": rec["methods"]["auto"].get("path")})
    rec["load_after"] = load_fields()
    return rec


def run_methods(cases=tuple(CASES), repeats: int = 1, max_seconds: float = 300.0, n: int | None = None,
                progress: Callable | None = None) -> dict[str, Any]:
    """Every case in a child process of its own."""
    from . import machine_info

    cases = [c.strip() for c in (cases.split(",") if isinstance(cases, str) else cases)]
    for c in cases:
        if c not in CASES:
            raise ValueError(f"unknown case {c!r}; known: {', '.join(CASES)}")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    result = {"machine": machine_info("cpu"),
              "settings": {"repeats": repeats, "max_seconds": max_seconds, "n": n,
                           "statistic": f"best of {repeats} interleaved rounds after the same 8-input warm-up"},
              "command": " ".join(["python -m entk_core bench --methods"] + sys.argv[1:]), "cases": {}}
    for i, c in enumerate(cases):
        if progress:
            progress(i, len(cases), c)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "entk_core.bench.methods", "--_child", c, "--repeats", str(repeats),
               "--max-seconds", str(max_seconds)] + (["--n", str(n)] if n else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            result["cases"][c] = {"case": c, "error": (proc.stderr or proc.stdout).strip().splitlines()[-5:]}
            continue
        result["cases"][c] = {**json.loads(lines[-1]), "wall_s": time.perf_counter() - t0}
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    ratios = [r["auto_over_best_forced"] for r in result["cases"].values() if "auto_over_best_forced" in r]
    spreads = [mr["measured_over_estimate"] for r in result["cases"].values() for mr in r.get("methods", {}).values()
               if "measured_over_estimate" in mr]
    result["summary"] = {"auto_over_best_forced_max": max(ratios, default=None),
                         "cases_auto_within_1.2": sum(r <= 1.2 for r in ratios), "cases": len(ratios),
                         "measured_over_estimate_min": min(spreads, default=None),
                         "measured_over_estimate_max": max(spreads, default=None)}
    return result


def format_table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"machine: {m['cpu_model']}, {m['usable_cores']} cores, torch {m['torch']}, loadavg start "
             f"{m['loadavg_start'][0]:.2f} end {m['loadavg_end'][0]:.2f}",
             f"{'case':16} {'method':10} {'seconds':>9} {'estimate':>9} {'meas/est':>8} {'peak MB':>8}  path / note"]
    for c, rec in result["cases"].items():
        if "error" in rec:
            lines.append(f"{c:16} ERROR: {' | '.join(rec['error'])}")
            continue
        for meth, r in rec["methods"].items():
            est = f"{r['estimated_s']:9.3f}" if "estimated_s" in r else f"{'-':>9}"
            if "seconds" in r:
                lines.append(f"{c:16} {meth:10} {r['seconds']:9.3f} {est} {r['measured_over_estimate']:8.2f} "
                             f"{r['peak_rss_mb']:8.0f}  {r['path']}")
            else:
                lines.append(f"{c:16} {meth:10} {'-':>9} {est} {'-':>8} {'-':>8}  {r.get('skipped') or r.get('failed')}")
        if "auto_over_best_forced" in rec:
            lines.append(f"{'':16} auto / best forced ({rec['best_forced']}): {rec['auto_over_best_forced']:.2f}"
                         + ("" if rec["auto_over_best_forced"] <= 1.2 else "  ** over 1.2"))
    s = result.get("summary", {})
    if s.get("cases"):
        lines.append(f"auto within 1.2x of the best forced method on {s['cases_auto_within_1.2']}/{s['cases']} cases "
                     f"(worst {s['auto_over_best_forced_max']:.2f}); measured/estimate "
                     f"{s['measured_over_estimate_min']:.2f}-{s['measured_over_estimate_max']:.2f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m entk_core bench --methods", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated (default all: {', '.join(CASES)})")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved timed rounds, best kept (default 1)")
    ap.add_argument("--max-seconds", type=float, default=300.0,
                    help="a forced method estimated over this is not run; a run over it is stopped (default 300)")
    ap.add_argument("--n", type=int, default=None, help="inputs per case (default: each model's N)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args._child:
        print(json.dumps(run_case(args._child, args.repeats, args.max_seconds, args.n)))
        return 0
    try:
        res = run_methods(args.cases, args.repeats, args.max_seconds, args.n,
                          progress=lambda i, t, c: print(f"[{i}/{t}] {c}", file=sys.stderr, flush=True))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0 if all("error" not in r for r in res["cases"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
