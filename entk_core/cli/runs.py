"""CLI commands about runs and families: ``families``, ``train``, ``import`` and ``info``."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..families.base import family_errors, family_origin, get_family, list_families
from ..families.run import open_run
from ..store.runs import runs_root
from ..workflows import analysis
from .common import add_family_options, emit, tqdm_progress

__all__ = ["add_commands"]


def cmd_train(args: argparse.Namespace) -> int:
    from ..workflows.training import train

    fam = get_family(args.family)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(fam.Config) if getattr(args, f.name) is not None}
    cfg = fam.config_from_dict(overrides)  # types, ranges and memory, one line naming the field
    out = args.out or str(runs_root() / f"{fam.name}-seed{cfg.seed}")
    bar = tqdm_progress(f"train {fam.name}")
    try:
        run = train(fam, cfg, out, progress=bar)
    finally:
        bar.close()
    info = run.info()
    emit(args, info, lambda i: (
        f"run {i['name']} ({i['family']}) {i['status']}: {len(i['checkpoints'])} checkpoints in {run.path}\n"
        + "final " + ", ".join(f"{k} {v:.4g}" for k, v in i["final_metrics"].items() if isinstance(v, float))
    ))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from ..workflows.importing import import_run, parse_checkpoint_args, read_config

    fam = get_family(args.family)
    cfg = read_config(fam, args.config)
    checkpoints = parse_checkpoint_args(args.checkpoint or [])
    bar = tqdm_progress(f"import {fam.name}")
    try:
        run = import_run(fam, cfg, checkpoints, args.out, progress=bar,
                         config_file=None if args.config is None else Path(args.config).name)
    finally:
        bar.close()
    info = run.info()
    emit(args, info, lambda i: f"imported {len(i['checkpoints'])} checkpoints of {i['family']} into {run.path}")
    return 0


def cmd_families(args: argparse.Namespace) -> int:
    fams = []
    for name in list_families():
        fam = get_family(name)
        fams.append({"name": name, "title": fam.title, "origin": family_origin(name),
                     "class": f"{type(fam).__module__}:{type(fam).__qualname__}",
                     "default_reduction": fam.default_reduction,
                     "offers": [w for w in fam.CAPABILITIES if fam.offers(w)]})
    obj = {"families": fams, "errors": family_errors()}

    def text(o: dict[str, Any]) -> str:
        lines = [f"{f['name']:<22} {f['title']}  [{f['origin']}]  offers: {', '.join(f['offers'])}" for f in o["families"]]
        lines += [f"{n:<22} cannot be loaded: {err}" for n, err in o["errors"].items()]
        return "\n".join(lines) or "no model families found"

    emit(args, obj, text)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    run = open_run(args.run)
    info = run.info()
    info["groups"] = analysis.kernel_groups(run)

    def text(i: dict[str, Any]) -> str:
        lines = [f"{i['name']}: {i['family']} ({i['status']})", f"  path: {i['path']}",
                 "  config: " + ", ".join(f"{k}={v}" for k, v in i["config"].items()),
                 (f"  checkpoints: {len(i['checkpoints'])} (epochs {i['checkpoints'][0]}..{i['checkpoints'][-1]})"
                  if i["checkpoints"] else "  checkpoints: none"),
                 "  final: " + ", ".join(f"{k}={v:.4g}" for k, v in i["final_metrics"].items() if isinstance(v, float)),
                 "  layer groups: " + ", ".join(i["groups"])]
        if i.get("import"):
            imp = i["import"]
            lines.insert(3, f"  imported: epochs {', '.join(map(str, imp['epochs']))}"
                            + (f" with config {imp['config_file']} " if imp.get("config_file") else " ")
                            + json.dumps(imp["config"]))
        if i.get("unvouched_metrics"):
            um = i["unvouched_metrics"]
            lines.append(f"  not vouched for ({', '.join(um['keys'])}): {um['reason']}")
        shown = {"name", "family", "status", "path", "config", "checkpoints", "final_metrics", "groups", "import",
                 "unvouched_metrics", "imported"}
        extra = {k: v for k, v in i.items() if k not in shown}
        lines += [f"  {k}: {v}" for k, v in extra.items()]
        return "\n".join(lines)

    emit(args, info, text)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("families", help="the model families found (built-in and installed plug-ins)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_families)

    p = sub.add_parser("train", help="train a model family into a run folder (resumes an interrupted run)")
    fams = p.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for name in list_families():
        fam = get_family(name)
        if not fam.offers("train"):
            continue
        fp = fams.add_parser(name, help=fam.title)
        add_family_options(fp, fam)
        fp.add_argument("--out", help="run folder (default runs/FAMILY-seedSEED)")
        fp.add_argument("--json", action="store_true", help="print the run's info as JSON")
        fp.set_defaults(func=cmd_train)

    p = sub.add_parser("import", help="import checkpoints trained elsewhere (safetensors) as a run folder")
    p.add_argument("family", metavar="FAMILY", help="a model family (python -m entk_core families lists them)")
    p.add_argument("--config", default=None, metavar="CONFIG.json",
                   help="the family's config as a JSON object (missing fields keep their defaults)")
    p.add_argument("--checkpoint", action="append", metavar="EPOCH=FILE.safetensors", required=True,
                   help="a state dict and its epoch; repeat for each checkpoint")
    p.add_argument("--out", required=True, help="the new run folder (must not exist, or be empty)")
    p.add_argument("--json", action="store_true", help="print the run's info as JSON")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("info", help="config, checkpoints and summary metrics of a run")
    p.add_argument("run", help="run folder, or a name under $ENTK_RUNS_DIR (default ./runs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
