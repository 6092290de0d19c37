"""CLI commands about a run's eNTK: ``spectrum``, ``align`` and ``sweep``."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..families.run import open_run
from ..workflows import analysis, sweep
from ..workflows.services import Services
from .common import add_executor_options, emit, tqdm_progress

__all__ = ["add_commands"]

ESTIMATE_ABOVE_S = 5.0
"""``spectrum`` prints the planner's estimate on stderr before requests estimated above this."""


def cmd_spectrum(args: argparse.Namespace) -> int:
    run = open_run(args.run)
    est = analysis.estimate_spectrum(run, args.epoch, group=args.group, reduction=args.reduction,
                                     top=args.top, beta=args.beta)
    model = None
    if not est["cached"] and est["fits"] and est["seconds"] >= ESTIMATE_ABOVE_S:
        # a long request: load (and so validate) the checkpoint first, so a bad file is still one line
        model = run.load_model(run.resolve_epoch(args.epoch))
        print(f"estimate: about {est['seconds']:.0f} s ({est['summary']})", file=sys.stderr, flush=True)
    bar = tqdm_progress("eNTK")
    try:
        res = analysis.spectrum(run, args.epoch, group=args.group, reduction=args.reduction,
                                top=args.top, beta=args.beta, progress=bar, model=model)
    finally:
        bar.close()
    obj = res.to_json()

    def text(o: dict[str, Any]) -> str:
        cl = ", ".join(f"{c['label']} [{c['start']}..{c['end']}] size {c['size']} (drop x{c['ratio']:.2f})"
                       for c in o["cliffs"]) or "none"
        ev = o["eigenvalues"]
        return (f"{o['run']} epoch {o['epoch']} group {o['group']} reduction {o['reduction']}: top {o['top']} of n={o['n']}\n"
                f"  eigenvalues: {ev[0]:.4g} ... {ev[-1]:.4g}\n  cliffs: {cl}\n"
                f"  time: {o['timing']['total_s']:.2f} s ({o['cache']})")

    emit(args, obj, text)
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    run = open_run(args.run)
    epoch = run.resolve_epoch(args.epoch)
    bar = tqdm_progress("align")
    try:
        report = run.family.align_report(run, epoch, services=Services(), group=args.group, beta=args.beta,
                                         progress=bar)
    finally:
        bar.close()
    from ..workflows.alignment import report_baselines

    report = report_baselines(run, epoch, {"run": run.name, "family": run.family.name, "epoch": epoch, **report})
    emit(args, report, lambda r: json.dumps(r, indent=1, default=float))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    run = open_run(args.run)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip()) if args.families else None
    spec = sweep.default_spec(run, args.group, reduction=args.reduction, top=args.top, families=families,
                              window_group=args.window_group, primary=args.primary)
    bar = tqdm_progress(f"sweep {args.group}")
    try:
        res = sweep.sweep(run, spec, progress=bar, ray=args.ray, workers=args.workers)
    finally:
        bar.close()
    obj = res.to_json()
    top_ev = [float(v[0]) for v in res.eigenvalues]

    def text(o: dict[str, Any]) -> str:
        o = {**o, "top_eigenvalue": top_ev}
        fams = list(o["families"])
        lines = [f"{o['run']}: sweep of the {o['group']} eNTK ({o['reduction']}) over {len(o['table'])} checkpoints "
                 f"({o['cache']}, {o['total_s']:.1f} s); windows from {o['window_group']} at epoch {o['reference_epoch']}",
                 "  windows: " + ", ".join(f"{w['label']} [{w['start']}..{w['end']}]" for w in o["windows"]),
                 f"  grokking onset: {o['onset_epoch']}; overlap-derivative peak: {o['peak_epoch']}"
                 + (f" ({o['primary']['window']} vs {o['primary']['family']})" if o["primary"] else ""),
                 "  % overlap of each window with " + "/".join(fams) + " (test acc):"]
        if not fams:
            lines[-1] = ("  no feature families for this kernel (the family declares none): "
                         "each checkpoint's top eigenvalue and cliff sizes (test acc):")
            for row, ev in zip(o["table"], o["top_eigenvalue"]):
                acc = "–" if row["test_acc"] is None else f"{row['test_acc']:.0%}"
                sizes = ", ".join(f"{c['label']} {c['size']}" for c in row["cliffs"]) or "none"
                lines.append(f"    epoch {row['epoch']:>5} ({acc:>4})  λ_max {ev:.4g}  cliffs: {sizes}")
        for row in o["table"] if fams else []:
            acc = "–" if row["test_acc"] is None else f"{row['test_acc']:.0%}"
            cells = "  ".join(f"{lab}: " + "/".join("–" if v is None else f"{v:.0f}" for v in ov.values())
                              for lab, ov in row["overlap_pct"].items())
            lines.append(f"    epoch {row['epoch']:>5} ({acc:>4})  {cells}")
        if o.get("unvouched_metrics"):
            lines.append(f"  note: the test accuracies are not vouched for: {o['unvouched_metrics']['reason']}")
        return "\n".join(lines)

    emit(args, obj, text)
    if obj.get("failed"):
        f = obj["failed"]
        raise ValueError(f"{len(f)} of {len(obj['table'])} checkpoints failed and were not cached "
                         f"(first: epoch {f[0]['epoch']}: {f[0]['error']}); run the sweep again to retry them")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("spectrum", help="top eigenvalues of a run's eNTK at a checkpoint, with detected cliffs")
    p.add_argument("run")
    p.add_argument("--epoch", type=int, default=None, help="checkpoint epoch (default: the last)")
    p.add_argument("--group", default=analysis.FULL, help="layer group (default: full = all parameters)")
    p.add_argument("--reduction", choices=analysis.REDUCTIONS, default=None, help="default: the family's")
    p.add_argument("--top", type=int, default=None, help="number of eigenpairs (default: the family's)")
    p.add_argument("--beta", type=float, default=None, help="importance rescaling (TMS)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_spectrum)

    p = sub.add_parser("align", help="alignment of eNTK eigenvectors with the family's ground-truth features")
    p.add_argument("run")
    p.add_argument("--epoch", type=int, default=None, help="checkpoint epoch (default: the last)")
    p.add_argument("--group", default=None, help="layer group (default: the family's)")
    p.add_argument("--beta", type=float, default=None, help="importance rescaling (TMS)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("sweep", help="overlap of the eNTK's cliffs with feature families at every checkpoint (grokking)")
    p.add_argument("run")
    p.add_argument("--group", default=analysis.FULL, help="layer group (default: full = all parameters)")
    p.add_argument("--reduction", choices=analysis.REDUCTIONS, default=None, help="default: the family's")
    p.add_argument("--top", type=int, default=None, help="eigenpairs per checkpoint (default: the family's)")
    p.add_argument("--families", default=None, help="comma-separated feature families (default: the family's)")
    p.add_argument("--window-group", default=None,
                   help="group whose last-checkpoint cliffs define the tracked windows (default: the family's)")
    p.add_argument("--primary", default=None, help="family whose overlap derivative defines peak_epoch")
    add_executor_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sweep)
