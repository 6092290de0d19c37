"""What a long computation will cost on this machine, before it starts (for the dashboard's
"Start (~2 min)" offers and the CLI's estimate lines).

* A spectrum: the engine's calibrated planner (:func:`entk_core.workflows.analysis.estimate_spectrum`).
* A sweep over the checkpoints: one unit per checkpoint whose spectrum is not cached yet,
  run as the sweep runs them (:func:`entk_core.workflows.executors.make_executor`'s default:
  worker processes of one thread each from 8 checkpoints on, else this process). A unit the
  planner puts under :data:`MEASURE_UNIT_BELOW_S` is timed instead: one real unit, computed
  here as a worker computes it and kept in the cache (the planner's fixed per-call costs
  dominate such small kernels: it put the 201-checkpoint Transformer sweep at 38 s where it
  took 15 s). Larger units take the planner's estimate. Each unit adds
  :data:`UNIT_OVERHEAD_S`, and worker processes add their start (:func:`worker_start_seconds`).
* The PCA baseline over training (:func:`entk_core.workflows.baselines.pca_profile`, once
  per run for every window size and family): one checkpoint's activations and SVD, timed on
  this machine (once per run and process), times the number of checkpoints.

A page adds the phases of one action (the Grokking page's first visit: the sweep, then the
PCA baseline) and states them all before it starts (:func:`entk_core.ui.jobs.long_calls`).

Every estimate is 0 for work already cached, and ``None`` where nothing can be said (a
request that is invalid or cannot fit: it is refused before any work with its own message).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

import numpy as np
import torch

from ..families.run import Run
from ..store.cache import default_cache
from . import analysis
from .baselines import hidden_activations, pca_profile_key
from .sweep import default_spec, resolve_spec

__all__ = ["WORKER_START_S", "POOL_START_S", "worker_start_seconds", "UNIT_OVERHEAD_S", "MEASURE_UNIT_BELOW_S",
           "busy_factor", "pool_workers", "planner_speedup", "preload_like_workers", "timed_unit", "spectrum_seconds",
           "sweep_seconds", "pca_over_training_seconds"]

WORKER_START_S = 1.5
"""Seconds to start the sweep's worker processes on an idle machine when this process has no
forkserver yet (the CLI: a fresh interpreter importing torch and the library), scaled by the
load (:func:`busy_factor`)."""

POOL_START_S = 0.3
"""The same when the forkserver runs (the dashboard starts it with its first offer, and its
jobs' pools take their workers from it): forked workers with everything imported."""

UNIT_OVERHEAD_S = 0.04
"""Seconds per checkpoint of a sweep beside its kernel and eigensolver (the planner's part) on
an idle machine: reading the checkpoint, shipping the unit and its eigenpairs, the cache write
and the overlaps; scaled by the load (:func:`busy_factor`). Measured with
``benchmarks/bench_estimates.py``: quiet (load 0.5 per core), the 201-checkpoint Transformer
sweep took 14.3 s in all (0.07 s a checkpoint, its kernels about 0.03 s); on 2 shared cores
(load 6 per core) 112 s where the planner's part was 35 s (0.38 s a checkpoint)."""


MEASURE_UNIT_BELOW_S = 1.0
"""A sweep unit the planner estimates under this many seconds is timed instead (once per run
and spec, per process): the estimate then costs about one unit, which the sweep does not
compute again."""


def busy_factor() -> float:
    """How much slower fixed overheads run now than on an idle machine: the load per core,
    at least 1 (the planner's rates are re-measured when the load changes; these are not rates)."""
    from ..engine.machine import load_per_core

    return max(1.0, load_per_core())


def worker_start_seconds() -> float:
    """Seconds before a pool's workers take their first unit, now (:data:`WORKER_START_S` or,
    with the forkserver running or starting, :data:`POOL_START_S`), scaled by the load."""
    from .jobs import forkserver_started

    return (POOL_START_S if forkserver_started() else WORKER_START_S) * busy_factor()


def pool_workers() -> int:
    """Worker processes a sweep (or dynamics) of 8 units or more runs on by default
    (:func:`entk_core.workflows.executors.make_executor`): the CPU count, at most 4."""
    return min(os.cpu_count() or 1, 4)


def planner_speedup() -> float:
    """How much faster those workers get through units than this process, at the planner's
    rates: the planner's rates are this process's (``torch.get_num_threads()`` threads), and
    each worker has one thread."""
    return max(1.0, pool_workers() / max(1, torch.get_num_threads()))


def preload_like_workers() -> None:
    """Import what every worker has imported before its first unit (the jobs' forkserver
    preload, :mod:`entk_core.workflows.job_preload`), so that a unit timed here is timed as a
    worker runs it: in a fresh process the first kernel also paid torch's lazy imports, 2.8 s
    where the unit takes 0.46 s (the p = 29 MLP, measured)."""
    from . import job_preload  # noqa: F401


_PCA_UNIT: dict[tuple[str, str], float] = {}
_SWEEP_UNIT: dict[tuple, float] = {}
_LOCK = threading.Lock()


def spectrum_seconds(run: Run, epoch: int | None = None, *, group: str, reduction: str | None = None,
                     top: int | None = None, beta: float | None = None) -> float | None:
    """Seconds one spectrum request would take here (0 when cached; ``None`` when it is
    invalid or cannot fit in memory: starting it costs nothing, it is refused at once)."""
    try:
        e = analysis.estimate_spectrum(run, epoch, group=group, reduction=reduction, top=top, beta=beta)
    except ValueError:
        return None
    return float(e["seconds"]) if e["fits"] else None


def sweep_seconds(run: Run, spec=None, *, group: str | None = None, kernels_cached: bool = False) -> float | None:
    """Seconds :func:`entk_core.workflows.sweep.sweep` of ``run`` would take with ``spec``
    (default: the family's spec for ``group``), counting only the checkpoints whose spectrum
    is not cached. A checkpoint whose ``(N, N)`` kernel is cached (or, with
    ``kernels_cached``, will be by then: an action whose earlier phase computes them, as
    Training dynamics does) costs its eigendecomposition in the sweep's own process
    (:func:`_local_unit_seconds`). Of the others, from 8 on, a small unit is timed
    (:func:`_unit_seconds`), so the first call may compute (and cache) one checkpoint's spectrum."""
    spec = resolve_spec(spec or default_spec(run, group), run)
    todo = _uncached(run, spec, run.epochs)
    if not todo:
        return 0.0
    local = [e for e in todo if spec.reduction != "flat" and (
        kernels_cached or analysis.kernel_cached(run, e, group=spec.group, reduction=spec.reduction))]
    if local:
        todo = [e for e in todo if e not in local]
        rest = _units_seconds(run, spec, todo) if todo else 0.0
        if rest is None:
            return None
        return rest + len(local) * _local_unit_seconds(analysis.kernel_size(run, spec.reduction), spec.top)
    return _units_seconds(run, spec, todo)


def _units_seconds(run: Run, spec, todo: list[int]) -> float | None:
    """Seconds the sweep's units for the checkpoints ``todo`` (spectra not cached, kernels not
    cached) take: :func:`sweep_seconds` without the checkpoints it serves from cached kernels."""
    one = spectrum_seconds(run, todo[-1], group=spec.group, reduction=spec.reduction, top=spec.top)
    if one is None:
        return None
    busy = busy_factor()
    if len(todo) < 8:  # computed in this process, with its torch threads
        return len(todo) * (one + UNIT_OVERHEAD_S * busy)
    workers = pool_workers()
    if one < MEASURE_UNIT_BELOW_S:
        unit = _unit_seconds(run, todo[-2:], spec)
        if unit is not None:  # a worker's unit (load, kernel, eigensolver), plus shipping, cache write and overlaps
            left = len(todo) - 2 + len(_uncached(run, spec, todo[-2:]))  # the timed units are cached, unless timed before
            return worker_start_seconds() + left * (unit + UNIT_OVERHEAD_S * busy) / workers
    return worker_start_seconds() + len(todo) * UNIT_OVERHEAD_S * busy + len(todo) * one / planner_speedup()


def _uncached(run: Run, spec, epochs: list[int]) -> list[int]:
    """The ``epochs`` whose spectrum with ``spec`` the cache does not hold."""
    cache = default_cache()
    return [e for e in epochs
            if analysis.spectrum_key(run, e, group=spec.group, reduction=spec.reduction, top=spec.top) not in cache]


def timed_unit(memo: dict, key, epochs: list[int], unit: Callable[[int], Callable[[], None]]) -> float | None:
    """Seconds one unit of a sweep-like computation takes here, as its worker runs it: with the
    workers' imports (:func:`preload_like_workers`) and one thread. ``unit(epoch)`` computes one
    checkpoint's unit and returns what stores it in the cache (not timed), so the computation
    does not compute it again. It is timed at each of ``epochs`` (the last two uncached: the
    first unit of a process still pays one-off costs, 0.37-0.54 s where the next took
    0.27-0.34 s for a dynamics unit) and the fastest kept, in ``memo`` under ``key``, once per
    process. ``None`` when a unit fails (the computation reports that itself)."""
    from threadpoolctl import threadpool_limits

    with _LOCK:
        t = memo.get(key)
    if t is not None:
        return t
    preload_like_workers()
    times = []
    for epoch in epochs:
        try:
            with threadpool_limits(1):  # a worker's one thread (executors.LocalExecutor)
                t0 = time.perf_counter()
                store = unit(epoch)
                times.append(time.perf_counter() - t0)
        except (RuntimeError, ValueError, OSError, MemoryError):
            return None
        store()
    t = min(times)
    with _LOCK:
        memo[key] = t
    return t


def _unit_seconds(run: Run, epochs: list[int], spec) -> float | None:
    """Seconds one sweep unit takes here (:func:`timed_unit`): the spectrum of ``run`` with
    ``spec``, computed with no cache as a sweep worker computes it
    (:func:`entk_core.workflows.sweep.spectrum_unit`), then stored as the sweep's driver stores
    it. Timed once per run and spec: a unit costs the same at every checkpoint."""
    def unit(epoch: int):
        arrays, meta = analysis.compute_spectrum(run, epoch, group=spec.group, reduction=spec.reduction, top=spec.top)
        key = analysis.spectrum_key(run, epoch, group=spec.group, reduction=spec.reduction, top=spec.top)
        return lambda: default_cache().set(key, arrays, meta)

    key = (str(run.path), run.checkpoint_sha(run.epochs[-1]), spec.group, spec.reduction, spec.top)
    return timed_unit(_SWEEP_UNIT, key, epochs, unit)


_LOCAL_UNIT: dict[tuple[int, int], float] = {}
LOCAL_TIMED_MAX = 4096
"""Kernels up to this many rows have their eigendecomposition timed (:func:`_local_unit_seconds`,
about a second at this size); larger ones take the planner's count."""


def _local_unit_seconds(n: int, top: int) -> float:
    """Seconds the sweep's process takes for one checkpoint whose ``(n, n)`` kernel is cached:
    reading it back and its top-``top`` eigenpairs (:func:`entk_core.engine.eigenpairs.top_eigenpairs`,
    one thread, as a page's worker runs it; timed once per size in this process on a random
    symmetric matrix: the engine's planner put the 841-row eigendecomposition at 0.056 s where
    it takes 0.10 s)."""
    if n > LOCAL_TIMED_MAX:  # not worth a random matrix of this size: the planner's count
        from ..engine.machine import eigh_seconds, machine_rates

        return eigh_seconds(n, machine_rates()) + 4.0 * n * n / 1e9
    with _LOCK:
        t = _LOCAL_UNIT.get((n, top))
    if t is None:
        from threadpoolctl import threadpool_limits

        from ..engine.eigenpairs import top_eigenpairs

        A = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
        K = A @ A.T
        with threadpool_limits(1):
            t0 = time.perf_counter()
            top_eigenpairs(K, top)
            t = time.perf_counter() - t0
        with _LOCK:
            _LOCAL_UNIT[(n, top)] = t
    return t + 4.0 * n * n / 1e9  # + the float32 kernel read back (~1 GB/s); nothing is shipped


def pca_over_training_seconds(run: Run) -> float | None:
    """Seconds :func:`entk_core.workflows.alignment.pca_over_training` of ``run`` would take:
    the last checkpoint's model load, hidden activations and principal directions, timed
    here once per run (and process), times the number of checkpoints. ``None`` when the
    family declares no hidden activations."""
    if not run.family.offers("pca"):
        return None
    if pca_profile_key(run) in default_cache():
        return 0.0
    last = run.epochs[-1]
    key = (str(run.path), run.checkpoint_sha(last))
    with _LOCK:
        unit = _PCA_UNIT.get(key)
    if unit is None:
        from threadpoolctl import threadpool_limits

        from .jobs import worker_threads

        with threadpool_limits(worker_threads()):  # as a worker computes it (module jobs)
            t0 = time.perf_counter()
            H = hidden_activations(run, last)  # loads the checkpoint and runs the model, as each step does
            np.linalg.svd(H - H.mean(axis=0, keepdims=True), full_matrices=False)  # what each step's PCA costs
            unit = time.perf_counter() - t0
        with _LOCK:
            _PCA_UNIT[key] = unit
    return unit * len(run.epochs)
