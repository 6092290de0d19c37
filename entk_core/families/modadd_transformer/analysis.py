"""Transformer-specific analysis (paper spec §5): key frequencies, the unembedding
overlap report and the overlap over training.

Conventions
-----------
* **Key frequencies of a run** (:func:`run_key_frequencies`) are those of the *final*
  model (``summary()["key_frequencies"]`` of a complete run, else detected in the last
  checkpoint's embedding by :func:`entk_core.families.modadd_transformer.features.key_frequencies`). They are used at
  every epoch, as in the paper (the features a model ends up using, tracked back in time).
* **Mode blocks** (:func:`mode_blocks`): with ``F`` key frequencies the top unembedding
  modes split into ``[0, 2F+1)`` (the constant mode plus the ``2F``-dim ``sum`` subspace;
  the paper's ``0:5`` for ``F = 2``) and ``[2F+1, 4F+1)`` (the ``axis_sum`` subspace; the
  paper's ``5:9``). Feature families are mean-centred, so the constant mode in the first
  block costs nothing.
* Overlaps are :func:`entk_core.engine.measures.subspace_overlap` (``‖QᵀF‖_F²``, at most the
  family's dimension ``2F``); ``percent = 100·overlap / 2F`` (the paper's ``25·overlap``
  for ``F = 2``).
* Every eNTK goes through ``services.spectrum`` (an
  :class:`entk_core.families.base.AnalysisServices`, e.g. ``entk_core.workflows.services.Services()``:
  all-class mean reduction, top 40), so spectra are cached per checkpoint and shared with
  the CLI and dashboard. The over-training table is ``services.sweep`` with the mode
  blocks as fixed windows (:func:`sweep_spec`), cached as one entry.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ...engine.measures import subspace_overlap
from ...engine.spectra import labelled_cliffs
from ..base import AnalysisServices, SweepSpec
from ..run import Run
from .features import detect_key_frequencies
from .model import ModAddTransformerConfig

__all__ = [
    "FAMILY",
    "ALIGN_FAMILIES",
    "require_transformer",
    "run_key_frequencies",
    "key_frequency_report",
    "mode_blocks",
    "align_report",
    "sweep_spec",
    "overlap_sweep",
    "overlap_over_training",
    "accuracy_milestones",
]

FAMILY = "modadd-transformer"
ALIGN_FAMILIES = ("sum", "diff", "axis_sum", "axis_diff")
"""The families reported by :func:`align_report` (spec §5.4)."""
EXPECTED = ("sum", "axis_sum")
"""The family each mode block is expected to span (block 0: sum, block 1: axis_sum)."""

Progress = Callable[[int, int, str], None]


def require_transformer(run: Run) -> None:
    """``ValueError`` unless ``run`` is a run of this family (its config is this family's)."""
    if not isinstance(run.config, ModAddTransformerConfig):
        raise ValueError(f"run '{run.name}' is a {run.family.name} run; this analysis needs a {FAMILY} run")


def run_key_frequencies(run: Run) -> list[int]:
    """The run's key frequencies (final model; see the module docstring)."""
    require_transformer(run)
    kf = run.summary.get("key_frequencies")
    if kf:
        return [int(k) for k in kf]
    return key_frequency_report(run, None)["key_frequencies"]


def key_frequency_report(run: Run, epoch: int | None = None, model=None) -> dict[str, Any]:
    """Key frequencies and the per-frequency embedding Fourier power at ``epoch``
    (default: the last checkpoint). ``power[k-1]`` is frequency ``k``."""
    require_transformer(run)
    epoch = run.resolve_epoch(epoch)
    m = model if model is not None else run.load_model(epoch)
    kf = detect_key_frequencies(m.embed.weight, run.config.p)
    return {
        "epoch": epoch,
        "key_frequencies": [int(k) for k in kf.freqs],
        "rule": kf.rule,
        "ratio": float(kf.ratio),
        "frequencies": list(range(1, len(kf.power) + 1)),
        "power": [float(v) for v in kf.power],
    }


def mode_blocks(n_freqs: int) -> list[tuple[int, int]]:
    """``[(0, 2F+1), (2F+1, 4F+1)]`` for ``F`` key frequencies (paper: 0:5 and 5:9)."""
    if n_freqs < 1:
        raise ValueError("need at least one key frequency")
    a = 2 * n_freqs + 1
    return [(0, a), (a, a + 2 * n_freqs)]


def _families(run: Run, key_freqs: Sequence[int]):
    return run.family.feature_families(run.config, run.data, key_freqs=list(key_freqs))


def align_report(
    run: Run,
    epoch: int | None = None,
    *,
    services: AnalysisServices,
    group: str = "unembed",
    key_freqs: Sequence[int] | None = None,
    families: Sequence[str] = ALIGN_FAMILIES,
    top: int | None = None,
    model=None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Overlap of the top modes of ``group``'s eNTK with the key-frequency families.

    Returns a JSON-able dict: ``group``, ``key_frequencies``, ``blocks`` (one entry per
    mode block with ``modes`` ``[start, stop)``, ``expected`` family, and per family
    ``overlap``, ``dim``, ``percent`` and ``singular_values``), ``cliffs``, the top
    ``eigenvalues`` and the checkpoint's ``metrics``. Each block has a ``label`` (``"block 1"``,
    ``"block 2"``: fixed index ranges, not detected cliffs; block 1 includes the constant mode).
    """
    require_transformer(run)
    epoch = run.resolve_epoch(epoch)
    kf = list(key_freqs) if key_freqs else run_key_frequencies(run)
    fams = _families(run, kf)
    unknown = [f for f in families if f not in fams]
    if unknown:
        raise ValueError(f"unknown feature families {unknown}; choose from {', '.join(fams)}")
    blocks = mode_blocks(len(kf))
    res = services.spectrum(run, epoch, group=group, reduction="mean", top=top or run.family.default_top,
                            model=model, progress=progress)
    V = res.eigenvectors
    out_blocks = []
    for b, ((start, stop), expected) in enumerate(zip(blocks, EXPECTED)):
        if stop > V.shape[1]:
            raise ValueError(f"need {stop} eigenvectors for modes {start}:{stop}, the spectrum has {V.shape[1]}")
        entry: dict[str, Any] = {"label": f"block {b + 1}", "modes": [start, stop], "expected": expected,
                                 "families": {}}
        for name in families:
            ov, s = subspace_overlap(V[:, start:stop], fams[name])
            dim = 2 * len(kf)
            entry["families"][name] = {
                "overlap": round(float(ov), 6), "dim": dim, "percent": round(100.0 * ov / dim, 4),
                "singular_values": [round(float(x), 6) for x in s],
            }
        out_blocks.append(entry)
    return {
        "group": group,
        "reduction": "mean",
        "key_frequencies": kf,
        "blocks": out_blocks,
        "cliffs": labelled_cliffs(res.cliffs, res.eigenvectors),
        "eigenvalues": [float(v) for v in res.eigenvalues[: blocks[-1][1] + 1]],
        "metrics": run.metrics_at(epoch),
    }


def sweep_spec(run: Run, group: str = "unembed") -> SweepSpec:
    """The :class:`entk_core.families.base.SweepSpec` of the paper's Fig. 3 for this run: the
    ``group`` eNTK (mean reduction, top 40) at every checkpoint, the two mode blocks
    (:func:`mode_blocks`, as inclusive windows) against the :data:`ALIGN_FAMILIES` at the
    run's key frequencies, primary family ``sum``."""
    require_transformer(run)
    blocks = mode_blocks(len(run_key_frequencies(run)))
    return SweepSpec(group=group, reduction="mean", top=max(run.family.default_top, blocks[-1][1]),
                     families=ALIGN_FAMILIES, windows=tuple((a, b - 1) for a, b in blocks), primary="sum")


def overlap_sweep(run: Run, group: str = "unembed", *, services: AnalysisServices, progress: Progress | None = None):
    """``services.sweep`` with :func:`sweep_spec` (cached as one entry; every checkpoint's
    spectrum is cached too and shared with the CLI and the Spectrum page)."""
    return services.sweep(run, sweep_spec(run, group), progress=progress)


def overlap_over_training(
    run: Run,
    *,
    services: AnalysisServices,
    group: str = "unembed",
    family: str = "sum",
    block: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The overlap of one mode block with one family at every checkpoint, its first
    derivative and the accuracy curves: the per-epoch table behind the paper's Fig. 3.

    Args:
      block: ``0`` (modes ``0:2F+1``, expected ``sum``) or ``1`` (``2F+1:4F+1``, ``axis_sum``).
      family: one of :data:`ALIGN_FAMILIES`.
      progress: ``progress(done, total, message)`` per checkpoint.

    Returns a dict of columns ``epoch``, ``overlap``, ``percent``, ``d_percent``
    (:func:`entk_core.engine.measures.local_first_derivative` of ``percent``, points per logging
    step, as the paper plots it), ``train_acc``, ``test_acc`` (``None`` if unknown), plus
    ``key_frequencies``, ``modes`` ``[start, stop)``, ``family``, ``dim``,
    ``derivative_peak_epoch`` (of this curve), ``grokking_onset``
    (:func:`entk_core.engine.measures.grokking_onset` on the every-epoch test accuracy, chance
    ``1/p``) and ``accuracy_milestones`` (:func:`accuracy_milestones`).
    """
    require_transformer(run)
    if family not in ALIGN_FAMILIES:
        raise ValueError(f"unknown feature family '{family}'; choose from {', '.join(ALIGN_FAMILIES)}")
    if block not in (0, 1):
        raise ValueError(f"block must be 0 or 1, got {block!r}")
    res = overlap_sweep(run, group, services=services, progress=progress)
    k = res.family_index(family)
    w = res.windows[block]
    col = lambda a: [None if not np.isfinite(v) else float(v) for v in a]  # noqa: E731
    peak = res.peaks[block, k]
    return {
        "epoch": [int(e) for e in res.epochs],
        "overlap": col(res.overlap[:, block, k]),
        "percent": col(res.percent[:, block, k]),
        "d_percent": col(res.derivative[:, block, k]),
        "train_acc": col(res.train_acc),
        "test_acc": col(res.test_acc),
        "group": group,
        "family": family,
        "modes": [w.start, w.end + 1],
        "dim": int(res.dims[k]),
        "key_frequencies": run_key_frequencies(run),
        "derivative_peak_epoch": float(peak) if np.isfinite(peak) else None,
        "grokking_onset": res.onset_epoch,
        "accuracy_milestones": accuracy_milestones(run),
    }


def accuracy_milestones(run: Run, levels: Sequence[float] = (0.1, 0.5, 0.9, 1.0), key: str = "test_acc") -> dict[str, int | None]:
    """For each level, the first logged epoch from which ``key`` stays at or above it
    (``None`` if it never does). Keys are percentages, e.g. ``"90%"``."""
    m = run.metrics
    e = np.asarray(m.get("epoch", []))
    a = np.asarray([np.nan if v is None else v for v in m.get(key, [])], dtype=float)
    out: dict[str, int | None] = {}
    for lv in levels:
        below = np.flatnonzero(~(a >= lv - 1e-9))
        j = 0 if below.size == 0 else int(below[-1]) + 1
        out[f"{round(100 * lv)}%"] = int(e[j]) if j < e.size else None
    return out
