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

Cliff labels: :func:`entk_core.engine.spectra.label_cliffs`, the one labelling used
everywhere (``constant`` for the constant mode, then ``cliff 1, cliff 2, ...`` in spectral
order: for the MLP ``cliff 1`` = a/b modes, indices 1-56, ``cliff 2`` = sum/diff modes, 57-112).

Plugging in another family
--------------------------
A :class:`~entk_core.families.base.SweepSpec` says what to sweep: layer group, reduction,
top-k, which feature families (default: every family of ``family.feature_families`` whose
rows match the kernel), the window source and the primary family. A model family's
``sweep_spec(cfg, group)`` hook provides it (used by :func:`default_spec`; ``None``: the
defaults). Feature families are built once per sweep from the model at the reference
epoch (so data-dependent families such as a Transformer's key frequencies work). The
worker processes find the run's family the way the calling process did: through its
entry point, or by importing the family's class (:func:`entk_core.families.base.family_ref`);
a family defined in ``__main__`` cannot be imported by a worker, so such sweeps run in
the calling process.
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

from ..engine.measures import (derivative_peak_epoch, family_bases, grokking_onset, local_first_derivative,
                               window_overlaps, windows_overlaps)
from ..engine.spectra import CONSTANT_LABEL, Cliff, detect_cliffs, is_constant_mode, label_cliffs
from ..families.base import FULL, SweepSpec, family_ref, get_family, load_family_ref
from ..families.features import families_with_rows
from ..families.run import Run
from ..store.cache import ArrayCache, CacheEntry, default_cache, make_key
from ..store.runs import MANIFEST
from . import analysis
from .executors import Executor, InlineExecutor, Unit, make_executor

__all__ = ["SweepSpec", "Window", "SweepResult", "default_spec", "resolve_spec", "sweep",
           # re-exported from the layers below, where they live:
           "CONSTANT_LABEL", "label_cliffs", "family_bases", "window_overlaps", "windows_overlaps"]

Progress = Callable[[int, int, str], None]

SWEEP_FORMAT = 2
"""Version of the cached sweep layout (part of its cache key)."""

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
    group = group or FULL
    spec = run.family.sweep_spec(run.config, group) or SweepSpec(group=group)
    return replace(spec, **{k: v for k, v in overrides.items() if v is not None})


def resolve_spec(spec: SweepSpec, run: Run) -> SweepSpec:
    """``spec`` with its defaults filled in from the run (what the cache key uses):
    the family's reduction and top (at most the kernel's size), the window group, the
    reference epoch, tuples for ``families`` and ``windows``."""
    reduction = spec.reduction or run.family.default_reduction
    return replace(
        spec,
        reduction=reduction,
        top=min(int(spec.top or run.family.default_top), analysis.kernel_size(run, reduction)),
        window_group=spec.window_group or spec.group,
        reference_epoch=run.resolve_epoch(spec.reference_epoch),
        families=tuple(spec.families) if spec.families is not None else None,
        windows=tuple((int(a), int(b)) for a, b in spec.windows) if spec.windows is not None else None,
    )


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
    spec = resolve_spec(spec or default_spec(run), run)
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
            top_constant[i] = V.shape[1] > 0 and is_constant_mode(V[:, 0])
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
        ref_name = family_ref(run.family)  # how a worker imports the family (None: it cannot)
        units = [Unit(f"epoch {e}", spectrum_unit, _unit_kwargs(run, e, spec, ship=ship, ref=ref_name))
                 for e in todo]
        by_key = {u.key: e for u, e in zip(units, todo)}

        def on_result(r) -> None:
            e = by_key[r.key]
            if r.ok:
                cache.set(keys[e], r.value["arrays"], r.value["meta"])
                one(epochs.index(e))
            else:
                failed[e] = r.error
            advance(e)

        if executor is None and ref_name is None:
            ex = InlineExecutor()  # a family registered at run time only exists in this process
        else:
            ex = executor or make_executor(ray=ray, workers=workers, n_units=len(units))
        try:
            ex.run(units, on_result=on_result)
            exec_desc.update(ex.describe())
        finally:
            if ex is not executor:
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


def _unit_kwargs(run: Run, epoch: int, spec: SweepSpec, *, ship: bool, ref: str | None) -> dict[str, Any]:
    """A checkpoint's unit arguments: the run folder's path, or (``ship``) the manifest and the
    checkpoint's safetensors bytes, so a worker on another machine needs no shared filesystem;
    ``ref`` (``module:Class``) lets a worker import a family that no entry point declares."""
    kw: dict[str, Any] = {"epoch": epoch, "group": spec.group, "reduction": spec.reduction, "top": spec.top,
                          "family": run.family.name, "family_ref": ref}
    if ship:
        kw["manifest"] = run.manifest
        kw["checkpoint"] = run.checkpoint_path(epoch).read_bytes()
    else:
        kw["run_path"] = str(run.path.resolve())
    return kw


def spectrum_unit(*, epoch: int, group: str, reduction: str, top: int, family: str, family_ref: str | None = None,
                  run_path: str | None = None, manifest: dict | None = None,
                  checkpoint: bytes | None = None) -> dict[str, Any]:
    """Unit: one checkpoint's spectrum (:func:`entk_core.workflows.analysis.compute_spectrum`),
    computed without touching any cache. The run is the folder ``run_path``, or is rebuilt in
    a private temporary folder from the shipped ``manifest`` and ``checkpoint`` bytes (checked
    against the manifest's sha256 when read, like any checkpoint). A family that no entry
    point declares (registered at run time in the driver) is imported from ``family_ref``."""
    try:
        get_family(family)
    except ValueError:
        if family_ref is None:
            raise
        load_family_ref(family_ref, name=family)
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
