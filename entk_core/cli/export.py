"""CLI command ``export``: a run's spectrum, eigenvectors and overlap tables as files
(CSV, NPZ, JSON; see :mod:`entk_core.workflows.export`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..families.run import open_run
from ..workflows import analysis
from ..workflows.export import WHAT, export_view
from .analysis import add_check_option
from .common import emit, tqdm_progress

__all__ = ["add_commands"]


def _window(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"--window must be START:END (inclusive indices), got '{text}'") from None
    return a, b


def cmd_export(args: argparse.Namespace) -> int:
    run = open_run(args.run)
    what = [w.strip() for w in args.what.split(",") if w.strip()]
    bar = tqdm_progress("export")
    try:
        summary = export_view(run, args.epoch, Path(args.out), what=what, group=args.group, reduction=args.reduction,
                              top=args.top, beta=args.beta, window=_window(args.window), progress=bar,
                              check=args.check)
    finally:
        bar.close()
    emit(args, summary, lambda o: f"{o['run']} epoch {o['epoch']}: wrote {', '.join(o['files'])} to {o['out']}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("export", help="write a run's spectrum, eigenvectors and overlap tables as CSV/NPZ files")
    p.add_argument("run")
    p.add_argument("--epoch", type=int, default=None, help="checkpoint epoch (default: the last)")
    p.add_argument("--what", default=",".join(WHAT), help=f"comma-separated: {', '.join(WHAT)} (default: all)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--group", default=analysis.FULL, help="layer group (default: full = all parameters)")
    p.add_argument("--reduction", choices=analysis.REDUCTIONS, default=None, help="default: the family's")
    p.add_argument("--top", type=int, default=None, help="number of eigenpairs (default: the family's)")
    p.add_argument("--beta", type=float, default=None, help="importance rescaling (TMS)")
    p.add_argument("--window", default=None, help="START:END, the eigenvectors to export (default: all)")
    add_check_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)
