"""Long computations for interactive callers: look a result up without computing it, and
run a computation in a separate, killable worker process that reports progress.

The dashboard uses both (:func:`entk_core.ui.jobs.long_call`): a request whose result is
cached is served at once (:func:`cached`); otherwise it runs as a :class:`Job` -- a worker
process that computes the result into the shared on-disk cache and sends
``progress(done, total, message)`` back -- and the caller reads the result with
:func:`cached`. Stopping a job kills the process (its CPU is free at once, whatever the
computation is doing); nothing partial is cached, because the cache stores a result only
once it is complete.

Workers and the server's other visitors: a worker never runs in the server's process, so a
long computation holds no GIL and no script thread there; it runs at a lower scheduling
priority (:data:`WORKER_NICE`), so on a small machine the visitors' warm interactions (a
script run of a few hundred ms) are served before it. Workers are forked from one
*forkserver* (:mod:`multiprocessing`, started on the first job, with torch and the library
imported once), so a job starts in ~0.1 s instead of the 2-6 s a fresh interpreter takes to
import them; each job gets the caller's environment of the moment it starts (its
``ENTK_CACHE_DIR``, ``ENTK_RUNS_DIR``...), not the forkserver's.

A job is one or more *steps* run in order in one worker (a page's first visit: the sweep,
then the PCA baseline), each a target named ``"module:function"`` called as
``function(run, **kwargs, progress=callback)`` with ``run`` opened from its folder in the
worker, so only plain JSON values cross the process boundary. Progress messages carry the
step's index. The worker imports no Streamlit and writes no log lines of its own.
"""
from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["NotCached", "ProbeCache", "cached", "Job", "JobError", "WORKER_NICE", "jobs_started", "worker_threads",
           "forkserver_started", "prestart_workers", "worker_context"]

WORKER_NICE = 10
"""How much lower a worker's scheduling priority is than the server's (``os.nice``)."""


JOB_PROCESS_NAME = "entk-job"
"""A worker's process name (``/proc/PID/comm`` on Linux), to find jobs among the server's descendants."""


def worker_threads() -> int:
    """Threads a worker's torch and BLAS use: ``$ENTK_WORKER_THREADS``, else every core but
    one (at least one), which stays free for the server's visitors. More threads than free
    cores is worse than slow: a 2-thread OpenBLAS SVD on 2 busy cores took 6-10 s where one
    thread took 0.9 s (the 841 x 512 activations of the p = 29 MLP, measured here)."""
    raw = os.environ.get("ENTK_WORKER_THREADS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return max(1, (os.cpu_count() or 1) - 1)

PRELOAD = ["entk_core.workflows.job_preload"]
"""What the forkserver imports once, so that every worker starts with it loaded."""

_started_n = [0]
_CTX_LOCK = threading.Lock()
_CTX: list = []


def jobs_started() -> int:
    """How many jobs this process has started (for tests and benchmarks: a view answered from
    the cache starts none)."""
    return _started_n[0]


_NO_MAIN = threading.local()


def worker_context():
    """The forkserver context (created once per process; the server is started on first use),
    for the jobs here and the local executor's pool
    (:class:`~entk_core.workflows.executors.LocalExecutor`).

    A worker needs nothing from the caller's ``__main__`` (the Streamlit launcher, pytest, a
    notebook; targets are named by module), so while :meth:`Job.start` runs in a thread, the
    preparation data sent to the new process names no main module to re-import (importing
    some of them runs their script again)."""
    with _CTX_LOCK:
        if not _CTX:
            from multiprocessing import spawn

            original = spawn.get_preparation_data

            def preparation_data(name):
                d = original(name)
                if getattr(_NO_MAIN, "on", False):
                    for k in ("init_main_from_name", "init_main_from_path", "main_path"):
                        d.pop(k, None)
                return d

            spawn.get_preparation_data = preparation_data
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            _CTX.append(ctx)
        return _CTX[0]


def prestart_workers() -> None:
    """Start the jobs' forkserver now, in the background (once per process), so that the first
    job does not wait for it to import torch and the library (seconds on a busy machine)."""
    with _CTX_LOCK:
        if _PRESTARTED:
            return
        _PRESTARTED.append(True)

    def go() -> None:
        from multiprocessing import forkserver

        worker_context()
        _NO_MAIN.on = True
        try:
            forkserver.ensure_running()
        except OSError:
            pass

    threading.Thread(target=go, name="entk-forkserver-start", daemon=True).start()


_PRESTARTED: list = []


def forkserver_started() -> bool:
    """Whether the jobs' forkserver runs in this process, or is starting (:func:`prestart_workers`)."""
    from multiprocessing import forkserver

    return bool(_PRESTARTED) or forkserver._forkserver._forkserver_pid is not None


class NotCached(LookupError):
    """The result is not in the cache (raised by :class:`ProbeCache` instead of computing)."""


class ProbeCache:
    """A stand-in for :class:`entk_core.store.cache.ArrayCache` that only reads: a hit is
    returned as usual, a miss raises :class:`NotCached` instead of computing."""

    def __init__(self, inner):
        self.inner = inner
        self.directory = inner.directory

    def get(self, key: str):
        return self.inner.get(key)

    def __contains__(self, key: str) -> bool:
        return self.inner.get(key) is not None

    def get_or_compute(self, key: str, compute: Callable):  # noqa: ARG002 - never computes
        hit = self.inner.get(key)
        if hit is None:
            raise NotCached(key)
        hit.meta["cache"] = "hit"
        return hit


def cached(fn: Callable, *args: Any, cache=None, **kwargs: Any):
    """``fn(*args, cache=…, **kwargs)`` if its result (and everything it needs) is cached,
    else ``None``; never computes. ``fn`` is any cached operation taking ``cache=``
    (:func:`entk_core.workflows.analysis.spectrum`, :func:`entk_core.workflows.sweep.sweep`...)."""
    from ..store.cache import default_cache

    probe = ProbeCache(cache or default_cache())
    try:
        return fn(*args, cache=probe, **kwargs)
    except NotCached:
        return None


class JobError(RuntimeError):
    """The worker failed; the message is its one-line error.

    ``user_error``: whether the worker's exception was bad input
    (:func:`entk_core.errors.is_user_error`), so callers report it as such;
    ``worker_traceback``: the worker's traceback text (empty when the worker died without
    reporting)."""

    def __init__(self, message: str, *, user_error: bool = False, worker_traceback: str = ""):
        super().__init__(message)
        self.user_error = bool(user_error)
        self.worker_traceback = worker_traceback


@dataclass
class Job:
    """A computation in a worker process (module docstring).

    Args:
      target: ``"package.module:function"``, called as ``function(run, **kwargs, progress=...)``.
      run: the run folder (opened in the worker).
      kwargs: JSON-able keyword arguments.
      env: extra environment for the worker (on top of this process's environment now).
      steps: more than one computation, run in order in the same worker:
        ``[{"target": ..., "kwargs": {...}, "run": <folder, default run>}, ...]`` (then
        ``target``/``kwargs`` are not used). :attr:`step` is the index of the running one.
        A step with no run (``""``) is called as ``function(**kwargs, progress=...)`` (training
        a preset: :func:`entk_core.workflows.presets.train_preset`). A step with
        ``"return": True`` sends its function's result back (plain values: dicts, lists,
        numbers, strings, numpy arrays), kept in :attr:`results` under the step's index;
        other steps leave their results in the cache.
    """

    target: str = ""
    run: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    steps: list[dict[str, Any]] | None = None
    proc: Any = None
    done: int = 0
    total: int = 0
    message: str = ""
    step: int = 0
    results: dict[int, Any] = field(default_factory=dict)

    def _steps(self) -> list[dict[str, Any]]:
        if self.steps:
            return [{**st, "run": str(st.get("run") or self.run), "kwargs": dict(st.get("kwargs") or {})}
                    for st in self.steps]
        return [{"target": self.target, "run": str(self.run), "kwargs": dict(self.kwargs)}]

    @staticmethod
    def family_of(run) -> dict[str, Any]:
        """``{"family", "family_ref"}`` of an open run, for a step whose family a worker may
        not find by its entry point (a family registered at run time)."""
        from ..families.base import family_ref

        return {"family": run.family.name, "family_ref": family_ref(run.family)}

    def start(self) -> "Job":
        from multiprocessing import forkserver

        ctx = worker_context()
        _NO_MAIN.on = True
        try:
            forkserver.ensure_running()
            req = {"steps": self._steps(), "env": {**os.environ, **self.env}, "cwd": os.getcwd(),
                   "forkserver": forkserver._forkserver._forkserver_address}
            self._conn, child = ctx.Pipe(duplex=False)
            self.proc = ctx.Process(target=_worker, args=(req, child), name="entk-job", daemon=False)
            self.proc.start()
        finally:
            _NO_MAIN.on = False
        child.close()
        with _CTX_LOCK:
            _started_n[0] += 1
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def poll(self) -> str:
        """Read what the worker reported: ``"running"``, ``"done"``; raises :class:`JobError`."""
        assert self.proc is not None
        status = "running"
        try:
            while self._conn.poll():
                msg = self._conn.recv()
                if msg.get("kind") == "progress":
                    self.step = int(msg.get("step", 0))
                    self.done, self.total, self.message = int(msg["done"]), int(msg["total"]), str(msg.get("message", ""))
                elif msg.get("kind") == "result":
                    self.results[int(msg["step"])] = msg["value"]
                elif msg.get("kind") == "done":
                    status = "done"
                elif msg.get("kind") == "error":
                    self.kill()
                    raise JobError(msg.get("message") or "the worker failed", user_error=bool(msg.get("user_error")),
                                   worker_traceback=str(msg.get("traceback") or ""))
        except (EOFError, OSError):
            pass
        if status == "running" and self.proc.exitcode is not None:
            raise JobError(f"the worker exited with status {self.proc.exitcode}")
        return status

    def wait(self, on_progress: Callable[[int, int, str], None] | None = None, interval: float = 0.2) -> None:
        """Block until done, calling ``on_progress`` after every poll (it may raise to stop:
        the worker is then killed). Raises :class:`JobError` if the worker fails."""
        try:
            while self.poll() != "done":
                if on_progress is not None:
                    on_progress(self.done, self.total, self.message)
                self._conn.poll(interval)  # wakes at once on a message
        except BaseException:
            self.kill()
            raise
        self.proc.join()
        self.kill()  # closes the pipe (the worker has exited)

    def kill(self) -> None:
        """Stop the worker now (SIGKILL), reap it and close its pipe."""
        if self.proc is not None:
            if self.proc.exitcode is None:
                self.proc.kill()
            self.proc.join()
        conn = getattr(self, "_conn", None)
        if conn is not None and not conn.closed:
            conn.close()


def _reuse_forkserver(address) -> None:
    """Make this job worker's own process pools (a sweep's or dynamics' units) ask the
    forkserver that forked it for their workers, instead of starting a second one that imports
    torch again: about 3.5 s of CPU, and 4 s before the first unit of a dynamics job on a busy
    machine (measured). CPython's forkserver hands its children what a client needs (the
    "alive" pipe, the resource tracker), but ``ensure_running`` starts a new server in any
    process that did not start one itself (it knows no server pid to check)."""
    from multiprocessing import forkserver, resource_tracker

    fs = forkserver._forkserver
    if not address or fs._forkserver_alive_fd is None or fs._forkserver_pid is not None:
        return
    fs._forkserver_address = address
    fs.ensure_running = resource_tracker.ensure_running  # the server runs: it forked this process


def _worker(req: dict, conn) -> None:
    """The worker (in a process forked from the forkserver): run every step, report on ``conn``."""
    import warnings

    _reuse_forkserver(req.get("forkserver"))

    warnings.simplefilter("ignore")
    try:
        os.nice(WORKER_NICE)
    except OSError:
        pass
    try:  # the process name in ps/top and /proc/PID/comm: a job, not another forkserver
        with open("/proc/self/comm", "w") as f:
            f.write(JOB_PROCESS_NAME)
    except OSError:
        pass
    os.environ.clear()
    os.environ.update(req["env"])
    threads = worker_threads()
    try:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(threads)
    except ImportError:
        pass
    try:
        os.chdir(req["cwd"])
    except OSError:
        pass
    step = [0]

    def progress(done: int, total: int, message: str = "") -> None:
        conn.send({"kind": "progress", "step": step[0], "done": int(done), "total": int(total), "message": str(message)})

    try:
        from ..families.base import get_family, load_family_ref
        from ..families.run import open_run

        for i, st in enumerate(req["steps"]):
            step[0] = i
            if st.get("family_ref"):
                try:
                    get_family(st["family"])
                except ValueError:
                    load_family_ref(st["family_ref"], name=st["family"])
            mod, name = st["target"].split(":")
            fn = getattr(importlib.import_module(mod), name)
            progress(0, 0, "starting")  # the caller sees the step change at once
            args = (open_run(st["run"]),) if st.get("run") else ()  # no run: e.g. training one
            value = fn(*args, **st.get("kwargs", {}), progress=progress)
            if st.get("return"):  # the step's result comes back (plain values: a report)
                conn.send({"kind": "result", "step": i, "value": value})
    except Exception as e:  # noqa: BLE001 - reported to the caller as one line
        import traceback

        from ..errors import is_user_error, one_line

        conn.send({"kind": "error", "message": one_line(e), "user_error": is_user_error(e),
                   "traceback": traceback.format_exc()})
        conn.close()
        sys.exit(1)
    conn.send({"kind": "done"})
    conn.close()
