"""What the dashboard's views show, as plain data: tables, curves, winners and defaults.

The pages only draw: every number, row and curve they show comes from here (or from the
cached operations of :mod:`~entk_core.workflows.analysis`, :mod:`~entk_core.workflows.sweep`
and :mod:`~entk_core.workflows.alignment`), so the CLI, a notebook and a test get the same
values. Nothing here knows a family: what differs by family is asked of the family
(:class:`~entk_core.families.base.ModelFamily`: ``view_families``, ``control_families``,
``cliff_rotation``, ``hidden_activations``).

Conventions: eigenvectors ``V`` are ``(N, k)`` over the kernel rows; a window is an
inclusive index range; overlaps are ``‖QᵀF‖²_F`` against each mean-centred family
(:func:`entk_core.engine.measures.window_overlaps`), percentages are of the family's
dimension.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..engine.measures import best_phase_corr, family_bases, phase_insensitive_corr, window_overlaps
from ..engine.spectra import CONSTANT_LABEL, labelled_cliffs
from ..families.base import FeatureFamily
from .alignment import baseline_overlaps, window_table
from .baselines import hidden_activations

__all__ = ["computed_seconds", "spectrum_blocks", "first_feature_window", "cliff_windows", "ViewInputs",
           "view_inputs", "stacked_bank", "CliffView", "cliff_view", "Curves", "overlap_curves", "overlap_rows",
           "curve_rows", "block_rows"]


# ------------------------------------------------------------------ spectra
def computed_seconds(res) -> float:
    """What computing a spectrum result took (kernel + eigensolver seconds, from its meta)."""
    t = res.meta.get("timing", {})
    return float((t.get("kernel_s") or 0) + (t.get("eig_s") or 0))


def spectrum_blocks(res) -> list[dict[str, Any]]:
    """The detected blocks of a spectrum result as table rows: ``block`` (``"constant mode"``
    or ``"cliff 1"``...), ``start``, ``end``, ``size``, ``drop ratio``."""
    return [{"block": "constant mode" if c["label"] == CONSTANT_LABEL else c["label"], "start": c["start"],
             "end": c["end"], "size": c["size"], "drop ratio": round(c["ratio"], 3)}
            for c in labelled_cliffs(res.cliffs, res.eigenvectors)]


def first_feature_window(res) -> int:
    """The index a view opens on: the first eigenvector of the first block that is not the
    constant mode (0 without one)."""
    return next((c.start for c, lab in zip(res.cliffs, res.labels) if lab != CONSTANT_LABEL), 0)


def cliff_windows(res) -> list[tuple[str, int, int, float]]:
    """``[(label, start, end, drop ratio)]`` of the blocks detected in a spectrum result
    (the windows the alignment view reads, from the spectrum of the group they come from)."""
    return [(c["label"], c["start"], c["end"], round(c["ratio"], 4))
            for c in labelled_cliffs(res.cliffs, res.eigenvectors)]


# ---------------------------------------------------------------- alignment
@dataclass
class ViewInputs:
    """What the alignment views measure against, for one run and checkpoint.

    Attributes:
      families: the family's view families (:attr:`ModelFamily.view_families`, in that
        order; default every family) whose rows match the kernel, built from the run's
        **final** model (so model-dependent families such as a Transformer's key
        frequencies are the run's, at every epoch, as the sweep uses them).
      bases: their orthonormal, mean-centred bases (:func:`entk_core.engine.measures.family_bases`).
      features: the names that are features (not :attr:`ModelFamily.control_families`):
        what a heatmap stacks and a best match is searched in.
      controls: the names that are controls (``random``): measured, never chosen by default.
      activations: the checkpoint's hidden activations ``(N, d)`` for the PCA baseline, or
        ``None`` when the family declares none.
    """

    families: dict[str, FeatureFamily]
    bases: dict[str, np.ndarray]
    features: list[str]
    controls: list[str]
    activations: np.ndarray | None


def view_inputs(run, epoch: int, *, rows: int, model=None, final_model=None) -> ViewInputs:
    """:class:`ViewInputs` of ``run`` at ``epoch`` for a kernel with ``rows`` rows
    (``model``/``final_model``: the loaded models at ``epoch`` and at the last checkpoint)."""
    fam = run.family
    last = run.epochs[-1]
    fm = final_model if final_model is not None else (model if epoch == last and model is not None
                                                      else run.load_model(last))
    every = {k: f for k, f in fam.feature_families(run.config, run.data, fm).items() if f.bank.shape[0] == rows}
    names = [k for k in (fam.view_families or every) if k in every]
    families = {k: every[k] for k in names}
    controls = [k for k in names if k in fam.control_families]
    return ViewInputs(families=families, bases=family_bases(families), features=[k for k in names if k not in controls],
                      controls=controls, activations=hidden_activations(run, epoch, model=model))


def _as_bank(f: FeatureFamily) -> np.ndarray:
    """A family as a phase bank ``(N, K, 2)``: Fourier banks as they are, plain ``(N, K)``
    families with a zero second column (their phase-insensitive correlation is ``|cos|``)."""
    b = np.asarray(f.bank, dtype=np.float64)
    return b if b.ndim == 3 else np.stack([b, np.zeros_like(b)], axis=2)


def stacked_bank(families: dict[str, FeatureFamily], names: Sequence[str]) -> FeatureFamily:
    """The families ``names`` stacked into one bank (rows labelled ``"a k=3"``, ``"xor x0·x1"``):
    Fourier families with their cos/sin pair, plain ones as single columns."""
    if not names:
        raise ValueError("no feature family to stack")
    banks = [_as_bank(families[n]) for n in names]
    labels = tuple(f"{n} {lab}" for n in names
                   for lab in (families[n].labels or tuple(str(j) for j in range(families[n].bank.shape[1]))))
    return FeatureFamily(name="+".join(names), bank=np.concatenate(banks, axis=1), labels=labels)


@dataclass
class CliffView:
    """One window of a spectrum against the feature families (:func:`cliff_view`).

    ``directions`` are what the view shows: the rotated directions when a rotation was asked
    for and the family declares one, else the raw eigenvectors ``V[:, start:end+1]``.
    ``heatmap`` ``(rows, k)``: phase-insensitive correlation of each direction with each
    row of the chosen families (``row_labels``); ``None`` without chosen families.
    ``mean_best_corr``: the mean over the directions of their best correlation with the
    stacked feature families, ``{"raw", "rotated"}`` (``rotated`` ``None`` without a rotation).
    ``table``: one row per family with the eNTK overlap beside the PCA and random baselines
    of the same budget.
    """

    label: str
    start: int
    end: int
    directions: np.ndarray
    rotated: np.ndarray | None
    rotation: str | None
    column_labels: list[str]
    heatmap: np.ndarray | None
    row_labels: list[str]
    mean_best_corr: dict[str, float | None]
    table: list[dict[str, Any]] = field(default_factory=list)

    def direction_at(self, i: int) -> tuple[np.ndarray | None, str]:
        """What position ``i`` of the spectrum shows: the rotated direction there (inside a
        rotated window) or ``None`` (the plain eigenvector), and its name."""
        if self.rotated is not None and self.start <= i < self.start + self.rotated.shape[1]:
            return self.rotated[:, i - self.start], f"rotated direction {i - self.start} of the cliff (position {i})"
        return None, f"eigenvector {i}"


def cliff_view(run, V: np.ndarray, window: tuple[str, int, int], inputs: ViewInputs, *, chosen: Sequence[str],
               rotate: bool) -> CliffView:
    """The alignment view of one window ``(label, start, end)`` of the eigenvectors ``V``.

    The family's :meth:`~entk_core.families.base.ModelFamily.cliff_rotation` (when ``rotate``
    and the window has two or more directions) rotates the directions inside their span; the
    overlaps do not change (they are rotation-invariant), the heatmap and the best
    correlations do."""
    label, s, e = window
    block = np.asarray(V[:, s:e + 1], dtype=np.float64)
    rotated, rotation = None, None
    if rotate and block.shape[1] >= 2 and run.family.offers("rotation"):
        overlaps = {k: float(v) for k, v in zip(inputs.bases, window_overlaps(block, inputs.bases))}
        out = run.family.cliff_rotation(run.config, block, overlaps)
        if out is not None:
            rotated, rotation = np.asarray(out[0], dtype=np.float64), str(out[1])
    dirs = rotated if rotated is not None else block
    cols = ([f"rotated direction {j}" for j in range(dirs.shape[1])] if rotated is not None
            else [f"eigenvector {s + j}" for j in range(dirs.shape[1])])
    H, rows = None, []
    if chosen:
        bank = stacked_bank(inputs.families, list(chosen))
        H, rows = phase_insensitive_corr(dirs, bank), list(bank.labels)
    best = {"raw": None, "rotated": None}
    if inputs.features:
        bank = stacked_bank(inputs.families, inputs.features)
        best["raw"] = round(float(best_phase_corr(block, bank)[0].mean()), 4)
        if rotated is not None:
            best["rotated"] = round(float(best_phase_corr(rotated, bank)[0].mean()), 4)
    rows_ = window_table(V, [(label, s, e)], inputs.families, H=inputs.activations, bases=inputs.bases)
    table = [{"family": r["family"], "dim": r["dim"], "eNTK": r["entk"], "PCA": r["pca"], "random": r["random"],
              "eNTK %": round(100 * r["entk"] / max(r["dim"], 1), 1)} for r in rows_]
    return CliffView(label=label, start=s, end=e, directions=dirs, rotated=rotated, rotation=rotation,
                     column_labels=cols, heatmap=H, row_labels=rows, mean_best_corr=best, table=table)


def best_match(vec: np.ndarray, inputs: ViewInputs) -> tuple[str, float] | None:
    """The feature row (``"a k=3"``) that one direction correlates with best, and the
    correlation; ``None`` when the family has no features."""
    if not inputs.features:
        return None
    bank = stacked_bank(inputs.families, inputs.features)
    corr, idx = best_phase_corr(np.asarray(vec, dtype=np.float64), bank)
    return bank.labels[int(idx[0])], float(corr[0])


__all__ += ["best_match"]


# ------------------------------------------------------- over training
@dataclass
class Curves:
    """Overlap curves over training for one figure: ``curves`` (name -> ``(E,)`` %),
    ``derivatives`` (name -> ``(E,)`` points per logging step), the names drawn ``dashed``
    (baselines, another run) and vertical ``markers`` (label -> epoch)."""

    epochs: np.ndarray
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    derivatives: dict[str, np.ndarray] = field(default_factory=dict)
    dashed: list[str] = field(default_factory=list)
    markers: dict[str, float] = field(default_factory=dict)


def overlap_curves(sw, window: int, families: Sequence[str], *, pca: np.ndarray | None = None,
                   with_dims: bool = True, other=None, other_name: str = "",
                   peak_of: str | None = None) -> Curves:
    """The overlap of tracked window ``window`` of a sweep result ``sw`` with each of
    ``families`` over training, in % of each family's dimension, with its derivative.

    ``pca``: :func:`entk_core.workflows.alignment.pca_over_training` for these ``families``
    with one size (``(E, 1, F)``), drawn dashed as ``"<family> · PCA"``. ``other``: another
    run's sweep, whose window of the same label is interpolated onto these epochs
    (``"<family> · <other_name>"``, dashed; ``ValueError`` when it has no such window).
    ``with_dims``: name curves ``"sum (28-dim)"`` instead of ``"sum"``. Markers: the grokking
    onset and the derivative peak (the sweep's primary peak, or the peak of ``peak_of``'s
    curve in this window)."""
    out = Curves(epochs=np.asarray(sw.epochs))
    for f in families:
        k = sw.family_index(f)
        name = f"{f} ({sw.dims[k]}-dim)" if with_dims else f
        out.curves[name], out.derivatives[name] = sw.percent[:, window, k], sw.derivative[:, window, k]
    if pca is not None:
        for j, f in enumerate(families):
            name = f"{f} · PCA"
            out.curves[name] = 100 * pca[:, 0, j] / max(int(sw.dims[sw.family_index(f)]), 1)
            out.dashed.append(name)
    if other is not None:
        w2 = other.window_index(sw.windows[window].label)
        for f in families:
            if f in other.families:
                name = f"{f} · {other_name}"
                out.curves[name] = np.interp(sw.epochs, other.epochs, other.percent[:, w2, other.family_index(f)])
                out.dashed.append(name)
    if sw.onset_epoch is not None:
        out.markers[f"onset {sw.onset_epoch:g}"] = sw.onset_epoch
    if peak_of is None:
        if sw.peak_epoch is not None:
            out.markers[f"peak {sw.peak_epoch:g}"] = sw.peak_epoch
    else:
        peak = sw.peaks[window, sw.family_index(peak_of)]
        if np.isfinite(peak):
            out.markers[f"peak {peak:g} ({peak_of})"] = float(peak)
    return out


def overlap_rows(sw, i: int, window_label) -> list[dict[str, Any]]:
    """The overlap of every tracked window with every family at epoch index ``i``: one row
    per window (``window_label(j)`` names it), one column per family, 2 decimals."""
    rows = []
    for j in range(len(sw.windows)):
        row: dict[str, Any] = {"window": window_label(j)}
        row.update({f: round(float(sw.overlap[i, j, k]), 2) for k, f in enumerate(sw.families)})
        rows.append(row)
    return rows


def curve_rows(c: Curves) -> list[dict[str, Any]]:
    """The curves as table rows (``epoch`` and one column per curve, 3 decimals): the CSV export."""
    return [{"epoch": int(e), **{n: round(float(v[t]), 3) for n, v in c.curves.items()}} for t, e in enumerate(c.epochs)]


# ----------------------------------------------------------- mode blocks
def block_rows(report: dict[str, Any], H: np.ndarray | None, bases: dict[str, np.ndarray], *,
               seed: int = 0) -> list[dict[str, Any]]:
    """An align report's fixed mode blocks (``report["blocks"]``: ``modes`` ``[start, stop)``,
    ``expected``, per family ``overlap``/``dim``/``percent``) as table rows beside the PCA
    directions of ``H`` and a random subspace of the same budgets (``bases``: the reported
    families' bases; block ``j`` gets random seed ``seed + j``)."""
    blocks = report["blocks"]
    base = baseline_overlaps(H, [b["modes"][1] - b["modes"][0] for b in blocks], bases, seed=seed)
    rows = []
    for bi, b in enumerate(blocks):
        for name, f in b["families"].items():
            pca = base["pca"][bi][name] if base["pca"][bi] is not None else None
            rows.append({"modes": f"{b['modes'][0]}:{b['modes'][1]}", "family": name,
                         "expected": "✓" if name == b["expected"] else "", "eNTK": round(f["overlap"], 4),
                         "PCA": pca, "random": base["random"][bi][name], "of": f["dim"],
                         "eNTK %": round(f["percent"], 1)})
    return rows
