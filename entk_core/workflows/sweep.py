"""Per-checkpoint (grokking) sweeps: the eNTK's spectrum and cliffs over training, and how
they align with features where the family has feature families.

For every checkpoint of a run, :func:`sweep` takes the top-k spectrum of one kernel
(:func:`entk_core.workflows.analysis.spectrum`, so each epoch is cached and shared with the
Spectrum page), detects its cliffs and tracks the reference epoch's cliff windows, and
measures the subspace overlap (:func:`entk_core.engine.measures.subspace_overlap`,
``‖QᵀF‖²_F``, out of the family's dimension) of those windows with the family's feature
families. A family without feature families (a researcher's own model, usually) gets the
spectra, windows and cliffs with no overlap columns (``families`` empty, ``peak_epoch``
``None``). The whole result is cached again as one entry, so a second sweep is a single
read. The result and its JSON are :mod:`entk_core.workflows.sweep_result`.

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
in this process for a few checkpoints, in ``workers`` local worker processes (one torch thread
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

import time
from dataclasses import asdict, replace
from typing import Any, Callable

import numpy as np

from ..engine.measures import family_bases, window_overlaps, windows_overlaps
from ..engine.spectra import CONSTANT_LABEL, Cliff, detect_cliffs, is_constant_mode, label_cliffs
from ..families.base import FULL, SweepSpec
from ..families.features import families_with_rows
from ..families.run import Run
from ..store.cache import ArrayCache, CacheEntry, default_cache, make_key
from . import analysis
from .checkpoint_units import checkpoints_digest, choose_executor, family_kwargs, open_unit_run, unit_location
from .executors import Executor, Unit
from .sweep_result import SweepResult, Window, assemble_result, spec_json

__all__ = ["SweepSpec", "Window", "SweepResult", "default_spec", "resolve_spec", "sweep", "spectrum_unit",
           # re-exported from the layers below, where they live:
           "CONSTANT_LABEL", "label_cliffs", "family_bases", "window_overlaps", "windows_overlaps"]

Progress = Callable[[int, int, str], None]

SWEEP_FORMAT = 2
"""Version of the cached sweep layout (part of its cache key)."""

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
                   checkpoints=checkpoints_digest(run), spec=spec_json(spec))
    total = len(epochs) + 1

    def compute():
        run.check_same_shapes()  # a series whose shapes change is not one model: one line naming two epochs
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
        bases = family_bases(families)  # none: spectra and cliffs only
        names = list(bases)
        dims = np.array([b.shape[1] for b in bases.values()], dtype=np.int64)

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

        # a cached spectrum, or (trace/mean) a cached kernel, e.g. from dynamics: here, an eigh at most
        local = [e for e in epochs if e not in todo or analysis.kernel_cached(run, e, group=spec.group,
                                                                              reduction=spec.reduction, cache=cache)]
        todo = [e for e in todo if e not in local]
        for e in local:
            one(epochs.index(e))
            advance(e)
        ship = bool(ray) or executor is not None
        opts = {"group": spec.group, "reduction": spec.reduction, "top": spec.top, **family_kwargs(run)}
        units = [Unit(f"epoch {e}", spectrum_unit, {"epoch": e, **opts, **unit_location(run, e, ship=ship)})
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

        ex = choose_executor(run, executor=executor, ray=ray, workers=workers, n_units=len(units))
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
    res = assemble_result(run, spec, epochs, entry, time.perf_counter() - t0)
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


def spectrum_unit(*, epoch: int, group: str, reduction: str, top: int, family: str, family_ref: str | None = None,
                  run_path: str | None = None, manifest: dict | None = None,
                  checkpoint: bytes | None = None) -> dict[str, Any]:
    """Unit: one checkpoint's spectrum (:func:`entk_core.workflows.analysis.compute_spectrum`),
    computed without touching any cache, on the run that
    :func:`entk_core.workflows.checkpoint_units.open_unit_run` opens."""
    with open_unit_run(epoch=epoch, family=family, family_ref=family_ref, run_path=run_path, manifest=manifest,
                       checkpoint=checkpoint) as run:
        arrays, meta = analysis.compute_spectrum(run, epoch, group=group, reduction=reduction, top=top)
    return {"arrays": arrays, "meta": meta}


def _kernel_rows(run: Run, spec: SweepSpec) -> int:
    n = len(run.data.kernel_idx)
    if spec.reduction == "flat":
        n *= int(run.family.build_model(run.config)(run.data.kernel_x[:1]).shape[-1])
    return n
