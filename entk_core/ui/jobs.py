"""Long computations on a page: a cached result at once, a short one in this script run
with a progress bar, a long one (above :data:`ASK_ABOVE_S`) offered with its estimate and run
in a killable worker process with progress and a **Stop** button
(:class:`entk_core.workflows.jobs.Job`). Estimates come from
:mod:`entk_core.workflows.estimates`.
"""
from __future__ import annotations

import hashlib
import time
from typing import Any, Callable

import streamlit as st

from ..families.run import Run
from ..workflows.jobs import Job, cached
from .format import fmt_seconds, plain
from .mode import compute_allowed

__all__ = ["ASK_ABOVE_S", "long_call", "ProgressBar"]

ASK_ABOVE_S = 10.0
"""Requests estimated above this many seconds ask before starting (:func:`long_call`)."""


def long_call(key: str, label: str, fn: Callable, run: Run, *, target: str, kwargs: dict[str, Any],
              estimate_s: float | Callable[[], float | None] | None) -> Any:
    """Return ``fn(run, **kwargs)`` (a cached operation taking ``cache=`` and ``progress=``).

    A cached result comes back at once. Otherwise, below :data:`ASK_ABOVE_S` (or when no
    estimate is known) it is computed here with a progress bar; above, the estimate is shown
    with a Start button, and once started the work runs in a worker process
    (:class:`entk_core.workflows.jobs.Job`) with progress and a **Stop** button. Stop,
    leaving the page or changing any control interrupts this script run, which kills the
    worker at once. Returns ``None`` (after drawing the offer) when nothing was computed.
    ``key`` identifies the request (include every argument). ``estimate_s``: seconds, or a
    function giving them (:mod:`entk_core.workflows.estimates`), called only when the result
    is not cached (a warm rerun costs no estimate).

    In viewer mode (:mod:`entk_core.ui.mode`) an uncached request runs only when its
    estimate is under ``ENTK_VIEWER_MAX_SECONDS``; otherwise one line says what was asked and
    the estimate, and ``None`` is returned."""
    hit = cached(fn, run, **kwargs)
    if hit is not None:
        return hit
    if callable(estimate_s):
        estimate_s = estimate_s()
    ok, why = compute_allowed(estimate_s, label)
    if not ok:
        st.info(plain(why), icon=":material/lock:")  # ``label`` may carry a run name
        return None
    state = st.session_state.setdefault("_long", {})
    small = estimate_s is None or estimate_s <= ASK_ABOVE_S
    if small:
        with ProgressBar(label) as bar:
            return fn(run, **kwargs, progress=bar)
    wkey = "long_" + hashlib.sha256(key.encode()).hexdigest()[:10]
    if st.session_state.get(wkey + "_stop"):
        state.pop(key, None)
        st.warning("Stopped. Nothing was cached; start again when you like.")
    if state.get(key) != "started":
        st.info(f"{plain(label)} is estimated at about **{fmt_seconds(estimate_s)}** on this machine.")
        if st.button(f"Start ({fmt_seconds(estimate_s)})", key=wkey + "_go", type="primary"):
            state[key] = "started"
            st.rerun()
        return None
    st.button("Stop", key=wkey + "_stop", type="secondary", help="kills the worker; nothing partial is cached")
    bar = st.progress(0.0, text=f"{plain(label)}: starting a worker…")
    t0 = time.perf_counter()

    def show(done: int, total: int, message: str) -> None:
        frac = min(1.0, done / total) if total else min(0.95, (time.perf_counter() - t0) / max(estimate_s, 1))
        bar.progress(frac, text=f"{plain(label)}: {plain(message or 'working')} · {time.perf_counter() - t0:.0f} s of "
                                f"~{fmt_seconds(estimate_s)}")

    job = Job(target=target, run=str(run.path), kwargs=kwargs).start()
    try:
        job.wait(show)
    finally:
        job.kill()
        state.pop(key, None)
    bar.empty()
    return cached(fn, run, **kwargs)


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
        self._slot.progress(frac, text=plain(f"{self.text} {message}"))  # a message may quote a name

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> bool:
        self._slot.empty()
        return False

