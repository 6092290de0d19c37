"""Alignment measures shared by the CLI, the ``export`` command and the dashboard: the
overlap of spectral windows with feature families beside the PCA and random baselines,
and the principal angles between the top eigenspaces of two checkpoints.

Conventions: eigenvectors ``V`` are ``(N, k)`` over the kernel inputs; a window is an
inclusive index range ``(start, end)``; overlaps are ``‖QᵀF‖²_F`` against each mean-centred
family (:func:`entk_core.workflows.sweep.windows_overlaps`), out of the family's
dimension; ``percent = 100 · overlap / dim``. The baselines get the same budget as the
window (its size): the top principal directions of the family's hidden activations
(:mod:`entk_core.workflows.baselines`) and a seeded random subspace.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .baselines import hidden_activations, pca_directions, pca_profile, random_directions

__all__ = ["window_table", "principal_angles", "compare_spectra", "baseline_overlaps"]


def _bases(families) -> dict[str, np.ndarray]:
    from .sweep import family_bases

    return family_bases(families)


def baseline_overlaps(H: np.ndarray | None, sizes: Sequence[int], bases: dict[str, np.ndarray], *,
                      seed: int = 0) -> dict[str, list[dict[str, float]]]:
    """For each window size: the overlap of the top-``size`` PCA directions of ``H`` and of
    a random ``size``-dim subspace with each family basis. ``{"pca": [...], "random": [...]}``,
    one ``{family: overlap}`` per size (``pca`` entries are ``None`` without ``H``)."""
    from .sweep import window_overlaps

    n = next(iter(bases.values())).shape[0] if bases else 0
    out: dict[str, list] = {"pca": [], "random": []}
    for j, k in enumerate(sizes):
        if H is not None:
            P = pca_directions(H, int(k))
            out["pca"].append({f: round(float(v), 4) for f, v in zip(bases, window_overlaps(P, bases))})
        else:
            out["pca"].append(None)
        R = random_directions(n, int(k), seed=seed + j)
        out["random"].append({f: round(float(v), 4) for f, v in zip(bases, window_overlaps(R, bases))})
    return out


def window_table(V: np.ndarray, windows: Sequence[tuple[str, int, int]], families, *, H: np.ndarray | None = None,
                 seed: int = 0, bases: dict[str, np.ndarray] | None = None) -> list[dict[str, Any]]:
    """One row per window ``(label, start, end)``: its eNTK overlap with each family, and the
    PCA and random baselines with the same budget. Rows: ``{"window", "start", "end", "size",
    "family", "dim", "entk", "pca", "random"}`` (overlaps; ``pca`` ``None`` without ``H``).
    ``bases``: :func:`entk_core.engine.measures.family_bases` of ``families`` (computed if omitted)."""
    from .sweep import windows_overlaps

    bases = bases if bases is not None else _bases(families)
    inside = [w for w in windows if w[2] < V.shape[1]]
    if not inside or not bases:
        return []
    ent = windows_overlaps(V, [(s, e) for _, s, e in inside], bases)
    base = baseline_overlaps(H, [e - s + 1 for _, s, e in inside], bases, seed=seed)
    rows = []
    for j, (label, s, e) in enumerate(inside):
        for k, (f, B) in enumerate(bases.items()):
            rows.append({"window": label, "start": int(s), "end": int(e), "size": int(e - s + 1), "family": f,
                         "dim": int(B.shape[1]), "entk": round(float(ent[j, k]), 4),
                         "pca": None if base["pca"][j] is None else base["pca"][j][f],
                         "random": base["random"][j][f]})
    return rows


def principal_angles(U: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Principal angles (degrees, ascending) between the column spans of ``U`` ``(N, k)`` and
    ``W`` ``(N, k')``: ``arccos`` of the singular values of ``QᵤᵀQ_w`` (orthonormal bases)."""
    from ..engine.measures import orthonormal_basis

    Qu, Qw = orthonormal_basis(np.asarray(U, dtype=np.float64)), orthonormal_basis(np.asarray(W, dtype=np.float64))
    s = np.linalg.svd(Qu.T @ Qw, compute_uv=False)
    return np.degrees(np.arccos(np.clip(s, -1.0, 1.0)))


def compare_spectra(a, b, k: int) -> dict[str, Any]:
    """Compare two spectrum results (:class:`entk_core.workflows.analysis.SpectrumResult`) of
    the same kernel rows: principal angles between their top-``k`` eigenspaces, and the
    overlap ``‖QₐᵀQ_b‖²_F / k`` (1 = the same subspace)."""
    k = int(min(k, a.eigenvectors.shape[1], b.eigenvectors.shape[1]))
    if a.eigenvectors.shape[0] != b.eigenvectors.shape[0]:
        raise ValueError(f"the two kernels have different rows ({a.eigenvectors.shape[0]} vs "
                         f"{b.eigenvectors.shape[0]}); compare runs with the same data")
    ang = principal_angles(a.eigenvectors[:, :k], b.eigenvectors[:, :k])
    return {"k": k, "angles_deg": ang, "overlap": float(np.sum(np.cos(np.radians(ang)) ** 2) / max(k, 1))}


def pca_for(run, epoch: int, model=None) -> np.ndarray | None:
    """:func:`entk_core.workflows.baselines.hidden_activations` (``None`` if the family has none)."""
    return hidden_activations(run, epoch, model=model)


__all__ += ["pca_for"]


def grokking_sweep(run, group: str = "full", *, cache=None, progress=None):
    """The family's per-checkpoint sweep of ``group``
    (:func:`entk_core.workflows.sweep.sweep` with :func:`~entk_core.workflows.sweep.default_spec`),
    with JSON-able arguments only (a :class:`~entk_core.workflows.jobs.Job` target)."""
    from . import sweep as _sweep

    return _sweep.sweep(run, _sweep.default_spec(run, group), cache=cache, progress=progress)


def pca_over_training(run, sizes: Sequence[int], families: Sequence[str], *, cache=None, progress=None,
                      seed: int = 0) -> np.ndarray:
    """The PCA baseline at every checkpoint: ``(E, len(sizes), len(families))`` overlaps of the
    top-``size`` principal directions of the family's hidden activations with each feature
    family (mean-centred, as the sweep measures the eNTK windows). Read from the run's
    :func:`entk_core.workflows.baselines.pca_profile` (computed once per run, for every size
    and family: a new choice of families or window is answered from the cache).
    ``ValueError`` if the family declares no hidden activations or a family is unknown."""
    return pca_profile(run, cache=cache, progress=progress).overlaps(sizes, families)


__all__ += ["grokking_sweep", "pca_over_training"]


def feature_families_for(run, epoch: int | None = None, *, model=None, rows: int | None = None) -> dict:
    """The family's ground-truth feature families whose rows match the kernel (``rows``,
    default: the number of kernel inputs), built from the model at ``epoch`` (default: last)."""
    from ..families.features import families_with_rows

    epoch = run.resolve_epoch(epoch)
    m = model if model is not None else run.load_model(epoch)
    fams = run.family.feature_families(run.config, run.data, m)
    return families_with_rows(fams, rows if rows is not None else len(run.data.kernel_idx))


def direction_correlations(dirs: np.ndarray, families: dict, chosen: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Phase-insensitive correlations ``(rows, k)`` of directions ``(N, k)`` with the stacked
    banks of the ``chosen`` families (rows labelled ``"a k=3"``...)."""
    from ..engine.measures import phase_insensitive_corr
    from ..families.features import concat_families

    bank = concat_families("+".join(chosen), [families[f] for f in chosen])
    return phase_insensitive_corr(dirs, bank), list(bank.labels)


__all__ += ["feature_families_for", "direction_correlations"]


def spec_sweep(run, *, spec: dict, cache=None, progress=None):
    """:func:`entk_core.workflows.sweep.sweep` with a :class:`~entk_core.families.base.SweepSpec`
    given as a JSON-able dict (``windows`` as ``[[start, end], ...]``), e.g. a family's
    run-specific spec: a :class:`~entk_core.workflows.jobs.Job` target."""
    from ..families.base import SweepSpec
    from .sweep import sweep as _sweep

    kw = dict(spec)
    if kw.get("windows") is not None:
        kw["windows"] = tuple(tuple(int(x) for x in w) for w in kw["windows"])
    if kw.get("families") is not None:
        kw["families"] = tuple(kw["families"])
    return _sweep(run, SweepSpec(**kw), cache=cache, progress=progress)


def spec_dict(spec) -> dict:
    """A :class:`~entk_core.families.base.SweepSpec` as the JSON-able dict :func:`spec_sweep` takes."""
    from dataclasses import asdict

    d = asdict(spec)
    d["families"] = list(spec.families) if spec.families is not None else None
    d["windows"] = [list(w) for w in spec.windows] if spec.windows is not None else None
    return d


__all__ += ["spec_sweep", "spec_dict"]


def report_baselines(run, epoch: int, report: dict[str, Any], *, seed: int = 0) -> dict[str, Any]:
    """Add the PCA and random baselines beside the eNTK overlaps of an ``align`` report.

    Every window of the report -- ``report["cliffs"]`` entries (``start``..``end``, overlaps
    under ``"overlap"``) or ``report["blocks"]`` entries (``modes`` ``[start, stop)``,
    overlaps under ``"families"``) -- gets ``"baselines": {"budget": k, "pca": {family:
    overlap}, "random": {family: overlap}}`` with ``k`` its size, measured against the same
    (mean-centred) families with the same overlap. ``report["baselines"]`` says what the PCA
    is of. Families are the run's, built from its last checkpoint (for the Transformer: its
    key frequencies). Reports without windows are returned unchanged."""
    from .sweep import family_bases

    windows = []
    for c in report.get("cliffs") or []:
        if isinstance(c, dict) and "start" in c and "end" in c and isinstance(c.get("overlap"), dict):
            windows.append((c, int(c["start"]), int(c["end"]), list(c["overlap"])))
    for b in report.get("blocks") or []:
        if isinstance(b, dict) and "modes" in b and isinstance(b.get("families"), dict):
            windows.append((b, int(b["modes"][0]), int(b["modes"][1]) - 1, list(b["families"])))
    if not windows:
        return report
    fams = feature_families_for(run, run.epochs[-1])
    H = hidden_activations(run, epoch)
    for entry, s, e, names in windows:
        names = [f for f in names if f in fams]
        if not names:
            continue
        bases = family_bases({f: fams[f] for f in names})
        base = baseline_overlaps(H, [e - s + 1], bases, seed=seed)
        entry["baselines"] = {"budget": e - s + 1, "pca": base["pca"][0], "random": base["random"][0]}
    report["baselines"] = {
        "pca": None if H is None else f"top principal directions of the hidden activations ({H.shape[1]} units, "
                                      f"{H.shape[0]} inputs), as many as the window has eigenvectors",
        "random": f"a random subspace of the same size (seed {seed})",
        "overlap": "‖QᵀF‖²_F against each mean-centred family, as for the eNTK",
    }
    return report


__all__ += ["report_baselines"]
