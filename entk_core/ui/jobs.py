"""Long computations on a page: a cached result at once; anything else computed in a worker
process (:class:`entk_core.workflows.jobs.Job`), never in the server's script thread, with
progress; above :data:`ASK_ABOVE_S` it is first offered with its estimate and a Start
button, and a started one has a **Stop** button. Estimates come from
:mod:`entk_core.workflows.estimates`.

An action may have several phases (a Grokking page's first visit: the sweep over every
checkpoint, then the PCA baseline over training): :func:`long_calls` states the estimate of
every phase that is not cached before anything starts, runs them in order in one worker,
and its progress bar covers them all (each phase weighted by its estimate). When the work
is done, the offer, the buttons and the progress bar are removed before the results are
drawn (no stale element above them).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable

import streamlit as st

from ..families.base import family_ref
from ..families.run import Run
from ..workflows.jobs import Job, cached, prestart_workers
from .format import fmt_seconds, plain
from .mode import compute_allowed

__all__ = ["ASK_ABOVE_S", "Phase", "phases_key", "long_call", "long_calls", "run_in_worker", "ProgressBar"]

ASK_ABOVE_S = 10.0
"""Requests estimated above this many seconds ask before starting (:func:`long_call`)."""

Estimate = float | Callable[[], float | None] | None


@dataclass
class Phase:
    """One computation of an action: ``fn(run, **kwargs)``, a cached operation taking
    ``cache=`` and ``progress=``, run in a worker as ``target`` (``"module:function"``).
    ``estimate_s``: seconds, or a function giving them, called only when the result is not
    cached. ``run``: default, the action's run."""

    label: str
    fn: Callable
    target: str
    kwargs: dict[str, Any]
    estimate_s: Estimate = None
    run: Run | None = None


def phases_key(prefix: str, run: Run, phases: list[Phase]) -> str:
    """A :func:`long_calls` key naming every phase's run and arguments (what identifies the request)."""
    return prefix + "|" + "|".join(f"{(p.run or run).path}|{sorted(p.kwargs.items())}" for p in phases)


def long_call(key: str, label: str, fn: Callable, run: Run, *, target: str, kwargs: dict[str, Any],
              estimate_s: Estimate) -> Any:
    """Return ``fn(run, **kwargs)`` (a cached operation taking ``cache=`` and ``progress=``):
    :func:`long_calls` with one phase. ``None`` (after drawing the offer or the progress) when
    nothing is computed yet in this script run."""
    out = long_calls(key, label, run, [Phase(label, fn, target, kwargs, estimate_s)])
    return None if out is None else out[0]


def _estimate(p: Phase) -> float | None:
    e = p.estimate_s() if callable(p.estimate_s) else p.estimate_s
    return None if e is None else max(0.0, float(e))


def long_calls(key: str, label: str, run: Run, phases: list[Phase]) -> list[Any] | None:
    """The results of every phase (module docstring), or ``None`` while they are not all there.

    Cached results come back at once (a warm rerun costs no estimate and starts nothing).
    Otherwise the phases not cached are estimated; at most :data:`ASK_ABOVE_S` in all (or with
    no estimate: a request that cannot be estimated is refused by the worker in one line),
    they start at once in a worker with a progress bar; above, the page shows every phase's
    estimate and a Start button, and a started action a Stop button. Stop, leaving the page
    or changing any control interrupts this script run, which kills the worker at once;
    nothing partial is cached. ``key`` identifies the request (include every argument).

    In viewer mode (:mod:`entk_core.ui.mode`) the action starts only when the estimate of all
    its phases is under ``ENTK_VIEWER_MAX_SECONDS``; otherwise one line says what was asked
    and the estimate, and ``None`` is returned."""
    results = [cached(p.fn, p.run or run, **p.kwargs) for p in phases]
    todo = [i for i, r in enumerate(results) if r is None]
    if not todo:
        return results
    runs = [phases[i].run or run for i in todo]
    prestart_workers()  # the forkserver is ready by the time Start is clicked (and the estimates count on it)
    est = [_estimate(phases[i]) for i in todo]
    known = None if any(e is None for e in est) else sum(est)
    ok, why = compute_allowed(known, label)  # viewer mode: only what is estimated under its limit
    if not ok:
        st.info(plain(why), icon=":material/lock:")  # ``label`` may carry a run name
        return None
    if any(family_ref(r.family) is None for r in runs):  # a family a worker cannot import: here
        with ProgressBar(label) as bar:
            for i in todo:
                p = phases[i]
                results[i] = p.fn(p.run or run, **p.kwargs, progress=bar)
        return results
    state = st.session_state.setdefault("_long", {})
    wkey = "long_" + hashlib.sha256(key.encode()).hexdigest()[:10]
    stopped = bool(st.session_state.get(wkey + "_stop"))
    if stopped:  # this run answers Stop (the stopped run may not have ended yet): never start again here
        state.pop(key, None)
    slot = st.empty()
    with slot.container():
        if known is not None and known > ASK_ABOVE_S and state.get(key) != "started":
            if stopped:
                st.warning("Stopped. Nothing was cached; start again when you like.")
            parts = [f"{plain(phases[i].label)} (~{fmt_seconds(e)})" for i, e in zip(todo, est)]
            what = parts[0] if len(parts) == 1 else ", then ".join(parts)
            st.info(f"{plain(label)} is estimated at about **{fmt_seconds(known)}** on this machine"
                    + ("." if len(parts) == 1 else f": {what}."))
            if st.button(f"Start (~{fmt_seconds(known)})", key=wkey + "_go", type="primary"):
                state[key] = "started"
                st.rerun()
            return None
        if known is not None and known > ASK_ABOVE_S:
            st.button("Stop", key=wkey + "_stop", type="secondary", help="kills the worker; nothing partial is cached")
        bar = st.progress(0.0, text=f"{plain(label)}: starting a worker…")
    t0 = time.perf_counter()
    weights = [max(e, 0.1) for e in est] if known is not None else [1.0] * len(todo)
    steps = [{"target": phases[i].target, "kwargs": phases[i].kwargs, "run": str(r.path), **Job.family_of(r)}
             for i, r in zip(todo, runs)]

    def show(done: int, total: int, message: str) -> None:
        k = min(job.step, len(todo) - 1)
        within = min(1.0, done / total) if total else 0.0
        frac = (sum(weights[:k]) + within * weights[k]) / sum(weights)
        if not total and known:
            frac = max(frac, min(0.95, (time.perf_counter() - t0) / max(known, 1)))
        phase = phases[todo[k]].label + (f" ({k + 1}/{len(todo)})" if len(todo) > 1 else "")
        of = f" of ~{fmt_seconds(known)}" if known else ""
        bar.progress(min(1.0, frac), text=f"{plain(label)}: {plain(phase)}: {plain(message or 'working')} · "
                                         f"{time.perf_counter() - t0:.0f} s{of}")

    job = Job(run=str(run.path), steps=steps).start()
    try:
        job.wait(show)
    finally:
        job.kill()
        state.pop(key, None)
    slot.empty()  # the offer, Stop and the bar go before the results are drawn
    for i in todo:
        p = phases[i]
        results[i] = cached(p.fn, p.run or run, **p.kwargs)
    if any(r is None for r in results):  # e.g. a sweep with a failed checkpoint is not cached
        st.warning(f"{plain(label)} finished without a complete result (nothing was cached); start again to retry.")
        return None
    return results


def run_in_worker(label: str, steps: list[dict[str, Any]], names: list[str]) -> dict[int, Any]:
    """Run ``steps`` (:class:`~entk_core.workflows.jobs.Job` steps, e.g. trainings with no run)
    in one worker with a progress bar over all of them (``names[k]``: what step ``k`` is),
    removed when done. Returns the results of the steps marked ``"return": True``, by step
    index. Raises :class:`~entk_core.workflows.jobs.JobError` if a step fails;
    leaving the page or any control interrupts this script run and kills the worker (work
    saved atomically, such as a training's checkpoints, stays and resumes)."""
    slot = st.empty()
    bar = slot.progress(0.0, text=f"{plain(label)}: starting a worker…")
    t0 = time.perf_counter()

    def show(done: int, total: int, message: str) -> None:
        k = min(job.step, len(steps) - 1)
        frac = (k + (min(1.0, done / total) if total else 0.0)) / len(steps)
        who = names[k] + (f" ({k + 1}/{len(steps)})" if len(steps) > 1 else "")
        bar.progress(frac, text=f"{plain(label)}: {plain(who)}: {plain(message or 'working')} · "
                                f"{time.perf_counter() - t0:.0f} s")

    job = Job(steps=steps).start()
    try:
        job.wait(show)
    finally:
        job.kill()
        slot.empty()
    return job.results


class ProgressBar:
    """A ``progress(done, total, message)`` callback drawing an ``st.progress`` bar
    (created on the first update, so cache hits show nothing).

    Each update is also where Streamlit stops a run the user stopped or superseded (it
    raises its control exception from the element call), so a computation given this
    callback is cancelled mid-way; the cache stores a result only once compute() has
    returned, so nothing partial is kept."""

    def __init__(self, text: str):
        self.text = text
        self._slot = st.empty()

    def __call__(self, done: int, total: int, message: str = "") -> None:
        frac = min(1.0, max(0.0, done / total)) if total else 0.0
        self._slot.progress(frac, text=plain(f"{self.text} {message}".strip()))  # a message may quote a name

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> bool:
        self._slot.empty()
        return False
