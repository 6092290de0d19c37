"""Per-checkpoint (grokking) sweeps: how the eNTK's cliffs align with features over training.

For every checkpoint of a run, :func:`sweep` takes the top-k spectrum of one kernel
(:func:`entk_core.workflows.analysis.spectrum`, so each epoch is cached and shared with the
Spectrum page) and measures the subspace overlap (:func:`entk_core.engine.measures.subspace_overlap`,
``‖QᵀF‖²_F``, out of the family's dimension) of spectral windows with feature families.
The whole result is cached again as one entry, so a second sweep is a single read.

What is measured
----------------
* **Tracked windows** (the paper's fixed window, spec §4.9): cliffs are detected
  automatically (:func:`entk_core.engine.spectra.detect_cliffs`, drop threshold
  ``spec.min_ratio``) in the spectrum of ``spec.window_group`` (default: the swept
  group) at ``spec.reference_epoch`` (default: the last checkpoint); each cliff's index
  range ``[start, end]`` is then tracked at every epoch. Nothing is hard-coded: for the
  p=29 MLP this finds ``[0, 0]`` (the constant mode), ``[1, 56]`` and ``[57, 112]``.
* **Each epoch's own cliffs**: the cliffs detected at that epoch (at most
  ``spec.max_cliffs``), with their overlaps, so the emergence of the structure shows too.
* **Derivatives**: :func:`entk_core.engine.measures.local_first_derivative` of each % overlap
  curve (``100 · overlap / dim``), in percentage points *per logging step* (one
  checkpoint interval, 10 epochs by default), as the paper plots it.
* **Grokking onset**: :func:`entk_core.engine.measures.grokking_onset` on the run's full
  test-accuracy log (logged every epoch, so finer than the checkpoints), with chance
  ``1/C`` for ``C`` classes: the midpoint of the logging interval in which the test
  accuracy crosses, for good, 10% of the way from chance to its final plateau. ``None``
  for runs without accuracy (TMS) or without a transition.
* **Peak epoch**: :func:`entk_core.engine.measures.derivative_peak_epoch` of the *primary*
  curve: the window with the largest final overlap with ``spec.primary`` (a family
  name, e.g. ``"sum"`` for the MLP), or, when no primary is set or no window ends up
  at least 50% aligned with it, the (window, family) curve whose % overlap rises most
  from the first to the last checkpoint. The peak of every curve is reported too.

Speed and scale-out: each checkpoint whose spectrum is not cached yet is a *unit*
(:func:`spectrum_unit`) run through the executor seam (:mod:`entk_core.workflows.executors`):
in this process for a few checkpoints, in ``workers`` spawned processes (one torch thread
each) by default, or on Ray (``ray=``; the checkpoint's safetensors bytes travel with the
unit, so workers need no shared filesystem). Per checkpoint the work is a kernel and an
``N x N`` eigendecomposition: LAPACK's ``eigh`` gains little from a second thread and slows
down badly when the cores are oversubscribed, while two checkpoints at once use both cores
fully. Units return their eigenpairs to this process, which alone writes them to the cache
(under the same key as :func:`entk_core.workflows.analysis.spectrum`, so the Spectrum page
reuses them) and measures the overlaps. Progress is reported from the calling thread (safe
for Streamlit).

Cliff labels (:func:`label_cliffs`): a detected cliff of size 1 at index 0 whose
eigenvector is nearly constant (``|⟨v, 1/√N⟩| ≥ 0.9``) is the *constant mode*; the other
cliffs are numbered ``cliff 1, cliff 2, ...`` in spectral order (so for the MLP
``cliff 1`` = a/b modes, indices 1-56, and ``cliff 2`` = sum/diff modes, 57-112).

Plugging in another family
--------------------------
A :class:`SweepSpec` says what to sweep: layer group, reduction, top-k, which feature
families (default: every family of ``family.feature_families`` whose rows match the
kernel), the window source and the primary family. A model family may provide a hook
``sweep_spec(cfg, group) -> SweepSpec`` (used by :func:`default_spec`); otherwise the
defaults apply. Feature families are built once per sweep from the model at the
reference epoch (so data-dependent families such as a Transformer's key frequencies
work).
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.linalg

from . import analysis
from ..engine.measures import derivative_peak_epoch, grokking_onset, local_first_derivative, orthonormal_basis
from ..store.cache import ArrayCache, CacheEntry, default_cache, make_key
from ..families.features import families_with_rows
from ..families.base import FeatureFamily
from ..store.runs import MANIFEST, Run
from .executors import Executor, Unit, make_executor
from ..engine.spectra import Cliff, detect_cliffs

__all__ = ["SweepSpec", "Window", "SweepResult", "default_spec", "label_cliffs", "sweep", "family_bases",
           "window_overlaps", "windows_overlaps"]

Progress = Callable[[int, int, str], None]

SWEEP_FORMAT = 2
"""Version of the cached sweep layout (part of its cache key)."""

CONSTANT_LABEL = "constant"
"""Label of a leading size-1 cliff whose eigenvector is the constant mode."""


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep measures (every field has a default; see the module docstring).

    Attributes:
      group: layer group of the swept kernel (``"full"`` = all parameters).
      reduction: kernel reduction (default: the family's).
      top: eigenpairs per epoch (default: the family's ``default_top``).
      families: names of the feature families to measure (default: every family with
        rows matching the kernel).
      window_group: group whose spectrum defines the tracked windows (default: ``group``).
        E.g. the MLP's per-layer sweeps track the full kernel's cliffs inside each
        layer's kernel, as the paper's layerwise table does.
      reference_epoch: checkpoint where the windows are detected (default: the last).
      windows: explicit ``((start, end), ...)`` index ranges (inclusive) instead of detection.
      primary: family whose overlap derivative defines ``peak_epoch`` (see module docstring).
      max_cliffs: at most this many of each epoch's own detected cliffs are recorded.
      min_ratio: the cliff rule's minimum drop ``λ_end/λ_end+1`` for windows and own cliffs
        (:func:`entk_core.engine.spectra.detect_cliffs`; default ``None``: the rule's own, 1.1).
    """

    group: str = analysis.FULL
    reduction: str | None = None
    top: int | None = None
    families: tuple[str, ...] | None = None
    window_group: str | None = None
    reference_epoch: int | None = None
    windows: tuple[tuple[int, int], ...] | None = None
    primary: str | None = None
    max_cliffs: int = 4
    min_ratio: float | None = None

    def resolved(self, run: Run) -> "SweepSpec":
        """The spec with defaults filled in from the run (what the cache key uses)."""
        return replace(
            self,
            reduction=self.reduction or run.family.default_reduction,
            top=min(int(self.top or run.family.default_top), analysis.kernel_size(run, self.reduction or run.family.default_reduction)),
            window_group=self.window_group or self.group,
            reference_epoch=run.resolve_epoch(self.reference_epoch),
            families=tuple(self.families) if self.families is not None else None,
            windows=tuple((int(a), int(b)) for a, b in self.windows) if self.windows is not None else None,
        )


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


def default_spec(run: Run, group: str | None = None, **overrides: Any) -> SweepSpec:
    """The family's sweep spec for ``group`` (its ``sweep_spec`` hook, else the defaults),
    with ``overrides`` (non-``None`` values only) applied."""
    group = group or analysis.FULL
    spec = run.family.sweep_spec(run.config, group) or SweepSpec(group=group)
    return replace(spec, **{k: v for k, v in overrides.items() if v is not None})


def label_cliffs(cliffs: list[Cliff] | list[tuple[int, int]], eigenvectors: np.ndarray | None) -> list[str]:
    """Labels for cliffs (or ``(start, end)`` windows): ``"constant"`` for a leading
    size-1 block whose eigenvector is nearly constant, else ``"cliff 1"``, ``"cliff 2"``..."""
    labels, n = [], 0
    for c in cliffs:
        start, end = (c.start, c.end) if isinstance(c, Cliff) else c
        if start == 0 and end == 0 and eigenvectors is not None:
            v = np.asarray(eigenvectors)[:, 0]
            if abs(v.sum()) / (np.sqrt(v.size) * max(np.linalg.norm(v), 1e-300)) >= 0.9:
                labels.append(CONSTANT_LABEL)
                continue
        n += 1
        labels.append(f"cliff {n}")
    return labels


def family_bases(families: dict[str, FeatureFamily]) -> dict[str, np.ndarray]:
    """Orthonormal bases of the mean-centred families (as in ``subspace_overlap(center=True)``)."""
    out = {}
    for name, fam in families.items():
        F = fam.matrix.astype(np.float64)
        out[name] = np.ascontiguousarray(orthonormal_basis(F - F.mean(axis=0, keepdims=True)))
    return out


def window_overlaps(vecs: np.ndarray, bases: dict[str, np.ndarray]) -> np.ndarray:
    """Subspace overlaps ``‖QᵀF‖²_F`` of ``vecs`` ``(N, d)`` with each basis, ``(len(bases),)``.

    Equals :func:`entk_core.engine.measures.subspace_overlap` with ``center=True``; see
    :func:`windows_overlaps`.
    """
    V = np.asarray(vecs, dtype=np.float64)
    V = V[:, None] if V.ndim == 1 else V
    return windows_overlaps(V, [(0, V.shape[1] - 1)], bases)[0]


def windows_overlaps(V: np.ndarray, spans: list[tuple[int, int]], bases: dict[str, np.ndarray]) -> np.ndarray:
    """Overlaps of several column windows ``V[:, s:t+1]`` with each basis: ``(len(spans), len(bases))``.

    ``Σ s²`` of the principal cosines is ``‖QᵀF‖²_F`` with ``Q`` an orthonormal basis of the
    window; with ``G = VᵀV = LLᵀ`` (Cholesky) that is ``‖L⁻¹VᵀF‖²_F``, exact for any
    well-conditioned window (eigenvectors from a float32 eigensolver are orthonormal only
    to ~1e-6), so two matrix products per spectrum serve every window and family, and a
    QR (:func:`entk_core.engine.measures.orthonormal_basis`) is needed only for nearly
    rank-deficient windows. The family bases come from :func:`family_bases` (computed
    once per sweep).
    """
    V = np.asarray(V, dtype=np.float64)
    out = np.zeros((len(spans), len(bases)))
    if not spans or not bases:
        return out
    dims = [b.shape[1] for b in bases.values()]
    cuts = np.cumsum([0, *dims])
    F = np.hstack(list(bases.values()))
    hi = max(t for _, t in spans) + 1
    lo = min(s for s, _ in spans)
    U = V[:, lo:hi]
    G = U.T @ U
    P = U.T @ F
    for w, (s, t) in enumerate(spans):
        a, b = s - lo, t - lo + 1
        X = None
        try:
            L = np.linalg.cholesky(G[a:b, a:b])
            if np.min(np.abs(np.diag(L))) > 1e-6:
                X = scipy.linalg.solve_triangular(L, P[a:b], lower=True)
        except np.linalg.LinAlgError:
            pass
        if X is None:
            Q = orthonormal_basis(V[:, s:t + 1])
            X = Q.T @ F
        sq = np.sum(X**2, axis=0)
        for j, d in enumerate(dims):
            out[w, j] = min(float(sq[cuts[j]:cuts[j + 1]].sum()), float(min(X.shape[0], d)))
    return out


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
            row: dict[str, Any] = {"epoch": int(e), "train_acc": _num(self.train_acc[i]),
                                   "test_acc": _num(self.test_acc[i])}
            for name, arr, nd in (("overlap", self.overlap, 4), ("overlap_pct", pct, 3), ("d_overlap_pct", der, 3)):
                row[name] = {w.label: {f: _num(arr[i, j, k], nd) for k, f in enumerate(self.families)}
                             for j, w in enumerate(self.windows)}
            row["cliffs"] = [
                {"label": lab, "start": c.start, "end": c.end, "size": c.size,
                 "overlap": {f: _num(self.own_overlap[i, m, k], 4) for k, f in enumerate(self.families)}}
                for m, (c, lab) in enumerate(zip(self.own_cliffs(i), self.own_labels(i)))
            ]
            table.append(row)
        prim = None
        if self.primary is not None:
            prim = {"window": self.windows[self.primary[0]].label, "family": self.primary[1]}
        return {
            "run": self.run,
            "spec": _spec_json(self.spec),
            "windows": [w.to_dict() for w in self.windows],
            "families": {f: int(d) for f, d in zip(self.families, self.dims)},
            "onset_epoch": self.onset_epoch,
            "peak_epoch": self.peak_epoch,
            "primary": prim,
            "peaks": {w.label: {f: _num(self.peaks[j, k]) for k, f in enumerate(self.families)}
                      for j, w in enumerate(self.windows)},
            "table": table,
            **{k: v for k, v in self.meta.items()},
        }


def _num(x: float | None, digits: int | None = None) -> float | None:
    """A JSON number (``None`` for missing or non-finite values)."""
    if x is None or not np.isfinite(x):
        return None
    return round(float(x), digits) if digits is not None else float(x)


def _spec_json(spec: SweepSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["families"] = list(spec.families) if spec.families is not None else None
    d["windows"] = [list(w) for w in spec.windows] if spec.windows is not None else None
    return d


def _metric_series(run: Run, name: str, epochs: list[int]) -> np.ndarray:
    m = run.metrics
    log_e, vals = m.get("epoch", []), m.get(name, [])
    where = {int(e): i for i, e in enumerate(log_e)}
    out = np.full(len(epochs), np.nan)
    for i, e in enumerate(epochs):
        j = where.get(int(e))
        if j is not None and j < len(vals) and vals[j] is not None:
            out[i] = float(vals[j])
    return out


def _onset(run: Run) -> float | None:
    m = run.metrics
    e, acc = m.get("epoch") or [], m.get("test_acc") or []
    if not e or len(acc) != len(e) or any(a is None for a in acc):
        return None
    y = run.data.y
    if y.ndim != 1 or y.is_floating_point():
        return None
    chance = 1.0 / int(y.max().item() + 1)
    return grokking_onset(e, acc, chance=chance)


def _checkpoints_digest(run: Run) -> str:
    items = [(e, run.checkpoint_sha(e)) for e in run.epochs]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def sweep(
    run: Run,
    spec: SweepSpec | None = None,
    *,
    cache: ArrayCache | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    ray: bool | str | None = None,
    executor: Executor | None = None,
) -> SweepResult:
    """Sweep every checkpoint of ``run`` (see the module docstring); cached as one entry.

    Args:
      spec: what to measure (default: :func:`default_spec` for the full kernel).
      progress: ``progress(done, total, message)`` after each checkpoint (called from
        this thread).
      workers: local worker processes computing the spectra (default: the CPU count, at
        most 4, for runs with 8 or more checkpoints to compute, else 1 = in this process).
      ray: run the per-checkpoint units on Ray (``True``: a local instance or
        ``$ENTK_RAY_ADDRESS``; or a cluster address); see :mod:`entk_core.workflows.executors`.
      executor: an executor to use instead (not closed here).

    A checkpoint whose unit fails twice is reported in ``meta["failed"]`` (its rows are NaN)
    and the sweep is not cached, so the next call computes just the missing checkpoints.
    """
    t0 = time.perf_counter()
    spec = (spec or default_spec(run)).resolved(run)
    cache = cache or default_cache()
    epochs = run.epochs
    key = make_key("sweep", format=SWEEP_FORMAT, family=run.family.name, config=asdict(run.config),
                   checkpoints=_checkpoints_digest(run), spec=_spec_json(spec))
    total = len(epochs) + 1

    def compute():
        ref = spec.reference_epoch
        ref_model = run.load_model(ref)
        families = families_with_rows(run.family.feature_families(run.config, run.data, ref_model),
                                      _kernel_rows(run, spec))
        if spec.families is not None:
            missing = [f for f in spec.families if f not in families]
            if missing:
                raise ValueError(f"unknown feature families {missing} for {run.family.name} "
                                 f"(with {_kernel_rows(run, spec)} rows: {', '.join(families)})")
            families = {f: families[f] for f in spec.families}
        if not families:
            raise ValueError(f"the {run.family.name} family has no feature families for this kernel")
        bases = family_bases(families)
        names = list(bases)
        dims = np.array([b.shape[1] for b in bases.values()])

        ref_spec = analysis.spectrum(run, ref, group=spec.window_group, reduction=spec.reduction, top=spec.top,
                                     model=ref_model, cache=cache)
        if spec.windows is not None:
            spans = list(spec.windows)
        else:
            spans = [(c.start, c.end) for c in _cliffs(ref_spec, spec)]
        labels = label_cliffs(spans, ref_spec.eigenvectors)
        if progress:
            progress(1, total, f"windows from epoch {ref}")

        E, W, Fn, M = len(epochs), len(spans), len(names), spec.max_cliffs
        eig = np.full((E, spec.top), np.nan)
        ov = np.full((E, W, Fn), np.nan)
        own_start = np.full((E, M), -1, dtype=np.int64)
        own_size = np.full((E, M), -1, dtype=np.int64)
        top_constant = np.zeros(E, dtype=bool)
        own_ov = np.full((E, M, Fn), np.nan)

        def one(i: int) -> None:
            e = epochs[i]
            res = analysis.spectrum(run, e, group=spec.group, reduction=spec.reduction, top=spec.top,
                                    model=ref_model if e == ref else None, cache=cache)
            V = res.eigenvectors
            eig[i, :len(res.eigenvalues)] = res.eigenvalues
            inside = [j for j, (_, t) in enumerate(spans) if t < V.shape[1]]
            own = _cliffs(res, spec)[:M]
            allov = windows_overlaps(V, [spans[j] for j in inside] + [(c.start, c.end) for c in own], bases)
            ov[i, inside] = allov[:len(inside)]
            top_constant[i] = label_cliffs([(0, 0)], V)[0] == CONSTANT_LABEL
            for m, c in enumerate(own):
                own_start[i, m], own_size[i, m] = c.start, c.size
                own_ov[i, m] = allov[len(inside) + m]

        # each checkpoint's spectrum is a unit; the driver (this thread) caches what comes back
        keys = {e: analysis.spectrum_key(run, e, group=spec.group, reduction=spec.reduction, top=spec.top)
                for e in epochs}
        todo = [e for e in epochs if keys[e] not in cache]
        done = [1]

        def advance(e: int) -> None:
            done[0] += 1
            if progress:
                progress(done[0], total, f"epoch {e}")

        for e in epochs:
            if e not in todo:
                one(epochs.index(e))
                advance(e)
        ship = bool(ray) or executor is not None
        units = [Unit(f"epoch {e}", spectrum_unit, _unit_kwargs(run, e, spec, ship=ship)) for e in todo]
        by_key = {u.key: e for u, e in zip(units, todo)}

        def on_result(r) -> None:
            e = by_key[r.key]
            if r.ok:
                cache.set(keys[e], r.value["arrays"], r.value["meta"])
                one(epochs.index(e))
            else:
                failed[e] = r.error
            advance(e)

        ex = executor or make_executor(ray=ray, workers=workers, n_units=len(units))
        try:
            ex.run(units, on_result=on_result)
            exec_desc.update(ex.describe())
        finally:
            if executor is None:
                ex.close()
        arrays = {
            "eigenvalues": eig, "overlap": ov, "own_start": own_start, "own_size": own_size,
            "own_overlap": own_ov, "top_constant": top_constant, "dims": dims,
            "window_start": np.array([s for s, _ in spans], dtype=np.int64).reshape(-1),
            "window_end": np.array([t for _, t in spans], dtype=np.int64).reshape(-1),
        }
        meta = {"families": names, "labels": labels, "compute_s": round(time.perf_counter() - t0, 3)}
        if failed:
            raise _Incomplete(arrays, meta)
        return arrays, meta

    failed: dict[int, str] = {}
    exec_desc: dict[str, Any] = {}
    try:
        entry = cache.get_or_compute(key, compute)
    except _Incomplete as inc:  # some checkpoints failed twice: report them, cache nothing
        entry = CacheEntry(inc.arrays, {**inc.meta, "cache": "incomplete"})
    if progress:
        progress(total, total, "done")
    res = _assemble(run, spec, epochs, entry, time.perf_counter() - t0)
    res.meta["failed"] = [{"epoch": e, "error": err} for e, err in sorted(failed.items())]
    if exec_desc:
        res.meta["executor"] = exec_desc
    return res


class _Incomplete(Exception):
    """Raised out of the cache's compute() so that an incomplete sweep is not stored."""

    def __init__(self, arrays, meta):
        super().__init__("incomplete sweep")
        self.arrays, self.meta = arrays, meta


def _cliffs(res: analysis.SpectrumResult, spec: SweepSpec) -> list[Cliff]:
    return res.cliffs if spec.min_ratio is None else detect_cliffs(res.eigenvalues, min_ratio=spec.min_ratio)


def _unit_kwargs(run: Run, epoch: int, spec: SweepSpec, *, ship: bool) -> dict[str, Any]:
    """A checkpoint's unit arguments: the run folder's path, or (``ship``) the manifest and the
    checkpoint's safetensors bytes, so a worker on another machine needs no shared filesystem."""
    kw: dict[str, Any] = {"epoch": epoch, "group": spec.group, "reduction": spec.reduction, "top": spec.top}
    if ship:
        kw["manifest"] = run.manifest
        kw["checkpoint"] = run.checkpoint_path(epoch).read_bytes()
    else:
        kw["run_path"] = str(run.path.resolve())
    return kw


def spectrum_unit(*, epoch: int, group: str, reduction: str, top: int, run_path: str | None = None,
                  manifest: dict | None = None, checkpoint: bytes | None = None) -> dict[str, Any]:
    """Unit: one checkpoint's spectrum (:func:`entk_core.workflows.analysis.compute_spectrum`),
    computed without touching any cache. The run is the folder ``run_path``, or is rebuilt in
    a private temporary folder from the shipped ``manifest`` and ``checkpoint`` bytes (checked
    against the manifest's sha256 when read, like any checkpoint)."""
    if run_path is not None:
        run = Run(run_path)
        arrays, meta = analysis.compute_spectrum(run, epoch, group=group, reduction=reduction, top=top)
        return {"arrays": arrays, "meta": meta}
    entry = next(c for c in manifest["checkpoints"] if c["epoch"] == epoch)
    with tempfile.TemporaryDirectory(prefix="entk-unit-") as tmp:
        folder = Path(tmp) / "run"
        (folder / Path(entry["file"]).parent).mkdir(parents=True)
        (folder / entry["file"]).write_bytes(checkpoint)
        (folder / MANIFEST).write_text(json.dumps({**manifest, "checkpoints": [entry]}))
        run = Run(folder)
        arrays, meta = analysis.compute_spectrum(run, epoch, group=group, reduction=reduction, top=top)
    return {"arrays": arrays, "meta": meta}


def _kernel_rows(run: Run, spec: SweepSpec) -> int:
    n = len(run.data.kernel_idx)
    if spec.reduction == "flat":
        n *= int(run.family.build_model(run.config)(run.data.kernel_x[:1]).shape[-1])
    return n


def _assemble(run: Run, spec: SweepSpec, epochs: list[int], entry, elapsed: float) -> SweepResult:
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
    return SweepResult(
        run=run.name, spec=spec, epochs=np.asarray(epochs, dtype=np.int64),
        train_acc=_metric_series(run, "train_acc", epochs), test_acc=_metric_series(run, "test_acc", epochs),
        eigenvalues=entry["eigenvalues"], windows=windows, families=names, dims=dims, overlap=ov,
        derivative=der, own_start=entry["own_start"], own_size=entry["own_size"],
        own_overlap=entry["own_overlap"], top_constant=entry["top_constant"], onset_epoch=_onset(run), peak_epoch=peak, primary=primary,
        peaks=peaks, meta=meta,
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
