"""Command line: ``python -m entk_core COMMAND ...``.

Commands print human-readable text, or one JSON document on stdout with ``--json``.
Progress bars go to stderr. Any failure is a single ``error: ...`` line on stderr and
a non-zero exit status (2 for bad input, 1 for anything unexpected, 130 when
interrupted); set ``ENTK_DEBUG=1`` to see tracebacks.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Sequence

from . import analysis
from .models import get_family, list_families
from .runs import RunError, open_run, runs_root

__all__ = ["main", "build_parser", "one_line", "tqdm_progress"]


class _Progress:
    """A ``progress(done, total, message)`` callback drawing a tqdm bar on stderr."""

    def __init__(self, desc: str, mode: str = "auto"):
        # mode "auto": draw only on a terminal; "on": always; "off": never.
        self.desc, self.bar = desc, None
        self.enabled = mode == "on" or (mode == "auto" and sys.stderr.isatty())

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, file=sys.stderr, leave=False, dynamic_ncols=True)
        self.bar.total = total
        self.bar.n = done
        if message:
            self.bar.set_postfix_str(message, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def tqdm_progress(desc: str) -> _Progress:
    return _Progress(desc, mode=os.environ.get("ENTK_PROGRESS", "auto"))


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: Callable[[dict[str, Any]], str]) -> None:
    if args.json:
        print(json.dumps(obj, indent=1, allow_nan=False, default=float))
    else:
        print(text(obj))


# ----------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    fam = get_family(args.family)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(fam.Config) if getattr(args, f.name) is not None}
    cfg = fam.Config(**overrides)
    out = args.out or str(runs_root() / f"{fam.name}-seed{cfg.seed}")
    bar = tqdm_progress(f"train {fam.name}")
    try:
        run = train(fam, cfg, out, progress=bar)
    finally:
        bar.close()
    info = run.info()
    _emit(args, info, lambda i: (
        f"run {i['name']} ({i['family']}) {i['status']}: {len(i['checkpoints'])} checkpoints in {run.path}\n"
        + "final " + ", ".join(f"{k} {v:.4g}" for k, v in i["final_metrics"].items() if isinstance(v, float))
    ))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    run = open_run(args.run)
    info = run.info()
    info["groups"] = analysis.kernel_groups(run)

    def text(i: dict[str, Any]) -> str:
        lines = [f"{i['name']}: {i['family']} ({i['status']})", f"  path: {i['path']}",
                 "  config: " + ", ".join(f"{k}={v}" for k, v in i["config"].items()),
                 f"  checkpoints: {len(i['checkpoints'])} (epochs {i['checkpoints'][0]}..{i['checkpoints'][-1]})" if i["checkpoints"] else "  checkpoints: none",
                 "  final: " + ", ".join(f"{k}={v:.4g}" for k, v in i["final_metrics"].items() if isinstance(v, float)),
                 "  layer groups: " + ", ".join(i["groups"])]
        extra = {k: v for k, v in i.items() if k not in {"name", "family", "status", "path", "config", "checkpoints", "final_metrics", "groups"}}
        lines += [f"  {k}: {v}" for k, v in extra.items()]
        return "\n".join(lines)

    _emit(args, info, text)
    return 0


def cmd_spectrum(args: argparse.Namespace) -> int:
    run = open_run(args.run)
    bar = tqdm_progress("eNTK")
    try:
        res = analysis.spectrum(run, args.epoch, group=args.group, reduction=args.reduction,
                                top=args.top, beta=args.beta, progress=bar)
    finally:
        bar.close()
    obj = res.to_json()

    def text(o: dict[str, Any]) -> str:
        cl = ", ".join(f"[{c['start']}..{c['end']}] size {c['size']} (drop x{c['ratio']:.2f})" for c in o["cliffs"]) or "none"
        ev = o["eigenvalues"]
        return (f"{o['run']} epoch {o['epoch']} group {o['group']} reduction {o['reduction']}: top {o['top']} of n={o['n']}\n"
                f"  eigenvalues: {ev[0]:.4g} ... {ev[-1]:.4g}\n  cliffs: {cl}\n"
                f"  time: {o['timing']['total_s']:.2f} s ({o['cache']})")

    _emit(args, obj, text)
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    run = open_run(args.run)
    epoch = run.resolve_epoch(args.epoch)
    bar = tqdm_progress("align")
    try:
        report = run.family.align_report(run, epoch, group=args.group, beta=args.beta, progress=bar)
    finally:
        bar.close()
    report = {"run": run.name, "family": run.family.name, "epoch": epoch, **report}
    _emit(args, report, lambda r: json.dumps(r, indent=1, default=float))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from . import sweep

    run = open_run(args.run)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip()) if args.families else None
    spec = sweep.default_spec(run, args.group, reduction=args.reduction, top=args.top, families=families,
                              window_group=args.window_group, primary=args.primary)
    bar = tqdm_progress(f"sweep {args.group}")
    try:
        res = sweep.sweep(run, spec, progress=bar)
    finally:
        bar.close()
    obj = res.to_json()

    def text(o: dict[str, Any]) -> str:
        fams = list(o["families"])
        lines = [f"{o['run']}: sweep of the {o['group']} eNTK ({o['reduction']}) over {len(o['table'])} checkpoints "
                 f"({o['cache']}, {o['total_s']:.1f} s); windows from {o['window_group']} at epoch {o['reference_epoch']}",
                 "  windows: " + ", ".join(f"{w['label']} [{w['start']}..{w['end']}]" for w in o["windows"]),
                 f"  grokking onset: {o['onset_epoch']}; overlap-derivative peak: {o['peak_epoch']}"
                 + (f" ({o['primary']['window']} vs {o['primary']['family']})" if o["primary"] else ""),
                 "  % overlap of each window with " + "/".join(fams) + " (test acc):"]
        for row in o["table"]:
            acc = "–" if row["test_acc"] is None else f"{row['test_acc']:.0%}"
            cells = "  ".join(f"{lab}: " + "/".join("–" if v is None else f"{v:.0f}" for v in ov.values())
                              for lab, ov in row["overlap_pct"].items())
            lines.append(f"    epoch {row['epoch']:>5} ({acc:>4})  {cells}")
        return "\n".join(lines)

    _emit(args, obj, text)
    return 0


# ------------------------------------------------------------------- parser
def _add_family_options(p: argparse.ArgumentParser, fam) -> None:
    for f in dataclasses.fields(fam.Config):
        default = getattr(fam.Config(), f.name)
        typ = type(default)
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=typ, default=None,
                       metavar=typ.__name__.upper(), help=f"(default {default})")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m entk_core", description="eNTK Explorer: train models, compute eNTK spectra, align them with features.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model family into a run folder (resumes an interrupted run)")
    fams = p.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for name in list_families():
        fam = get_family(name)
        fp = fams.add_parser(name, help=fam.title)
        _add_family_options(fp, fam)
        fp.add_argument("--out", help="run folder (default runs/FAMILY-seedSEED)")
        fp.add_argument("--json", action="store_true", help="print the run's info as JSON")
        fp.set_defaults(func=cmd_train)

    p = sub.add_parser("info", help="config, checkpoints and summary metrics of a run")
    p.add_argument("run", help="run folder, or a name under $ENTK_RUNS_DIR (default ./runs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

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
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sweep)

    sub.add_parser("bench", help="benchmark the eNTK paths against the reference (bench --help)")
    return ap


def one_line(e: BaseException) -> str:
    """The first line of an exception's message: the CLI's and the dashboard's error format."""
    msg = str(e).strip().splitlines()
    return msg[0] if msg else e.__class__.__name__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the benchmark has its own parser (python -m entk_core bench --help)
        from . import bench

        return int(bench.main(argv[1:]) or 0)
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. `... | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("error: interrupted (nothing saved is lost; `train` resumes from the last checkpoint)", file=sys.stderr)
        return 130
    except (RunError, ValueError, FileNotFoundError, PermissionError, MemoryError) as e:
        if os.environ.get("ENTK_DEBUG"):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the CLI never shows a traceback
        if os.environ.get("ENTK_DEBUG"):
            raise
        print(f"error: unexpected {e.__class__.__name__}: {one_line(e)} (set ENTK_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
