"""The result of a per-checkpoint sweep (:func:`entk_core.workflows.sweep.sweep`): its
arrays, its JSON, and how it is assembled from the cached arrays.

Derivatives, onset and peak (see :mod:`entk_core.workflows.sweep` for what is measured):
each (window, family) % overlap curve gets :func:`entk_core.engine.measures.local_first_derivative`
and :func:`entk_core.engine.measures.derivative_peak_epoch`; ``peak_epoch`` is the primary
curve's peak; ``onset_epoch`` is :func:`entk_core.engine.measures.grokking_onset` of the run's
test-accuracy log. A sweep of a family without feature families (or whose families do not
match the kernel's rows) has no overlap curves: ``families`` is empty and ``peak_epoch`` and
``primary`` are ``None``, while the spectra and cliffs are there.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..engine.measures import derivative_peak_epoch, grokking_onset, local_first_derivative
from ..engine.spectra import CONSTANT_LABEL, Cliff, label_cliffs
from ..families.base import SweepSpec
from ..families.run import Run

__all__ = ["Window", "SweepResult", "assemble_result", "spec_json", "json_number", "metric_series", "run_onset_epoch"]


@dataclass(frozen=True)
class Window:
    """A tracked index window ``[start, end]`` (inclusive) of the spectrum."""

    start: int
    end: int
    label: str

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "start": self.start, "end": self.end, "size": self.size}



@dataclass
class SweepResult:
    """Result of :func:`sweep` (arrays indexed ``[epoch, window, family]``).

    Attributes:
      epochs: ``(E,)`` checkpoint epochs; ``train_acc``, ``test_acc``: ``(E,)`` (NaN if unknown).
      eigenvalues: ``(E, top)``.
      windows: tracked windows; ``families``: family names; ``dims``: their dimensions.
      overlap: ``(E, W, F)`` subspace overlaps (out of ``dims``); ``derivative``: ``(E, W, F)``
        first derivative of the % overlap, points per logging step.
      own_start, own_size: ``(E, M)`` each epoch's detected cliffs (``-1`` = none);
      own_overlap: ``(E, M, F)`` their overlaps (NaN = none).
      top_constant: ``(E,)`` whether the top eigenvector is the constant mode (labels own cliffs).
      onset_epoch, peak_epoch: see the module docstring; ``primary``: ``(window index,
        family)`` of the curve whose derivative peak is ``peak_epoch``.
      peaks: ``(W, F)`` epoch of each curve's derivative peak.
    """

    run: str
    spec: SweepSpec
    epochs: np.ndarray
    train_acc: np.ndarray
    test_acc: np.ndarray
    eigenvalues: np.ndarray
    windows: list[Window]
    families: list[str]
    dims: np.ndarray
    overlap: np.ndarray
    derivative: np.ndarray
    own_start: np.ndarray
    own_size: np.ndarray
    own_overlap: np.ndarray
    top_constant: np.ndarray
    onset_epoch: float | None
    peak_epoch: float | None
    primary: tuple[int, str] | None
    peaks: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def percent(self) -> np.ndarray:
        """``(E, W, F)`` overlaps in % of each family's dimension."""
        return 100.0 * self.overlap / np.where(self.dims > 0, self.dims, 1)[None, None, :]

    def window_index(self, label: str) -> int:
        for i, w in enumerate(self.windows):
            if w.label == label:
                return i
        raise ValueError(f"no window '{label}'; windows: {', '.join(w.label for w in self.windows)}")

    def family_index(self, name: str) -> int:
        try:
            return self.families.index(name)
        except ValueError:
            raise ValueError(f"no family '{name}' in this sweep; families: {', '.join(self.families)}") from None

    def epoch_index(self, epoch: int) -> int:
        hits = np.flatnonzero(self.epochs == epoch)
        if not hits.size:
            raise ValueError(f"epoch {epoch} is not a checkpoint of this sweep")
        return int(hits[0])

    def own_cliffs(self, i: int) -> list[Cliff]:
        """The cliffs detected at epoch index ``i`` (ratios from the stored eigenvalues)."""
        out = []
        ev = self.eigenvalues[i]
        for s, n in zip(self.own_start[i], self.own_size[i]):
            if n > 0:
                e = s + n - 1
                ratio = float(ev[e] / ev[e + 1]) if e + 1 < ev.size and ev[e + 1] > 0 else float("inf")
                out.append(Cliff(start=int(s), size=int(n), ratio=ratio))
        return out

    def own_labels(self, i: int) -> list[str]:
        """Labels of :meth:`own_cliffs` (``constant``, ``cliff 1``, ... as :func:`label_cliffs`)."""
        cl = self.own_cliffs(i)
        const = bool(self.top_constant[i]) and bool(cl) and cl[0].start == 0 and cl[0].size == 1
        return [CONSTANT_LABEL] * const + label_cliffs(cl[const:], None)

    def to_json(self) -> dict[str, Any]:
        """JSON-able: the spec, windows, per-epoch table, onset and peak."""
        table = []
        pct, der = self.percent, self.derivative
        for i, e in enumerate(self.epochs):
            row: dict[str, Any] = {"epoch": int(e), "train_acc": json_number(self.train_acc[i]),
                                   "test_acc": json_number(self.test_acc[i])}
            for name, arr, nd in (("overlap", self.overlap, 4), ("overlap_pct", pct, 3), ("d_overlap_pct", der, 3)):
                row[name] = {w.label: {f: json_number(arr[i, j, k], nd) for k, f in enumerate(self.families)}
                             for j, w in enumerate(self.windows)}
            row["cliffs"] = [
                {"label": lab, "start": c.start, "end": c.end, "size": c.size,
                 "overlap": {f: json_number(self.own_overlap[i, m, k], 4) for k, f in enumerate(self.families)}}
                for m, (c, lab) in enumerate(zip(self.own_cliffs(i), self.own_labels(i)))
            ]
            table.append(row)
        prim = None
        if self.primary is not None:
            prim = {"window": self.windows[self.primary[0]].label, "family": self.primary[1]}
        return {
            "run": self.run,
            "spec": spec_json(self.spec),
            "windows": [w.to_dict() for w in self.windows],
            "families": {f: int(d) for f, d in zip(self.families, self.dims)},
            "onset_epoch": self.onset_epoch,
            "peak_epoch": self.peak_epoch,
            "primary": prim,
            "peaks": {w.label: {f: json_number(self.peaks[j, k]) for k, f in enumerate(self.families)}
                      for j, w in enumerate(self.windows)},
            "table": table,
            **{k: v for k, v in self.meta.items()},
        }


def json_number(x: float | None, digits: int | None = None) -> float | None:
    """A JSON number (``None`` for missing or non-finite values)."""
    if x is None or not np.isfinite(x):
        return None
    return round(float(x), digits) if digits is not None else float(x)


def spec_json(spec: SweepSpec) -> dict[str, Any]:
    """The spec as JSON (tuples as lists): what the sweep's cache key and JSON carry."""
    d = asdict(spec)
    d["families"] = list(spec.families) if spec.families is not None else None
    d["windows"] = [list(w) for w in spec.windows] if spec.windows is not None else None
    return d


def metric_series(run: Run, name: str, epochs: list[int]) -> np.ndarray:
    """The run's logged metric ``name`` at each of ``epochs`` ``(E,)`` (NaN where not logged)."""
    m = run.metrics
    log_e, vals = m.get("epoch", []), m.get(name, [])
    where = {int(e): i for i, e in enumerate(log_e)}
    out = np.full(len(epochs), np.nan)
    for i, e in enumerate(epochs):
        j = where.get(int(e))
        if j is not None and j < len(vals) and vals[j] is not None:
            out[i] = float(vals[j])
    return out


def run_onset_epoch(run: Run) -> float | None:
    """:func:`entk_core.engine.measures.grokking_onset` of the run's test-accuracy log, chance
    ``1/C`` for ``C`` classes (``None`` for runs without class labels or accuracy)."""
    m = run.metrics
    e, acc = m.get("epoch") or [], m.get("test_acc") or []
    if not e or len(acc) != len(e) or any(a is None for a in acc):
        return None
    y = run.data.y
    if y.ndim != 1 or y.is_floating_point():
        return None
    chance = 1.0 / int(y.max().item() + 1)
    return grokking_onset(e, acc, chance=chance)


def assemble_result(run: Run, spec: SweepSpec, epochs: list[int], entry, elapsed: float) -> SweepResult:
    """The :class:`SweepResult` of the cached arrays ``entry`` (derivatives, peaks, onset)."""
    names = list(entry.meta["families"])
    windows = [Window(int(s), int(t), lab) for s, t, lab in
               zip(entry["window_start"], entry["window_end"], entry.meta["labels"])]
    dims = entry["dims"]
    ov = entry["overlap"]
    pct = 100.0 * ov / np.where(dims > 0, dims, 1)[None, None, :]
    der = np.zeros_like(pct)
    peaks = np.full((len(windows), len(names)), np.nan)
    ep = np.asarray(epochs, dtype=float)
    for j in range(len(windows)):
        for k in range(len(names)):
            y = pct[:, j, k]
            if np.isfinite(y).all() and y.size:
                der[:, j, k] = local_first_derivative(y)
                peaks[j, k] = derivative_peak_epoch(ep, y)
            else:
                der[:, j, k] = np.nan
    primary = _primary(spec, windows, names, pct)
    peak = float(peaks[primary[0], names.index(primary[1])]) if primary is not None else None
    if peak is not None and not np.isfinite(peak):
        peak = None
    meta = {
        "group": spec.group, "reduction": spec.reduction, "top": spec.top,
        "reference_epoch": spec.reference_epoch, "window_group": spec.window_group,
        "cache": entry.meta.get("cache"), "compute_s": entry.meta.get("compute_s"),
        "total_s": round(elapsed, 3),
    }
    if run.unvouched_metrics is not None:
        meta["unvouched_metrics"] = run.unvouched_metrics  # train_acc/test_acc are not the user's
    return SweepResult(
        run=run.name, spec=spec, epochs=np.asarray(epochs, dtype=np.int64),
        train_acc=metric_series(run, "train_acc", epochs), test_acc=metric_series(run, "test_acc", epochs),
        eigenvalues=entry["eigenvalues"], windows=windows, families=names, dims=dims, overlap=ov,
        derivative=der, own_start=entry["own_start"], own_size=entry["own_size"],
        own_overlap=entry["own_overlap"], top_constant=entry["top_constant"], onset_epoch=run_onset_epoch(run),
        peak_epoch=peak, primary=primary, peaks=peaks, meta=meta,
    )


def _primary(spec: SweepSpec, windows: list[Window], names: list[str], pct: np.ndarray) -> tuple[int, str] | None:
    if not windows or not names or pct.shape[0] < 2:
        return None
    if spec.primary is not None and spec.primary in names:
        k = names.index(spec.primary)
        final = np.nan_to_num(pct[-1, :, k], nan=-np.inf)
        if final.max() >= 50.0:
            return int(np.argmax(final)), spec.primary
    rise = np.nan_to_num(pct[-1] - pct[0], nan=-np.inf)
    j, k = np.unravel_index(int(np.argmax(rise)), rise.shape)
    return int(j), names[int(k)]
