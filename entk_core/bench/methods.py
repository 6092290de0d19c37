"""Is ``auto`` the fastest path? ``auto`` against every forced method, with the planner's estimates.

``python -m entk_core bench --methods [--cases ...] [--json]`` runs, per case (a bench
model and a reduction, :data:`CASES`; one child process per case), ``empirical_ntk`` with
``method="auto"`` and each forced method (``structured``, ``jacobian``, ``ntk_vp``), each
after the same warm-up on 8 inputs, in ``--repeats`` interleaved rounds (order alternating),
then up to :data:`FAST_EXTRA_ROUNDS` more rounds of ``auto`` and the forced methods that took
under :data:`FAST_SECONDS`, the best round kept. It reports per method the measured seconds, the planner's estimate
(``estimate_ntk(..., method=m).seconds``, taken just before, after one throwaway estimate) and
the ratio of the best round to that call's own estimate (``KernelInfo.estimated_seconds``: the
same model, with the call's own setup measured), the path
``auto`` chose, and ``auto``'s ratio to the best forced method (the issue's target:
≤ 1.2). A forced method the planner says does not fit the memory budget, or whose estimate
is over ``--max-seconds``, is not run (reason recorded); a run past ``--max-seconds`` is
stopped; a method that raises is recorded with its one-line error. This is the tool the
planner's time model is tuned with.
"""
from __future__ import annotations

import argparse
import os
import warnings
from typing import Any, Callable

from ._runner import Timeout, cli, command_line, common_args, one_line, run_children, split_names, table_head, table_rows, time_limit

__all__ = ["CASES", "METHODS", "run_case", "run_methods", "format_table", "main"]

METHODS = ("auto", "structured", "jacobian", "ntk_vp")
#: Methods faster than this (seconds, best round) get up to FAST_EXTRA_ROUNDS more rounds.
FAST_SECONDS = 2.0
FAST_EXTRA_ROUNDS = 6
CASES = {
    "mlp-paper-trace": ("mlp-paper", "trace"), "mlp-paper-full": ("mlp-paper", "full"),
    "cnn-trace": ("cnn", "trace"), "cnn-full": ("cnn", "full"),
    "mlp784-trace": ("mlp784", "trace"), "mlp784-full": ("mlp784", "full"),
    "vit-trace": ("vit", "trace"), "vit-full": ("vit", "full"),
    "resnet-trace": ("resnet", "trace"), "resnet-full": ("resnet", "full"),
    "tms-full": ("tms", "full"), "attn-mean": ("attn", "mean"),
}


def run_case(case: str, repeats: int = 3, max_seconds: float = 300.0, n: int | None = None,
             memory_budget: str | None = None) -> dict[str, Any]:
    """One case in this process: ``{"methods": {m: {...}}, "auto_over_best_forced", ...}``.

    The objects alive when it starts (a test runner's, a notebook's) are frozen out of the
    garbage collector for its duration, so the full collection before every measurement
    walks only what the case made (28 collections cost 4.1 s in a bare interpreter before)."""
    import gc

    gc.collect()
    gc.freeze()
    try:
        return _run_case(case, repeats, max_seconds, n, memory_budget)
    finally:
        gc.unfreeze()


def _run_case(case: str, repeats: int, max_seconds: float, n: int | None, memory_budget: str | None) -> dict[str, Any]:
    import torch

    from ..engine.kernels import empirical_ntk, estimate_ntk
    from .measure import load_fields, measure
    from .models import build

    name, reduction = CASES[case]
    model, x = build(name, n)
    rec: dict[str, Any] = {"case": case, "model": name, "reduction": reduction, "N": int(x.shape[0]),
                           "memory_budget": memory_budget, "torch_threads": torch.get_num_threads(),
                           "P": sum(p.numel() for p in model.parameters()), "load_before": load_fields(),
                           "methods": {}}
    from ..engine.machine import machine_rates

    rec["rates"] = machine_rates().describe()   # what every estimate below divides by
    with warnings.catch_warnings():   # one-time costs (first counting pass, lazy imports) out of the estimates
        warnings.simplefilter("ignore")
        estimate_ntk(model, x[:8], reduction=reduction, memory_budget=memory_budget)
    runnable = []
    for m in METHODS:
        r: dict[str, Any] = {}
        rec["methods"][m] = r
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plan = estimate_ntk(model, x, reduction=reduction, method=m, memory_budget=memory_budget)
            r.update({"estimated_s": plan.seconds, "estimated_bytes": plan.bytes, "planned_method": plan.method,
                      "fits": bool(plan.fits), "flops": plan.flops})
            if m == "auto":
                r["paths"] = {k: {"seconds": v.get("seconds"), "bytes": v.get("bytes"), "fits": v.get("fits")}
                              for k, v in plan.paths.items()}
        except Exception as e:  # noqa: BLE001 - reported
            r["failed"] = "estimate: " + one_line(e)
            continue
        if not plan.fits:
            r["skipped"] = "does not fit the memory budget (planner)"
        elif m != "auto" and plan.seconds > max_seconds:
            r["skipped"] = f"estimated {plan.seconds:.0f} s, over --max-seconds {max_seconds:g}"
        else:
            runnable.append(m)

    def call(m, xs):
        return empirical_ntk(model, xs, reduction=reduction, method=m, return_info=True, memory_budget=memory_budget)

    for m in list(runnable):   # the same warm-up for every method
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                call(m, x[:8])
        except Exception as e:  # noqa: BLE001 - e.g. forward AD not implemented: reported, not run
            rec["methods"][m]["failed"] = one_line(e)
            runnable.remove(m)
    times: dict[str, list] = {m: [] for m in runnable}
    i = 0
    while i < repeats + FAST_EXTRA_ROUNDS:
        # after the asked rounds, extra rounds for the methods that take under FAST_SECONDS
        # (a loaded machine's noise is larger than such a call)
        todo = runnable if i < repeats else [m for m in runnable if times[m] and min(times[m]) < FAST_SECONDS]
        if i >= repeats and ("auto" not in todo or len(todo) < 2):
            break
        i += 1
        for m in (todo if i % 2 == 1 else todo[::-1]):
            if "skipped" in rec["methods"][m] or "failed" in rec["methods"][m]:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with time_limit(max_seconds):
                        mm = measure(lambda m=m: call(m, x))
            except Timeout as e:
                rec["methods"][m]["skipped"] = str(e)
                continue
            except Exception as e:  # noqa: BLE001
                rec["methods"][m]["failed"] = one_line(e)
                continue
            times[m].append(mm.seconds)
            if mm.seconds <= min(times[m]):   # the call's own estimate (its setup measured) of its best round
                rec["methods"][m]["call_estimated_s"] = mm.out[1].estimated_seconds
            if i == 1:
                info = mm.out[1]
                rec["methods"][m].update({"path": f"{info.method}/{info.layout}", "chunk_size": info.chunk_size,
                                          "peak_rss_mb": mm.peak_rss_mb,
                                          "fallbacks": len(info.fallbacks)})
                if info.pilot:   # auto timed its contenders first (its first round includes the pilot)
                    rec["methods"][m]["pilot"] = info.pilot
            if "update" in mm.out[1].rates:   # this call ran 3x off its estimate: the rates were measured again
                rec.setdefault("rate_updates", []).append({"method": m, "round": i - 1, **mm.out[1].rates["update"]})
            del mm
    for m, ts in times.items():
        r = rec["methods"][m]
        if ts and "skipped" not in r and "failed" not in r:
            est = r.get("call_estimated_s") or r["estimated_s"]
            r.update({"seconds": min(ts), "times": ts, "measured_over_estimate": min(ts) / est})
    forced = {m: rec["methods"][m]["seconds"] for m in METHODS[1:] if "seconds" in rec["methods"][m]}
    if "seconds" in rec["methods"]["auto"] and forced:
        best = min(forced, key=forced.get)
        a = rec["methods"]["auto"]
        rec.update({"best_forced": best, "auto_over_best_forced": a["seconds"] / forced[best],
                    # the first round: a new request's pilot included (later rounds reuse its ratios)
                    "auto_first_over_best_forced": a["times"][0] / forced[best],
                    "auto_path": a.get("path"),
                    # forced methods that ran exactly auto's path: their ratio to auto is measurement noise
                    "auto_same_path_as": [m for m in forced if rec["methods"][m].get("path") == a.get("path")
                                          and rec["methods"][m].get("chunk_size") == a.get("chunk_size")]})
        same = [forced[m] for m in rec["auto_same_path_as"]]
        if same:   # auto's choice, timed as a forced method, against the best: the choice without auto's own noise
            rec["choice_over_best_forced"] = min(same) / forced[best]
    rec["load_after"] = load_fields()
    return rec


def run_methods(cases=tuple(CASES), repeats: int = 3, max_seconds: float = 300.0, n: int | None = None,
                progress: Callable | None = None, memory_budget: str | None = None,
                threads: int | None = None) -> dict[str, Any]:
    """Every case in a child process of its own."""
    from .measure import machine_info

    cases = split_names(cases, CASES, "case")
    args = ["--repeats", str(repeats), "--max-seconds", str(max_seconds)] + (["--n", str(n)] if n else [])
    args += ["--memory-budget", memory_budget] if memory_budget else []
    args += ["--threads", str(threads)] if threads else []
    result = {"machine": machine_info("cpu"),
              "settings": {"repeats": repeats, "max_seconds": max_seconds, "n": n, "memory_budget": memory_budget, "threads": threads,
                           "statistic": f"best of {repeats} interleaved rounds (+ up to {FAST_EXTRA_ROUNDS} for methods "
                                        f"under {FAST_SECONDS:g} s) after the same 8-input warm-up"},
              "command": command_line(),
              "cases": run_children("entk_core.bench.methods", cases, args, progress)}
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    ratios = [r["auto_over_best_forced"] for r in result["cases"].values() if "auto_over_best_forced" in r]
    spreads = [mr["measured_over_estimate"] for r in result["cases"].values() for mr in r.get("methods", {}).values()
               if "measured_over_estimate" in mr]
    spread = sorted(spreads)
    choices = [r["choice_over_best_forced"] for r in result["cases"].values() if "choice_over_best_forced" in r]
    firsts = [r["auto_first_over_best_forced"] for r in result["cases"].values() if "auto_first_over_best_forced" in r]
    result["summary"] = {"auto_over_best_forced_max": max(ratios, default=None),
                         "auto_first_over_best_forced_max": max(firsts, default=None),
                         "choice_over_best_forced_max": max(choices, default=None),
                         "measured_over_estimate_median": spread[len(spread) // 2] if spread else None,
                         "estimates_within_2x": sum(0.5 <= v <= 2.0 for v in spread), "estimates": len(spread),
                         "cases_auto_within_1.2": sum(r <= 1.2 for r in ratios), "cases": len(ratios),
                         "measured_over_estimate_min": min(spreads, default=None),
                         "measured_over_estimate_max": max(spreads, default=None)}
    return result


def _method_row(c: str, meth: str, r: dict) -> str:
    e = r.get("call_estimated_s") or r.get("estimated_s")
    est = f"{e:9.3f}" if e else f"{'-':>9}"
    if "seconds" in r:
        return (f"{c:16} {meth:10} {r['seconds']:9.3f} {est} {r['measured_over_estimate']:8.2f} "
                f"{r['peak_rss_mb']:8.0f}  {r['path']}")
    return f"{c:16} {meth:10} {'-':>9} {est} {'-':>8} {'-':>8}  {r.get('skipped') or r.get('failed')}"


def _auto_line(rec: dict) -> str | None:
    if "auto_over_best_forced" not in rec:
        return None
    choice = rec.get("choice_over_best_forced")
    return (f"{'':16} auto / best forced ({rec['best_forced']}): {rec['auto_over_best_forced']:.2f}"
            + ("" if rec["auto_over_best_forced"] <= 1.2 else "  ** over 1.2")
            + ("" if choice is None else f"; auto's path forced / best forced: {choice:.2f}")
            + (f"; first call (pilot {rec['methods']['auto']['pilot']['seconds']:.2f} s) / best forced: "
               f"{rec['auto_first_over_best_forced']:.2f}" if rec["methods"]["auto"].get("pilot") else ""))


def format_table(result: dict[str, Any]) -> str:
    lines = table_head(result, f"{'case':16} {'method':10} {'seconds':>9} {'estimate':>9} {'meas/est':>8} "
                               f"{'peak MB':>8}  path / note")
    lines += table_rows(result, "methods", _method_row, _auto_line)
    s = result.get("summary", {})
    if s.get("cases"):
        lines.append(f"auto within 1.2x of the best forced method on {s['cases_auto_within_1.2']}/{s['cases']} cases "
                     f"(worst {s['auto_over_best_forced_max']:.2f}); measured/estimate "
                     f"{s['measured_over_estimate_min']:.2f}-{s['measured_over_estimate_max']:.2f} "
                     f"(median {s['measured_over_estimate_median']:.2f}; {s['estimates_within_2x']}/{s['estimates']} "
                     f"within 2x)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m entk_core bench --methods", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated (default all: {', '.join(CASES)})")
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved timed rounds, best kept (default 3; with 1, auto always runs first)")
    ap.add_argument("--max-seconds", type=float, default=300.0,
                    help="a forced method estimated over this is not run; a run over it is stopped (default 300)")
    ap.add_argument("--memory-budget", default=None,
                    help="the planner's budget for every method, e.g. 4GB (default: ENTK_MEMORY_BUDGET or half the "
                         "available RAM)")
    common_args(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    return cli(a, lambda: run_case(a._child, a.repeats, a.max_seconds, a.n, a.memory_budget),
               lambda progress: run_methods(a.cases, a.repeats, a.max_seconds, a.n, progress, a.memory_budget,
                                            a.threads),
               format_table)


if __name__ == "__main__":
    raise SystemExit(main())
