"""How a run's eNTK moves over training, for any model family (no feature families needed).

:func:`dynamics` computes, for every checkpoint of a run (trained, imported or a plug-in's),
the kernel of one layer group on the family's kernel inputs (``run.data.kernel_x``) in one
reduction (default: the family's), and from it:

``kernel_distance_prev``, ``kernel_distance_final``
    Fort et al. 2020 ("Deep learning versus kernel learning"): ``1 − ⟨K₁, K₂⟩_F /
    (‖K₁‖_F ‖K₂‖_F)`` to the previous checkpoint (``None`` for the first) and to the last
    (0 at the last). :func:`entk_core.engine.kernel_measures.kernel_distance`.
``target_alignment``
    Centred kernel-target alignment (Cortes, Mohri and Rostamizadeh 2012) with the
    family's targets of the kernel inputs (:meth:`ModelFamily.targets`: one-hot labels or
    regression targets; class-major for flattened kernels). Omitted, with the reason in
    ``notes``, when the family has none. :func:`entk_core.engine.kernel_measures.centred_alignment`.
``effective_rank``
    Roy and Vetterli 2007, ``exp(−Σ p log p)``, ``p = λ/Σλ``, over *all* eigenvalues when the
    kernel has at most :data:`FULL_SPECTRUM_MAX` rows, else over the top ``top`` (the JSON's
    ``effective_rank_over`` says which).
``top_eigenvalues``, ``cliffs``
    The top ``top`` eigenvalues (descending) and the cliffs detected in them
    (:func:`entk_core.engine.spectra.detect_cliffs`, labelled as everywhere else).
``kernel_regression_test_accuracy``
    The eNTK kernel-regression predictor of the checkpoint (spec §2.7's linearised-predictor
    check, "pure" mode: ``K(x, X)(K + λI)⁻¹ Y``, ``λ = ridge · mean(diag K_train)``, ridge
    1e-6), fitted on the kernel rows of the train split with the one-hot labels and scored
    (argmax) on the kernel rows of the test split; beside it the network's own
    ``network_train_accuracy`` and ``network_test_accuracy`` from the run's log. Where the
    two part, the network has left what its kernel at that checkpoint can express. Omitted
    with the reason for families without class labels or without test inputs among the
    kernel rows. For the trace and mean reductions one ``(N, N)`` kernel serves every output;
    for ``"flat"`` the kernel is class-major.

JSON (:meth:`DynamicsResult.to_json`)::

    {"run", "group", "reduction", "family", "n", "top", "effective_rank_over",
     "checkpoints": [{"epoch", "kernel_distance_prev", "kernel_distance_final",
                      "target_alignment", "effective_rank", "top_eigenvalues", "cliffs",
                      "kernel_regression_test_accuracy", "network_train_accuracy",
                      "network_test_accuracy"}],
     "notes": {field: why it is null or omitted}, "landmarks": {"kernel_fastest", "alignment_peak",
     "alignment_fastest_rise", "grokking_onset"} (:func:`landmarks`), "unvouched_metrics"
     (imported runs), "cache", "compute_s", "total_s", "executor"}

Cost, memory and caching
------------------------
Each checkpoint whose measures are not cached is a unit (:func:`checkpoint_unit`) run
through the executor seam (:mod:`entk_core.workflows.executors`: in this process, local
worker processes by default for 8 or more checkpoints, or Ray), like the sweep's. A unit
computes its kernel and the measures that need only that kernel, and returns both; the
driver (this process) alone writes the cache: the kernel under
:func:`entk_core.workflows.analysis.kernel_key` (shared with
:func:`~entk_core.workflows.analysis.kernel_matrix`, the Spectrum page and the alignment
views) and the measures under a per-checkpoint key (:func:`checkpoint_key`: the
checkpoint's sha256, group, reduction, top and ridge). The distances to the previous
checkpoint are taken in epoch order while the kernels arrive (the previous kernel and the
one just arrived, or read back from the cache when it came early), those to the last in one
pass over the cache afterwards (the last kernel and the current one): the driver never
holds more than two kernels, a worker one. The assembled result is cached once more under the run's key (the sha256s of
all its checkpoints), so a second call is one read, and a run that gains a checkpoint
recomputes only that checkpoint's kernel and the distances.

Bad input: a run whose checkpoints hold different parameter shapes is refused before
anything is computed, naming the two epochs; a run with one checkpoint gets null distances
and a note saying why; nothing already cached is touched by a failure (a unit that fails
twice leaves its checkpoint out of the cache and the run's result uncached, so the next call
computes just the missing checkpoints).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
from threadpoolctl import threadpool_limits

from ..engine import kernel_measures as km
from ..engine.units import format_bytes
from ..families.run import Run
from ..store.cache import ArrayCache, default_cache, make_key
from ..store.runs import RunError
from . import analysis
from .checkpoint_units import checkpoints_digest, choose_executor, family_kwargs, unit_location
from .dynamics_measures import (DEFAULT_RIDGE, DYNAMICS_FORMAT, FULL_SPECTRUM_MAX, Request, checkpoint_key,
                                checkpoint_unit, compute_checkpoint_kernel, kernel_store_key, measure_kernel,
                                pack_kernel, request, unpack_kernel)
from .executors import Executor, Unit
from .jobs import NotCached, ProbeCache
from .sweep_result import json_number, run_onset_epoch

__all__ = ["DynamicsResult", "dynamics", "dynamics_key", "dynamics_plan", "dynamics_seconds", "cached_dynamics",
           "landmarks", "FIELDS",
           # re-exported from dynamics_measures, where they live:
           "checkpoint_key", "checkpoint_unit", "measure_kernel", "FULL_SPECTRUM_MAX", "DEFAULT_RIDGE"]

Progress = Callable[[int, int, str], None]

FIELDS = ("kernel_distance_prev", "kernel_distance_final", "target_alignment", "effective_rank", "top_eigenvalues",
          "cliffs", "kernel_regression_test_accuracy", "network_train_accuracy", "network_test_accuracy")
"""The per-checkpoint fields of the JSON, in order."""


def dynamics_key(run: Run, group: str | None = None, reduction: str | None = None, top: int | None = None,
                 ridge: float = DEFAULT_RIDGE) -> str:
    """Cache key of the whole result of :func:`dynamics` for these options."""
    req = request(run, group, reduction, top, ridge)
    return _run_key(run, req)


def _run_key(run: Run, req: Request) -> str:
    return make_key("dynamics", format=DYNAMICS_FORMAT, family=run.family.name, config=asdict(run.config),
                    checkpoints=checkpoints_digest(run), **req.options())


# ------------------------------------------------------------------ the result
@dataclass
class DynamicsResult:
    """Result of :func:`dynamics`.

    Attributes:
      epochs: ``(E,)``; ``eigenvalues``: ``(E, top)`` top eigenvalues per checkpoint.
      rows: one JSON object per checkpoint (the fields of :data:`FIELDS`).
      notes: ``field -> sentence`` for every field that is null or omitted, and why.
      meta: ``run``, ``family``, ``group``, ``reduction``, ``n``, ``top``, ``effective_rank_over``,
        cache and timing facts, ``unvouched_metrics`` for an imported run.
    """

    epochs: np.ndarray
    eigenvalues: np.ndarray
    rows: list[dict[str, Any]]
    notes: dict[str, str]
    meta: dict[str, Any] = field(default_factory=dict)

    def curve(self, name: str) -> np.ndarray:
        """``(E,)`` float values of a scalar field (NaN where null or omitted)."""
        if name not in FIELDS or name in ("top_eigenvalues", "cliffs"):
            raise ValueError(f"no scalar field '{name}'; choose one of: "
                             + ", ".join(f for f in FIELDS if f not in ("top_eigenvalues", "cliffs")))
        return np.array([np.nan if r.get(name) is None else float(r[name]) for r in self.rows])

    def to_json(self) -> dict[str, Any]:
        """The JSON of the module docstring."""
        m = self.meta
        return {"run": m["run"], "group": m["group"], "reduction": m["reduction"], "family": m["family"],
                "n": m["n"], "top": m["top"], "effective_rank_over": m["effective_rank_over"],
                "checkpoints": self.rows, "notes": self.notes,
                **{k: v for k, v in m.items() if k not in ("run", "group", "reduction", "family", "n", "top",
                                                            "effective_rank_over")}}


# ----------------------------------------------------------------- the driver
def cached_dynamics(run: Run, group: str | None = None, reduction: str | None = None, top: int | None = None, *,
                    ridge: float = DEFAULT_RIDGE, cache: ArrayCache | None = None) -> DynamicsResult | None:
    """The result of :func:`dynamics` if it is cached, else ``None`` (computes nothing: what a
    page asks on every rerun before offering to compute)."""
    req = request(run, group, reduction, top, ridge)
    cache = cache or default_cache()
    entry = cache.get(_run_key(run, req))
    if entry is None:
        return None
    return _result(run, req, entry["epochs"], entry["eigenvalues"], entry.meta, "hit", 0.0)


def dynamics_plan(run: Run, group: str | None = None, reduction: str | None = None, top: int | None = None, *,
                  ridge: float = DEFAULT_RIDGE, cache: ArrayCache | None = None) -> dict[str, Any]:
    """What :func:`dynamics` would do now, computing nothing but reading cache keys:
    ``{"cached": whole result cached, "checkpoints": E, "measured": checkpoints whose measures
    are cached, "kernels_cached": of the others, those whose kernel is, "to_compute": kernels
    to compute, "seconds_per_kernel": the planner's estimate of one (``None`` when nothing is
    to compute), "kernel_bytes": what one cached kernel takes, "last_to_compute": the last two
    checkpoints whose kernel is to compute}`` (what a page shows before a Compute button)."""
    req = request(run, group, reduction, top, ridge)
    cache = cache or default_cache()
    if _run_key(run, req) in cache:
        return {"cached": True, "checkpoints": len(run.epochs), "measured": len(run.epochs), "kernels_cached": 0,
                "to_compute": 0, "seconds_per_kernel": None, "kernel_bytes": kernel_bytes(run, req)}
    measured = [e for e in run.epochs if checkpoint_key(run, e, req) in cache]
    rest = [e for e in run.epochs if e not in measured]
    kernels = [e for e in rest if kernel_store_key(run, e, req) in cache]
    to_compute = [e for e in rest if e not in kernels]
    todo = len(to_compute)
    seconds = None
    if todo:
        est = analysis.estimate_spectrum(run, rest[-1], group=req.group, reduction=req.reduction, top=req.top,
                                         planned=True)  # its kernel is computed even where its spectrum is cached
        seconds = float(est["seconds"])
    return {"cached": False, "checkpoints": len(run.epochs), "measured": len(measured),
            "kernels_cached": len(kernels), "to_compute": todo, "seconds_per_kernel": seconds,
            "kernel_bytes": kernel_bytes(run, req),
            "last_to_compute": to_compute[-2:]}


def dynamics_seconds(run: Run, group: str | None = None, reduction: str | None = None, top: int | None = None, *,
                     ridge: float = DEFAULT_RIDGE, cache: ArrayCache | None = None) -> float | None:
    """Seconds :func:`dynamics` would take now (0 when cached; ``None`` when the request is
    invalid: it is refused at once with its own message). The kernels still to compute run as
    :func:`dynamics` runs them (worker processes of one thread from 8 units on, as the sweep:
    :func:`entk_core.workflows.estimates.sweep_seconds`, with its overhead per unit), plus the
    eigendecompositions of kernels already cached and the two distance passes (reading every
    kernel back). A unit is priced by the planner, or, from 8 units on when the planner puts
    one under :data:`~entk_core.workflows.estimates.MEASURE_UNIT_BELOW_S`, timed: one real unit
    (:func:`_unit_seconds`, whose kernel and measures are cached for :func:`dynamics`)."""
    from .estimates import (MEASURE_UNIT_BELOW_S, UNIT_OVERHEAD_S, busy_factor, planner_speedup, pool_workers,
                            worker_start_seconds)

    try:
        plan = dynamics_plan(run, group, reduction, top, ridge=ridge, cache=cache)
    except ValueError:
        return None
    if plan["cached"]:
        return 0.0
    req = request(run, group, reduction, top, ridge)
    n = req.n
    eig_s = 2e-9 * n ** 3 / 8  # a dense eigh, as the planner counts it
    passes = plan["checkpoints"] * (plan["kernel_bytes"] / 1e9 + 2e-9 * n * n)  # read back + one inner product
    todo = plan["to_compute"]
    busy = busy_factor()
    cache = cache or default_cache()
    compute = 0.0
    if todo:
        planned = plan["seconds_per_kernel"] or 0.0
        unit = None
        if todo >= 8 and planned < MEASURE_UNIT_BELOW_S:
            unit = _unit_seconds(run, req, plan["last_to_compute"], cache)
        if unit is not None:  # the timed units are cached now (unless timed before): the others share the workers
            left = todo - sum(checkpoint_key(run, e, req) in cache for e in plan["last_to_compute"])
            compute = worker_start_seconds() + left * (unit + UNIT_OVERHEAD_S * busy) / pool_workers()
        elif todo < 8:
            compute = todo * (planned + UNIT_OVERHEAD_S * busy)
        else:
            compute = worker_start_seconds() + todo * (planned + UNIT_OVERHEAD_S * busy) / planner_speedup()
    return float(compute + plan["kernels_cached"] * eig_s + passes)


_UNIT: dict[tuple, float] = {}


def _unit_seconds(run: Run, req: Request, epochs: list[int], cache: ArrayCache) -> float | None:
    """Seconds one unit of :func:`dynamics` takes here
    (:func:`~entk_core.workflows.estimates.timed_unit`): :func:`checkpoint_unit`, its kernel
    and measures then cached as the driver caches them. Timed once per run and request. The
    planner put the p = 29 MLP's 51 units at 12.2 s in all where they took 16.4 s: it prices a
    kernel and an eigendecomposition, not the measures beside them."""
    from .estimates import timed_unit

    def unit(epoch: int):
        v = checkpoint_unit(epoch=epoch, **req.options(), **family_kwargs(run), **unit_location(run, epoch, ship=False))

        def store() -> None:
            cache.set(kernel_store_key(run, epoch, req), v["kernel"], {"kernel_s": v["meta"].get("kernel_s")})
            cache.set(checkpoint_key(run, epoch, req), v["arrays"], v["meta"])
        return store

    key = (str(run.path), run.checkpoint_sha(run.epochs[-1]), tuple(sorted(req.options().items())))
    return timed_unit(_UNIT, key, epochs, unit)


def dynamics(
    run: Run,
    group: str | None = None,
    reduction: str | None = None,
    top: int | None = None,
    *,
    ridge: float = DEFAULT_RIDGE,
    cache: ArrayCache | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    ray: bool | str | None = None,
    executor: Executor | None = None,
) -> DynamicsResult:
    """The eNTK's movement over every checkpoint of ``run`` (module docstring), cached.

    Args:
      group: layer group (default ``"full"``); reduction: default the family's; top: top
        eigenvalues reported per checkpoint (default the family's ``default_top``, at most ``n``).
      ridge: kernel regression's relative ridge.
      progress: ``progress(done, total, message)`` from this thread after each checkpoint and
        each distance pass; raising in it (Stop, Ctrl-C) cancels what is left, keeping what
        is cached.
      workers, ray, executor: where the per-checkpoint units run (as :func:`entk_core.workflows.sweep.sweep`).

    Raises :class:`~entk_core.store.runs.RunError` (one line) for checkpoints of different
    shapes, and ``ValueError`` for a bad group, reduction or top.
    """
    t0 = time.perf_counter()
    req = request(run, group, reduction, top, ridge)
    cache = cache or default_cache()
    epochs = run.epochs
    if not epochs:
        raise RunError(f"{run.path}: run has no checkpoints yet")
    run_key = _run_key(run, req)
    hit = cache.get(run_key)
    total = len(epochs) + 2
    if hit is not None:
        if progress:
            progress(total, total, "served from the cache")
        return _result(run, req, hit["epochs"], hit["eigenvalues"], hit.meta, "hit", time.perf_counter() - t0)
    if isinstance(cache, ProbeCache):  # jobs.cached(): a lookup only, never a computation
        raise NotCached(run_key)
    run.check_same_shapes()  # one line naming two epochs, before any work
    _check_cache_room(run, req, cache)

    stats: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}
    ckeys = {e: checkpoint_key(run, e, req) for e in epochs}
    kkeys = {e: kernel_store_key(run, e, req) for e in epochs}
    done = [0]
    failed: dict[int, str] = {}

    def advance(message: str) -> None:
        done[0] += 1
        if progress:
            progress(done[0], total, message)

    stream = _PrevStream(run, req, epochs, kkeys, cache)  # ⟨K_{i−1}, K_i⟩ as kernels arrive in order
    todo = []
    for e in epochs:
        entry = cache.get(ckeys[e])
        if entry is not None:
            stats[e] = (entry["eigenvalues"], entry.meta)
            stream.offer(e)
            advance(f"epoch {e} (cached)")
            continue
        kentry = cache.get(kkeys[e])
        if kentry is not None:  # the kernel is cached (Spectrum page, alignment, an earlier call): measure it here
            arrays, meta = measure_kernel(run, unpack_kernel(kentry), reduction=req.reduction, top=req.top, ridge=req.ridge)
            del kentry
            cache.set(ckeys[e], arrays, meta)
            stats[e] = (arrays["eigenvalues"], meta)
            stream.offer(e)
            advance(f"epoch {e} (cached kernel)")
        else:
            todo.append(e)

    ship = bool(ray) or executor is not None
    opts = {**req.options(), **family_kwargs(run)}
    units = [Unit(f"epoch {e}", checkpoint_unit, {"epoch": e, **opts, **unit_location(run, e, ship=ship)})
             for e in todo]
    by_key = {u.key: e for u, e in zip(units, todo)}
    exec_desc: dict[str, Any] = {}

    def on_result(r) -> None:
        e = by_key[r.key]
        if r.ok:
            v = r.value
            # popped: the executor keeps every unit's value until the end, so it must not keep the kernel
            packed = v.pop("kernel")
            cache.set(kkeys[e], packed, {"kernel_s": v["meta"].get("kernel_s")})
            cache.set(ckeys[e], v["arrays"], v["meta"])
            stats[e] = (v["arrays"]["eigenvalues"], v["meta"])
            stream.offer(e, packed)  # empties packed: the stream holds the only reference
            advance(f"epoch {e}")
        else:
            failed[e] = r.error
            advance(f"epoch {e} FAILED ({r.error})")

    if units:
        ex = choose_executor(run, executor=executor, ray=ray, workers=workers, n_units=len(units))
        try:
            ex.run(units, on_result=on_result)
            exec_desc = ex.describe()
        finally:
            if ex is not executor:
                ex.close()
    if failed:
        e, err = min(failed.items())
        raise RunError(f"{run.path}: {len(failed)} of {len(epochs)} checkpoints failed and were not cached "
                       f"(first: epoch {e}: {err}); run dynamics again to retry them")

    prev_ip, final_ip = _distance_passes(stream, advance)
    norms = np.array([stats[e][1]["norm"] for e in epochs])
    E = len(epochs)
    d_prev = np.full(E, np.nan)
    d_final = np.full(E, np.nan)
    for i in range(1, E):  # one checkpoint: nothing to compare with (null, and a note)
        d_prev[i] = km.distance_from_products(prev_ip[i], norms[i - 1], norms[i])
        d_final[i - 1] = km.distance_from_products(final_ip[i - 1], norms[i - 1], norms[-1])
    if E > 1:
        d_final[-1] = 0.0  # the last kernel to itself
    eig = np.full((E, req.top), np.nan)
    for i, e in enumerate(epochs):
        ev = stats[e][0]
        eig[i, :len(ev)] = ev
    rows = [_row(run, e, stats[e][1], d_prev[i], d_final[i], eig[i]) for i, e in enumerate(epochs)]
    meta = {
        "rows": rows,
        "landmarks": landmarks(rows, run_onset_epoch(run)),
        "notes": _notes(run, stats, epochs),
        "compute_s": round(time.perf_counter() - t0, 3),
        "computed": len(units),
    }
    if exec_desc:
        meta["executor"] = exec_desc
    cache.set(run_key, {"epochs": np.asarray(epochs, dtype=np.int64), "eigenvalues": eig}, meta)
    return _result(run, req, np.asarray(epochs, dtype=np.int64), eig, meta, "miss", time.perf_counter() - t0)


def kernel_bytes(run: Run, req: Request) -> int:
    """Bytes of one checkpoint's cached kernel (float32): ``n²``, or ``n · P`` for a factored one."""
    return 4 * req.n * (req.n_params if req.factored else req.n)


def _check_cache_room(run: Run, req: Request, cache: ArrayCache) -> None:
    """The distances read every kernel back from the cache: refuse (one line) when the run's
    kernels cannot all stay there, instead of recomputing each evicted one twice."""
    need = kernel_bytes(run, req) * len(run.epochs)
    if need > cache.size_limit:
        raise ValueError(f"the {len(run.epochs)} kernels of {req.n} rows ({req.reduction}) need "
                         f"{format_bytes(need)} in the cache, more than its limit of {format_bytes(cache.size_limit)}; "
                         "choose a smaller --reduction or --group, or raise ENTK_CACHE_SIZE_LIMIT")


def _kernel_from_cache(run: Run, epoch: int, req: Request, key: str, cache: ArrayCache) -> np.ndarray | km.Gram:
    """The cached kernel, or (evicted, or the cache is smaller than a run's kernels) computed again here."""
    entry = cache.get(key)
    if entry is not None:
        return unpack_kernel(entry)
    K = compute_checkpoint_kernel(run, epoch, req)
    cache.set(key, pack_kernel(K), {})
    return K


class _PrevStream:
    """``⟨K_{i−1}, K_i⟩_F`` in epoch order while the units' kernels arrive (in any order):
    checkpoint ``i`` is taken as soon as ``0..i`` are cached, from memory when it is the one
    that just arrived, else read back from the cache. Holds the previous kernel and the
    current one, never more."""

    def __init__(self, run: Run, req: Request, epochs: list[int], kkeys: dict[int, str], cache: ArrayCache):
        self.run, self.req, self.epochs, self.kkeys, self.cache = run, req, epochs, kkeys, cache
        self.index = {e: i for i, e in enumerate(epochs)}
        self.ip = np.full(len(epochs), np.nan)
        self.ready: set[int] = set()
        self.next, self.prev = 0, None

    def offer(self, epoch: int, packed: dict[str, np.ndarray] | None = None) -> None:
        """``epoch``'s kernel is cached now; ``packed`` (emptied here): the kernel itself."""
        self.ready.add(self.index[epoch])
        K = None
        if packed is not None and self.index[epoch] == self.next:
            K = unpack_kernel(packed)
        if packed is not None:
            packed.clear()
        with threadpool_limits(limits=1, user_api="blas"):
            while self.next in self.ready:
                e = self.epochs[self.next]
                cur = K if (K is not None and e == epoch) else _kernel_from_cache(self.run, e, self.req,
                                                                                  self.kkeys[e], self.cache)
                K = None
                if self.prev is not None:
                    self.ip[self.next] = km.frobenius_inner(self.prev, cur)
                self.prev, cur = cur, None
                self.next += 1

    def last(self) -> np.ndarray | km.Gram:
        """The last checkpoint's kernel, once every checkpoint has been offered."""
        if self.next != len(self.epochs):
            raise RuntimeError("not every checkpoint's kernel has been offered")
        return self.prev


def _distance_passes(stream: _PrevStream, advance: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray]:
    """``⟨K_i, K_{i−1}⟩_F`` (from the stream) and ``⟨K_i, K_last⟩_F`` for every checkpoint: the
    kernels stream back from the cache in epoch order, the last one and the current one in memory."""
    epochs = stream.epochs
    final_ip = np.full(len(epochs), np.nan)
    last = stream.last()
    stream.prev = None
    advance("distances to the previous checkpoint")
    with threadpool_limits(limits=1, user_api="blas"):
        for i, e in enumerate(epochs[:-1]):
            cur = _kernel_from_cache(stream.run, e, stream.req, stream.kkeys[e], stream.cache)
            final_ip[i] = km.frobenius_inner(cur, last)
            del cur
    advance("distances to the last checkpoint")
    return stream.ip, final_ip


def _row(run: Run, epoch: int, stats: dict[str, Any], d_prev: float, d_final: float, eig: np.ndarray) -> dict:
    m = run.metrics_at(epoch)
    row: dict[str, Any] = {
        "epoch": int(epoch),
        "kernel_distance_prev": json_number(d_prev),
        "kernel_distance_final": json_number(d_final),
    }
    if "target_alignment" not in stats["notes"]:
        row["target_alignment"] = stats["target_alignment"]
    row["effective_rank"] = stats["effective_rank"]
    row["top_eigenvalues"] = [float(v) for v in eig if np.isfinite(v)]
    row["cliffs"] = stats["cliffs"]
    if "kernel_regression_test_accuracy" not in stats["notes"]:
        row["kernel_regression_test_accuracy"] = stats["kernel_regression_test_accuracy"]
    row["network_train_accuracy"] = json_number(m.get("train_acc"))
    row["network_test_accuracy"] = json_number(m.get("test_acc"))
    return row


def landmarks(rows: list[dict[str, Any]], onset: float | None = None) -> dict[str, Any]:
    """Where the curves move, per epoch (checkpoint intervals may be uneven): the interval in
    which the kernel moves fastest (largest ``kernel_distance_prev`` per epoch), where the
    target alignment is largest and the interval in which it rises fastest, and the run's
    grokking onset (:func:`entk_core.workflows.sweep_result.run_onset_epoch`). ``None`` where
    a curve is missing."""
    ep = [r["epoch"] for r in rows]

    def fastest(change: Callable[[int], float | None]) -> dict[str, Any] | None:
        best = None
        for i in range(1, len(rows)):
            d = change(i)
            if d is None:
                continue
            rate = d / (ep[i] - ep[i - 1])
            if best is None or rate > best["per_epoch"]:
                best = {"from": ep[i - 1], "to": ep[i], "midpoint": (ep[i - 1] + ep[i]) / 2, "per_epoch": rate}
        return best

    def rise(i: int) -> float | None:
        a, b = rows[i - 1].get("target_alignment"), rows[i].get("target_alignment")
        return None if a is None or b is None else b - a

    align = [r.get("target_alignment") for r in rows]
    peak = None
    if any(a is not None for a in align):
        k = max((i for i, a in enumerate(align) if a is not None), key=lambda i: align[i])
        peak = {"epoch": ep[k], "value": align[k]}
    return {"kernel_fastest": fastest(lambda i: rows[i]["kernel_distance_prev"]), "alignment_peak": peak,
            "alignment_fastest_rise": fastest(rise), "grokking_onset": onset}


def _notes(run: Run, stats: dict, epochs: list[int]) -> dict[str, str]:
    notes: dict[str, str] = {}
    for e in epochs:
        for k, v in stats[e][1]["notes"].items():
            notes.setdefault(k, v)
    if len(epochs) == 1:
        why = (f"the run has one checkpoint (epoch {epochs[0]}), so there is no other kernel to compare its "
               "kernel with")
        notes["kernel_distance_prev"] = notes["kernel_distance_final"] = why
    else:
        notes["kernel_distance_prev"] = f"null at the first checkpoint (epoch {epochs[0]}): it has no previous one"
    if not run.family.offers("accuracy"):
        notes.setdefault("network_test_accuracy", f"the {run.family.name} family has no accuracy")
    return notes


def _result(run: Run, req: Request, epochs: np.ndarray, eig: np.ndarray, meta: dict[str, Any], cache_state: str,
            elapsed: float) -> DynamicsResult:
    over = (f"all {req.n} eigenvalues" if req.n <= FULL_SPECTRUM_MAX else
            f"the top {req.top} eigenvalues (the kernel has {req.n} > {FULL_SPECTRUM_MAX} rows)")
    out_meta: dict[str, Any] = {
        "run": run.name, "family": run.family.name, "group": req.group, "reduction": req.reduction, "n": req.n,
        "top": req.top, "effective_rank_over": over, "ridge": req.ridge, "cache": cache_state,
        "compute_s": meta.get("compute_s"), "total_s": round(elapsed, 3),
    }
    out_meta["landmarks"] = meta.get("landmarks")
    if "executor" in meta:
        out_meta["executor"] = meta["executor"]
    if run.unvouched_metrics is not None:
        out_meta["unvouched_metrics"] = run.unvouched_metrics
    return DynamicsResult(epochs=np.asarray(epochs), eigenvalues=np.asarray(eig), rows=list(meta["rows"]),
                          notes=dict(meta["notes"]), meta=out_meta)
