"""Grids of training runs: the product of option lists, one unit per run.

``grid("modadd-mlp", {"seed": [0, 1, 2], "p": [23, 29]}, "runs")`` trains the six runs
``runs/modadd-mlp-p23-seed0`` ... ``runs/modadd-mlp-p29-seed2`` through the executor seam
(:mod:`entk_core.workflows.executors`): in worker processes by default, on Ray with
``ray=``. Each run is a unit calling :func:`entk_core.workflows.training.train`, so a
finished run is returned as it is (``skipped``) and an interrupted one resumes from its last
checkpoint, exactly. The run folders are written by the workers: on a multi-node Ray
cluster the output folder must be on a filesystem every node sees at the same path.

Run names: ``FAMILY-`` followed by every option given (grid or fixed) as ``NAMEVALUE``, in
the order of the family's ``Config`` fields, joined by ``-`` (``modadd-mlp-p23-seed0``,
``tms-m10-sparsity0.3-seed0``): the same options always give the same folder.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..families.base import get_family
from .executors import Executor, Unit, UnitResult, make_executor

__all__ = ["GridResult", "grid_runs", "grid", "train_unit", "run_name"]

Progress = Callable[[int, int, str], None]


def _value_text(v: Any) -> str:
    text = f"{v:g}" if isinstance(v, float) else str(v)
    return re.sub(r"[^A-Za-z0-9.+]", "_", text)


def run_name(family: str, cfg: Any, given: Sequence[str]) -> str:
    """``FAMILY-<name><value>...`` over the ``given`` option names, in ``Config`` field order."""
    names = [f.name for f in dataclasses.fields(cfg) if f.name in set(given)]
    return "-".join([family] + [f"{n.replace('_', '')}{_value_text(getattr(cfg, n))}" for n in names])


def grid_runs(family: str, options: Mapping[str, Sequence[Any]]) -> list[tuple[str, Any]]:
    """``[(run name, config)]`` for the product of ``options`` (field name -> values), in
    lexicographic order of the options as the family's ``Config`` lists its fields.

    Raises ``ValueError`` (one line) for an unknown field, an empty list, a value of the wrong
    type, a duplicate value or a family that cannot be trained.
    """
    fam = get_family(family)
    if not fam.offers("train"):
        raise ValueError(f"the {fam.name} family has no training; grid trains runs")
    fields = {f.name: f for f in dataclasses.fields(fam.Config)}
    unknown = [k for k in options if k not in fields]
    if unknown:
        raise ValueError(f"unknown {fam.name} option(s) {unknown}; known: {', '.join(fields)}")
    order = [n for n in fields if n in options]
    lists = []
    for n in order:
        vals = list(options[n])
        if not vals:
            raise ValueError(f"--{n.replace('_', '-')} needs at least one value")
        if len(set(map(repr, vals))) != len(vals):
            raise ValueError(f"--{n.replace('_', '-')} lists a value twice: {vals}")
        lists.append(vals)
    out = []
    for combo in itertools.product(*lists):
        try:
            cfg = fam.config_from_dict(dict(zip(order, combo)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad grid option: {e}") from None
        out.append((run_name(fam.name, cfg, order), cfg))
    return out


def train_unit(family: str, config: dict[str, Any], out: str) -> dict[str, Any]:
    """Unit: train (or resume, or return as it is) one run; a JSON-able summary."""
    from ..families.run import Run
    from ..store.runs import MANIFEST
    from .training import train

    fam = get_family(family)
    cfg = fam.config_from_dict(config)
    path = Path(out)
    before = None
    if (path / MANIFEST).exists():
        prev = Run(path)
        before = {"status": prev.status, "epochs_done": prev.manifest.get("epochs_done", 0)}
    t0 = time.perf_counter()
    run = train(fam, cfg, path)
    info = run.info()
    skipped = before is not None and before["status"] == "complete"
    return {
        "name": run.name, "status": run.status, "skipped": skipped,
        "resumed_from": None if (before is None or skipped) else before["epochs_done"],
        "checkpoints": len(info["checkpoints"]), "final_metrics": info["final_metrics"],
        "train_s": round(time.perf_counter() - t0, 3),
    }


@dataclass
class GridResult:
    """Result of :func:`grid`: one row per run (in grid order), the executor, the wall time."""

    family: str
    out: str
    rows: list[dict[str, Any]]
    executor: dict[str, Any] = field(default_factory=dict)
    total_s: float = 0.0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if not r["ok"]]

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "out": self.out, "runs": self.rows, "executor": self.executor,
                "n_runs": len(self.rows), "n_failed": len(self.failed), "total_s": round(self.total_s, 3)}


def grid(family: str, options: Mapping[str, Sequence[Any]], out: Path | str, *, ray: bool | str | None = None,
         workers: int | None = None, executor: Executor | None = None,
         progress: Progress | None = None) -> GridResult:
    """Train every run of the grid into ``out`` (module docstring); failed runs are reported
    in the rows (``ok=False``, ``error``) after one retry, the others complete."""
    t0 = time.perf_counter()
    fam = get_family(family)
    runs = grid_runs(fam.name, options)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    units = [Unit(name, train_unit, {"family": fam.name, "config": dataclasses.asdict(cfg),
                                     "out": str((root / name).resolve())}) for name, cfg in runs]
    ex = executor or make_executor(ray=ray, workers=workers, n_units=len(units))
    try:
        results: list[UnitResult] = ex.run(units, progress=progress)
        desc = ex.describe()
    finally:
        if executor is None:
            ex.close()
    rows = []
    for (name, cfg), r in zip(runs, results):
        row = {"name": name, "config": dataclasses.asdict(cfg), "ok": r.ok, "attempts": r.attempts,
               "seconds": round(r.seconds, 3)}
        row.update(r.value if r.ok else {"error": r.error})
        rows.append(row)
    return GridResult(fam.name, str(root), rows, desc, time.perf_counter() - t0)
