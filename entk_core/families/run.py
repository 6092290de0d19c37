"""Runs opened with their model family.

:class:`Run` is a :class:`entk_core.store.runs.RunRecord` (the validated manifest and its
checkpoints, family-agnostic) plus its :class:`~entk_core.families.base.ModelFamily`, the
typed config, the dataset and the model. Everything above this layer (workflows, CLI,
dashboard) works with a ``Run``; the store below never needs to know families.
"""
from __future__ import annotations

from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..engine.kernels import layer_groups
from ..store.runs import RunError, RunRecord, list_run_folders, one_line, resolve_run_path
from .base import FULL, Dataset, ModelFamily, get_family

__all__ = ["Run", "open_run", "list_runs"]


class Run(RunRecord):
    """A run folder with a validated manifest and its model family. Cheap to construct
    (reads the manifest; data and models load lazily).

    Raises :class:`~entk_core.store.runs.RunError` (one line naming the manifest) for
    everything :class:`RunRecord` checks, an unknown family, or a config the family rejects.
    """

    def __init__(self, path: Path | str):
        super().__init__(path)
        mpath = self.manifest_path
        try:
            self.family: ModelFamily = get_family(self.family_name)
        except ValueError as e:
            raise RunError(f"{mpath}: {one_line(e)}") from None
        try:
            self.config = self.family.config_from_dict(self.config_dict)
        except (ValueError, TypeError, OverflowError) as e:
            raise RunError(f"{mpath}: bad config ({one_line(e)})") from None

    @cached_property
    def data(self) -> Dataset:
        """The run's dataset (``family.make_data(config)``, built once)."""
        return self.family.make_data(self.config)

    def load_state(self, epoch: int | None = None) -> dict[str, torch.Tensor]:
        """The validated state dict at ``epoch``: structure, sha256, finiteness and the
        family's model (names and shapes)."""
        entry = self.checkpoint_entry(epoch)
        state = self.load_tensors(entry["epoch"])
        try:
            self.family.validate_state(self.config, state)
        except ValueError as e:
            raise RunError(f"{self.checkpoint_path(entry['epoch'])}: {e}") from None
        return state

    def load_model(self, epoch: int | None = None) -> torch.nn.Module:
        """The model at ``epoch`` (default: the last checkpoint) in eval mode."""
        model = self.family.build_model(self.config)
        model.load_state_dict(self.load_state(epoch))
        return model.eval()

    # -------------------------------------------------------------- layer groups
    @cached_property
    def _base_groups(self) -> list[str]:
        return list(layer_groups(self.family.build_model(self.config)))

    def groups(self) -> list[str]:
        """``["full", <each layer group in model order>, <derived groups>]``."""
        return [FULL, *self._base_groups, *self.family.derived_groups]

    def group_members(self, group: str) -> list[str] | None:
        """The base layer groups making up ``group`` (``None`` = all parameters);
        ``ValueError`` naming the valid groups for an unknown one."""
        if group == FULL:
            return None
        derived = self.family.derived_groups
        if group in derived:
            return list(derived[group])
        if group not in self._base_groups:
            raise ValueError(f"unknown layer group '{group}' for {self.family.name}; "
                             f"choose one of: {', '.join(self.groups())}")
        return [group]

    def info(self) -> dict[str, Any]:
        """JSON-able description: the family's summary, config, checkpoints and last metrics;
        for an imported run also what was imported (``import``) and the metrics it cannot
        vouch for (``unvouched_metrics``)."""
        m = self.metrics
        last = {k: (v[-1] if v else None) for k, v in m.items()}
        out = {
            **self.summary,
            "name": self.name,
            "path": str(self.path),
            "family": self.family.name,
            "status": self.status,
            "config": asdict(self.config),
            "checkpoints": self.epochs,
            "final_metrics": last,
        }
        if self.unvouched_metrics is not None:
            out["unvouched_metrics"] = self.unvouched_metrics
        if "import" in self.manifest:
            out["import"] = self.manifest["import"]
        return out


def open_run(run: str | Path, root: Path | str | None = None, *, confine: bool = False) -> Run:
    """Open and validate a run (see :func:`entk_core.store.runs.resolve_run_path` for
    ``run``, ``root`` and ``confine``)."""
    return Run(resolve_run_path(run, root, confine=confine))


def list_runs(root: Path | str | None = None) -> list[tuple[str, Run | RunError]]:
    """Every sub-folder of ``root`` (default: the runs folder) holding a manifest, sorted by
    name, as ``(name, Run)`` or ``(name, RunError)`` for runs that cannot be opened."""
    out: list[tuple[str, Run | RunError]] = []
    for name, item in list_run_folders(root):
        if isinstance(item, RunError):
            out.append((name, item))
            continue
        try:
            out.append((name, Run(item)))
        except RunError as e:
            out.append((name, e))
    return out
