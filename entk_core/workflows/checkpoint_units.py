"""One checkpoint as a unit of work: what travels to a worker, and how the worker opens the run.

The per-checkpoint commands (``sweep``: one spectrum per checkpoint; ``dynamics``: one kernel
and its measures per checkpoint) run one unit per checkpoint through the executor seam
(:mod:`entk_core.workflows.executors`). A unit's arguments are plain values:

* where the run is: the run folder's path (workers on this machine), or, when the units
  *ship* (Ray, or an executor given by the caller), the manifest and the checkpoint's
  safetensors bytes, so a worker on another machine needs no shared filesystem
  (:func:`unit_location`);
* how to find the family: its name, and ``module:Class`` for a family that no entry point
  declares (registered at run time in the driver; :func:`family_kwargs`).

The worker opens the run with :func:`open_unit_run` (rebuilt in a private temporary folder
from the shipped bytes, checked against the manifest's sha256 when read, like any
checkpoint). A family defined in ``__main__`` cannot be imported by a worker: such runs use
the :class:`~entk_core.workflows.executors.InlineExecutor` (:func:`choose_executor`).
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..families.base import family_ref, get_family, load_family_ref
from ..families.run import Run
from ..store.runs import MANIFEST
from .executors import Executor, InlineExecutor, make_executor

__all__ = ["checkpoints_digest", "unit_location", "family_kwargs", "open_unit_run", "choose_executor"]


def checkpoints_digest(run: Run) -> str:
    """sha256 over the run's ``(epoch, checkpoint sha256)`` list: part of every per-run cache
    key, so a run that gains or changes a checkpoint gets a new key."""
    items = [(e, run.checkpoint_sha(e)) for e in run.epochs]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def unit_location(run: Run, epoch: int, *, ship: bool) -> dict[str, Any]:
    """The run folder's path, or (``ship``) the manifest and the checkpoint's bytes."""
    if ship:
        return {"manifest": run.manifest, "checkpoint": run.checkpoint_path(epoch).read_bytes()}
    return {"run_path": str(run.path.resolve())}


def family_kwargs(run: Run) -> dict[str, Any]:
    """``{"family": name, "family_ref": module:Class or None}`` for a unit."""
    return {"family": run.family.name, "family_ref": family_ref(run.family)}


@contextmanager
def open_unit_run(*, epoch: int, family: str, family_ref: str | None = None, run_path: str | None = None,
                  manifest: dict | None = None, checkpoint: bytes | None = None) -> Iterator[Run]:
    """The unit's :class:`Run`: the folder ``run_path``, or a private temporary run holding just
    ``epoch``'s checkpoint, rebuilt from the shipped ``manifest`` and ``checkpoint`` bytes
    (removed on exit). A family that no entry point declares is imported from ``family_ref``."""
    try:
        get_family(family)
    except ValueError:
        if family_ref is None:
            raise
        load_family_ref(family_ref, name=family)
    if run_path is not None:
        yield Run(run_path)
        return
    entry = next(c for c in manifest["checkpoints"] if c["epoch"] == epoch)
    with tempfile.TemporaryDirectory(prefix="entk-unit-") as tmp:
        folder = Path(tmp) / "run"
        (folder / Path(entry["file"]).parent).mkdir(parents=True)
        (folder / entry["file"]).write_bytes(checkpoint)
        (folder / MANIFEST).write_text(json.dumps({**manifest, "checkpoints": [entry]}))
        yield Run(folder)


def choose_executor(run: Run, *, executor: Executor | None, ray: bool | str | None, workers: int | None,
                    n_units: int) -> Executor:
    """``executor`` if given; in-process for a family a worker cannot import; else
    :func:`~entk_core.workflows.executors.make_executor` for the options."""
    if executor is not None:
        return executor
    if family_ref(run.family) is None:
        return InlineExecutor()  # a family registered at run time only exists in this process
    return make_executor(ray=ray, workers=workers, n_units=n_units)
