"""CLI command ``dynamics``: how a run's eNTK moves over training (any family)."""
from __future__ import annotations

import argparse
from typing import Any

from ..families.run import open_run
from ..workflows import analysis
from ..workflows.dynamics import dynamics
from .common import add_executor_options, emit, progress_lines

__all__ = ["add_commands"]


def _f(v: Any, spec: str) -> str:
    width = int("".join(ch for ch in spec.split(".")[0] if ch.isdigit()) or 0)
    return "–".rjust(width) if v is None else format(v, spec)


def text(o: dict[str, Any]) -> str:
    """The human-readable table of a :meth:`DynamicsResult.to_json` object."""
    rows = o["checkpoints"]
    has_ta = any("target_alignment" in r for r in rows)
    has_kr = any("kernel_regression_test_accuracy" in r for r in rows)
    lines = [f"{o['run']}: eNTK dynamics of the {o['group']} kernel ({o['reduction']}, n={o['n']}) over "
             f"{len(rows)} checkpoints ({o['cache']}, {o['total_s']:.1f} s); effective rank over {o['effective_rank_over']}"]
    head = f"  {'epoch':>6} {'d_prev':>9} {'d_final':>8} " + ("align " if has_ta else "") + f"{'eff.rank':>8} {'λ_max':>9} cliffs"
    if has_kr:
        head += "   kernel-reg / net test acc"
    lines.append(head)
    for r in rows:
        cl = ",".join(str(c["size"]) for c in r["cliffs"]) or "–"
        line = (f"  {r['epoch']:>6} {_f(r['kernel_distance_prev'], '9.2e')} {_f(r['kernel_distance_final'], '8.4f')} "
                + (f"{_f(r.get('target_alignment'), '5.3f')} " if has_ta else "")
                + f"{_f(r['effective_rank'], '8.2f')} {_f(r['top_eigenvalues'][0] if r['top_eigenvalues'] else None, '9.3g')} "
                + f"{cl}")
        if has_kr:
            line += f"   {_f(r.get('kernel_regression_test_accuracy'), '.1%')} / {_f(r['network_test_accuracy'], '.1%')}"
        lines.append(line)
    lm = o.get("landmarks") or {}
    if lm.get("kernel_fastest"):
        k = lm["kernel_fastest"]
        lines.append(f"  the kernel moves fastest between epochs {k['from']} and {k['to']}"
                     + (f"; target alignment peaks at epoch {lm['alignment_peak']['epoch']}"
                        f" ({lm['alignment_peak']['value']:.3f}) and rises fastest between epochs "
                        f"{lm['alignment_fastest_rise']['from']} and {lm['alignment_fastest_rise']['to']}"
                        if lm.get("alignment_peak") and lm.get("alignment_fastest_rise") else "")
                     + (f"; grokking onset {lm['grokking_onset']}" if lm.get("grokking_onset") is not None else ""))
    for k, why in o["notes"].items():
        lines.append(f"  note: {k}: {why}")
    if o.get("unvouched_metrics"):
        um = o["unvouched_metrics"]
        lines.append(f"  note: the network's accuracies are not vouched for: {um['reason']}")
    return "\n".join(lines)


def cmd_dynamics(args: argparse.Namespace) -> int:
    run = open_run(args.run)
    bar = progress_lines(f"dynamics {run.name}")
    try:
        res = dynamics(run, args.group, args.reduction, args.top, progress=bar, ray=args.ray, workers=args.workers)
    finally:
        bar.close()
    emit(args, res.to_json(), text)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("dynamics", help="how the eNTK moves over training: kernel distances, target alignment, "
                                        "effective rank, spectrum and kernel regression at every checkpoint")
    p.add_argument("run")
    p.add_argument("--group", default=analysis.FULL, help="layer group (default: full = all parameters)")
    p.add_argument("--reduction", choices=analysis.REDUCTIONS, default=None, help="default: the family's")
    p.add_argument("--top", type=int, default=None, help="top eigenvalues per checkpoint (default: the family's)")
    add_executor_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dynamics)
