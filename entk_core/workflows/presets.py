"""The paper's named runs, trained with progress: what the dashboard offers to train.

Each :class:`Preset` names a run folder, a family and the config overrides of one of the
paper's experiments, so a page (or a notebook) trains them with one call and knows no
family or hyperparameter itself::

    from entk_core.workflows.presets import PRESETS, train_preset

    run = train_preset("modadd-mlp-p29-seed0", progress=bar)   # ~10-20 s on 2 cores

:func:`train_preset` is :func:`entk_core.workflows.training.train` into the runs folder:
an existing complete run is returned as is, an interrupted one resumes, and a folder
another process is writing is refused at once (one-line :class:`RunError`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..families.base import get_family
from ..families.run import Run
from ..store.runs import runs_root
from .training import train

__all__ = ["Preset", "PRESETS", "DEMO", "presets_for", "train_preset", "preset_job", "train_values"]

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Preset:
    """A named run: ``family`` trained with ``overrides`` of its default config into the
    runs-folder entry ``name``; ``about`` says what it is and roughly how long it takes."""

    name: str
    family: str
    overrides: dict[str, Any] = field(default_factory=dict)
    about: str = ""

    def config(self) -> Any:
        fam = get_family(self.family)
        return fam.config_from_dict(dict(self.overrides))


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("modadd-mlp-p29-seed0", "modadd-mlp", {},
           "the paper's modular-addition MLP (p = 29, width 512, 500 epochs, seed 0): 10-20 s on 2 cores"),
    Preset("tms-m10-s0.3-seed0", "tms", {"m": 10, "sparsity": 0.3, "seed": 0},
           "TMS, m = 10, S = 0.3 (dense; paper: 10 represented features): 15-30 s"),
    Preset("tms-m10-s0.9-seed0", "tms", {"m": 10, "sparsity": 0.9, "seed": 0},
           "TMS, m = 10, S = 0.9 (sparse, high superposition; paper: 21): 15-30 s"),
    Preset("tms-m40-s0.9-seed0", "tms", {"m": 40, "sparsity": 0.9, "seed": 0},
           "TMS, m = 40, S = 0.9 (paper: 42): 15-30 s"),
    Preset("modadd-transformer-p29-seed2", "modadd-transformer", {"seed": 2},
           "the paper's 1-layer Transformer (p = 29, seed 2, 4,000 epochs): a few minutes"),
)}
"""The paper's runs by name."""

DEMO = "modadd-mlp-p29-seed0"
"""The preset the dashboard offers when the runs folder is empty."""


def presets_for(family: str) -> list[Preset]:
    """The presets of one family, in the paper's order."""
    return [p for p in PRESETS.values() if p.family == family]


def train_preset(name: str, root: Path | str | None = None, *, progress: Progress | None = None) -> Run:
    """Train (or resume, or return) the preset ``name`` into ``root/name`` (default root: the
    runs folder). ``progress(done, total, message)`` after every epoch; it may raise to
    cancel (the run resumes later from its last checkpoint)."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset '{name}'; known: {', '.join(PRESETS)}") from None
    root = Path(root) if root is not None else runs_root()
    return train(preset.family, preset.config(), root / preset.name, progress=progress)


def preset_job(name: str) -> dict[str, Any]:
    """A :class:`~entk_core.workflows.jobs.Job` step training the preset ``name`` into the runs
    folder: the preset resolved here, into plain values (:func:`train_values`), so the worker
    trains exactly what this process's :data:`PRESETS` says."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset '{name}'; known: {', '.join(PRESETS)}") from None
    return {"target": "entk_core.workflows.presets:train_values",
            "kwargs": {"name": preset.name, "family": preset.family, "overrides": dict(preset.overrides)}}


def train_values(*, name: str, family: str, overrides: dict[str, Any], progress: Progress | None = None) -> None:
    """Train ``family`` with ``overrides`` of its default config into the runs-folder entry
    ``name`` (resume or return as :func:`train_preset` does): a preset as plain values."""
    cfg = get_family(family).config_from_dict(dict(overrides))
    train(family, cfg, runs_root() / name, progress=progress)
