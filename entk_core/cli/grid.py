"""CLI command ``grid``: train the product of option lists (one unit per run)."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..families.base import get_family, list_families
from ..store.runs import runs_root
from .common import add_executor_options, emit, tqdm_progress

__all__ = ["add_commands"]


def _parse_list(fam, name: str, text: str) -> list[Any]:
    default = getattr(fam.Config(), name)
    typ = type(default)
    out = []
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            raise ValueError(f"--{name.replace('_', '-')}: empty value in {text!r}")
        try:
            out.append(typ(item) if typ is not bool else item.lower() in ("1", "true", "yes"))
        except ValueError:
            raise ValueError(f"--{name.replace('_', '-')}: {item!r} is not a {typ.__name__}") from None
    return out


def cmd_grid(args: argparse.Namespace) -> int:
    from ..workflows.grid import grid

    fam = get_family(args.family)
    options = {f.name: _parse_list(fam, f.name, getattr(args, f.name))
               for f in dataclasses.fields(fam.Config) if getattr(args, f.name) is not None}
    out = args.out or str(runs_root())
    bar = tqdm_progress(f"grid {fam.name}")
    try:
        res = grid(fam.name, options, out, ray=args.ray, workers=args.workers, progress=bar)
    finally:
        bar.close()
    obj = res.to_json()

    def text(o: dict[str, Any]) -> str:
        lines = [f"grid {o['family']}: {o['n_runs']} runs in {o['out']} ({o['executor'].get('executor')}, "
                 f"{o['total_s']:.1f} s), {o['n_failed']} failed"]
        for r in o["runs"]:
            if not r["ok"]:
                lines.append(f"  {r['name']}: FAILED after {r['attempts']} attempts: {r['error']}")
                continue
            how = "already complete" if r["skipped"] else (
                f"resumed from epoch {r['resumed_from']}" if r["resumed_from"] is not None else "trained")
            acc = r["final_metrics"].get("test_acc")
            lines.append(f"  {r['name']}: {how}" + ("" if acc is None else f", test acc {acc:.1%}"))
        return "\n".join(lines)

    emit(args, obj, text)
    if res.failed:
        raise ValueError(f"{len(res.failed)} of {len(res.rows)} runs failed "
                         f"(first: {res.failed[0]['name']}: {res.failed[0]['error']})")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("grid", help="train the product of option lists, one run per combination (resumable)")
    fams = p.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for name in list_families():
        fam = get_family(name)
        if not fam.offers("train"):
            continue
        fp = fams.add_parser(name, help=fam.title,
                             description=f"Each option takes a comma-separated list; every combination is a run "
                                         f"named {fam.name}-<option><value>-... under --out.")
        for f in dataclasses.fields(fam.Config):
            default = getattr(fam.Config(), f.name)
            fp.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, metavar="LIST",
                            help=f"{type(default).__name__} values, comma-separated (default {default})")
        fp.add_argument("--out", help="folder of the runs (default $ENTK_RUNS_DIR or ./runs)")
        add_executor_options(fp)
        fp.add_argument("--json", action="store_true")
        fp.set_defaults(func=cmd_grid)
