"""Where independent units of work run: in this process, in local worker processes, or on Ray.

A *unit* is a pure function call: a module-level function and plain keyword arguments
(paths, numbers, strings, ``bytes`` such as a checkpoint's safetensors bytes). Its result
(numpy arrays and JSON-able values) comes back to the *driver*, the calling process,
which alone writes results to its cache: the cache keeps one writer, and a re-run finds
every finished unit there. The sweep (one unit per checkpoint), ``lm-align --layers``
(one unit per layer) and ``grid`` (one unit per training run) all run through
:func:`run_units`.

Executors (:func:`make_executor`):

* ``inline`` -- in this process, one unit after the other (``workers=1``);
* ``local`` (the default) -- a pool of worker processes on this machine, one torch thread
  each, forked from a *forkserver* that has torch and the library imported
  (:func:`entk_core.workflows.jobs.worker_context`); like spawned processes they start from
  that clean state, not a copy of the caller, and re-import the caller's main module;
* ``ray`` -- tasks on a Ray cluster: ``ray=True`` (or ``"local"``) starts a local instance
  sized to this machine, ``ray="ADDRESS"`` (or ``$ENTK_RAY_ADDRESS``) connects to a running
  cluster (``"auto"``: the one ``ray start`` started on this host). A unit that needs a GPU
  asks Ray for one (``Unit.gpus``). Workers of a multi-node cluster must see the files a
  unit names (a shared filesystem at the same path) unless the unit ships the bytes it
  needs in its arguments (the sweep ships each checkpoint's safetensors bytes).

Failures: a unit that raises, or whose worker process dies (killed, out of memory), is
retried once; if it fails again it is reported as failed (:class:`UnitResult` with
``ok=False`` and a one-line ``error``) and the other units go on. In the local pool a dying
worker breaks the whole pool, so the units in flight at that moment are retried one at a
time in a fresh single-worker pool, where a death can only be their own (an innocent unit
caught in a broken pool thus uses its retry). Ctrl-C (or a
``progress`` callback raising, as the dashboard does to cancel) cancels the remaining
units, stops the workers, and re-raises; results already handed to ``on_result`` stay
(the driver has cached them).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from .jobs import worker_context

__all__ = [
    "Unit",
    "UnitResult",
    "Executor",
    "InlineExecutor",
    "LocalExecutor",
    "RayExecutor",
    "make_executor",
    "run_units",
    "RAY_ADDRESS_ENV",
]

RAY_ADDRESS_ENV = "ENTK_RAY_ADDRESS"
"""Environment variable naming the Ray cluster to use when ``--ray`` is given without an address."""

Progress = Callable[[int, int, str], None]
MAX_ATTEMPTS = 2
"""A failing unit runs at most this many times (retried once)."""


@dataclass(frozen=True)
class Unit:
    """One independent piece of work: ``fn(**kwargs)``.

    Attributes:
      key: a short unique name (``"epoch 120"``, ``"layer 16"``), used in progress and reports.
      fn: a module-level function (workers import it by name).
      kwargs: plain values only (no open files, no models): paths, numbers, strings, bytes.
      gpus: GPUs the unit needs (Ray only; the local pool ignores it).
      cpus: CPUs the unit needs (Ray only).
    """

    key: str
    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    gpus: float = 0.0
    cpus: float = 1.0


@dataclass
class UnitResult:
    """What came back for one unit: ``value`` when ``ok``, else a one-line ``error``."""

    key: str
    ok: bool
    value: Any = None
    error: str | None = None
    attempts: int = 1
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.key, "ok": self.ok, "error": self.error, "attempts": self.attempts,
                "seconds": round(self.seconds, 3)}


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _call(fn: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn(**kwargs)
    return value, time.perf_counter() - t0


def _exit_with(pid: int) -> None:
    """End this process as soon as process ``pid`` (the pool's caller) has ended. A pool's
    worker is the forkserver's child, not its caller's: when a page's job is killed (Stop), its
    workers would otherwise finish the unit they are on, which may take minutes."""
    import select
    import threading

    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or the caller is gone already
        return

    def watch() -> None:
        select.select([fd], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="entk-exit-with-caller", daemon=True).start()


def _worker_init(threads: int, env: dict[str, str] | None = None, nice: int | None = None,
                 caller: int | None = None) -> None:
    """Worker processes: few torch and BLAS threads (units run side by side) and a quiet log.

    A local pool's worker is forked from the forkserver, not from its caller, so it takes the
    caller's environment (``env``) and scheduling priority (``nice``) of the moment the pool
    started, as a spawned process would have, and ends when its ``caller`` does."""
    import logging
    import warnings

    if caller is not None:
        _exit_with(caller)

    import torch
    from threadpoolctl import threadpool_limits

    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    if nice is not None:
        try:
            os.nice(max(0, nice - os.nice(0)))
        except OSError:
            pass
    torch.set_num_threads(max(1, threads))
    # numpy/scipy's OpenBLAS would start a thread per core in every worker; on a busy machine its
    # spinning threads make small solves and products 10-50x slower
    threadpool_limits(limits=max(1, threads), user_api="blas")
    # a worker whose caller's main module is the Streamlit launcher re-imports it: its warnings
    # about the missing script context mean nothing here
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*ScriptRunContext.*")


class Executor:
    """Runs units; subclasses implement :meth:`_run`. Use as a context manager or call :meth:`close`."""

    name = "executor"

    def run(self, units: Sequence[Unit], *, progress: Progress | None = None,
            on_result: Callable[[UnitResult], None] | None = None) -> list[UnitResult]:
        """Run ``units``; return one :class:`UnitResult` per unit, in the order of ``units``.

        ``on_result(result)`` is called in this thread as each unit finishes (successful or
        finally failed), before the next progress update, so the driver can cache it at once.
        ``progress(done, total, message)`` is called after each finished unit; if it raises,
        the remaining units are cancelled and the exception propagates.
        """
        keys = [u.key for u in units]
        if len(set(keys)) != len(keys):
            raise ValueError("unit keys must be unique")
        results: dict[str, UnitResult] = {}
        total = len(units)

        def finished(res: UnitResult) -> None:
            results[res.key] = res
            if on_result is not None:
                on_result(res)
            if progress is not None:
                state = "" if res.ok else f" FAILED ({res.error})"
                progress(len(results), total, f"{res.key}{state}")

        if units:
            self._run(list(units), finished)
        return [results[k] for k in keys]

    def _run(self, units: list[Unit], finished: Callable[[UnitResult], None]) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name}

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InlineExecutor(Executor):
    """Every unit in this process, in order (no worker processes)."""

    name = "inline"

    def _run(self, units: list[Unit], finished: Callable[[UnitResult], None]) -> None:
        for u in units:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                t0 = time.perf_counter()
                try:
                    value = u.fn(**u.kwargs)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as e:  # noqa: BLE001 - reported in the result, never lost
                    if attempt == MAX_ATTEMPTS:
                        finished(UnitResult(u.key, False, error=_one_line(e), attempts=attempt,
                                            seconds=time.perf_counter() - t0))
                    continue
                finished(UnitResult(u.key, True, value, attempts=attempt, seconds=time.perf_counter() - t0))
                break


class LocalExecutor(Executor):
    """A pool of ``workers`` processes on this machine (one torch thread each by default), forked
    from the forkserver with the caller's environment."""

    name = "local"

    def __init__(self, workers: int | None = None, threads_per_worker: int = 1):
        self.workers = max(1, int(workers or min(os.cpu_count() or 1, 4)))
        self.threads = int(threads_per_worker)

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "workers": self.workers}

    def _pool(self, n: int) -> ProcessPoolExecutor:
        # forked from the jobs' forkserver, which has torch and the library imported: a worker
        # starts in ~0.1 s instead of the ~3.5 s of CPU a fresh interpreter spends importing them
        return ProcessPoolExecutor(n, mp_context=worker_context(), initializer=_worker_init,
                                   initargs=(self.threads, dict(os.environ), os.nice(0), os.getpid()))

    @staticmethod
    def _stop(pool: ProcessPoolExecutor) -> None:
        """Cancel what has not started and end the workers now (a unit may run for minutes)."""
        # the pool's own children (Python 3.14 has pool.terminate_workers(); 3.11 keeps them here)
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)

    def _run(self, units: list[Unit], finished: Callable[[UnitResult], None]) -> None:
        attempts = {u.key: 0 for u in units}
        started = {u.key: 0.0 for u in units}
        queue: deque[Unit] = deque(units)
        suspects: deque[Unit] = deque()

        def fail_or_retry(u: Unit, err: str, into: deque) -> None:
            if attempts[u.key] >= MAX_ATTEMPTS:
                finished(UnitResult(u.key, False, error=err, attempts=attempts[u.key],
                                    seconds=time.perf_counter() - started[u.key]))
            else:
                into.append(u)

        while queue or suspects:
            if suspects:
                # after a worker died: each unit that was in flight runs alone, so a death is its own
                batch, n = [suspects.popleft()], 1
            else:
                batch, n = list(queue), min(self.workers, len(queue))
                queue.clear()
            pool = self._pool(n)
            inflight: dict[Future, Unit] = {}
            try:
                for u in batch:
                    attempts[u.key] += 1
                    started[u.key] = time.perf_counter()
                    inflight[pool.submit(_call, u.fn, u.kwargs)] = u
                while inflight:
                    done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                    broken = False
                    for fut in done:
                        u = inflight.pop(fut)
                        try:
                            value, secs = fut.result()
                        except BrokenProcessPool:
                            broken = True
                            err = "worker process died (killed or out of memory)"
                            fail_or_retry(u, err, suspects)  # retried alone: a death there is its own
                            continue
                        except Exception as e:  # noqa: BLE001 - the unit raised
                            fail_or_retry(u, _one_line(e), queue if n > 1 else suspects)
                            continue
                        finished(UnitResult(u.key, True, value, attempts=attempts[u.key], seconds=secs))
                    if broken:
                        for u in inflight.values():  # the rest of the broken pool's work
                            fail_or_retry(u, "worker process died (killed or out of memory)", suspects)
                        inflight.clear()
                        break
            except BaseException:
                self._stop(pool)
                raise
            else:
                pool.shutdown(wait=True)


class RayExecutor(Executor):
    """Tasks on a Ray cluster (see the module docstring for ``address``).

    A local instance (``address=None``) is started with this machine's CPUs (and GPUs) and
    shut down by :meth:`close`; a cluster this object connected to is only disconnected.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, threads_per_unit: int = 1):
        if address:
            _token_auth_for(address)  # before ray is imported: it reads the mode at import
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # no C++ log lines on the CLI's stderr
        import logging

        logging.getLogger("ray").setLevel(logging.ERROR)
        try:
            import ray
        except ImportError:  # pragma: no cover - ray is pinned in requirements.txt
            raise ValueError("--ray needs the 'ray' package (pip install ray)") from None
        self._ray = ray
        self.address = address
        self.threads = int(threads_per_unit)
        self._started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
            if address:
                kw["address"] = address
            else:
                kw["num_cpus"] = int(num_cpus or os.cpu_count() or 1)
                # local workers import entk_core (and the caller's modules) from the driver's path
                kw["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
            try:
                ray.init(**kw)
            except ConnectionError as e:
                raise ValueError(f"cannot connect to the Ray cluster at {address}: {_one_line(e)}") from None
            self._started = True
        # retries are the driver's (as in the local pool), so attempts are counted exactly
        self._remote = ray.remote(max_retries=0, retry_exceptions=False)(_ray_call)

    def describe(self) -> dict[str, Any]:
        res = self._ray.cluster_resources()
        return {"executor": self.name, "address": self.address or "local",
                "cluster_cpus": res.get("CPU", 0), "cluster_gpus": res.get("GPU", 0)}

    def _submit(self, u: Unit):
        return self._remote.options(num_cpus=u.cpus, num_gpus=u.gpus).remote(u.fn, u.kwargs, self.threads)

    def _run(self, units: list[Unit], finished: Callable[[UnitResult], None]) -> None:
        ray = self._ray
        refs = {self._submit(u): (u, 1) for u in units}
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    u, attempt = refs.pop(ref)
                    try:
                        value, secs = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - the task raised or its worker died
                        if attempt < MAX_ATTEMPTS:
                            refs[self._submit(u)] = (u, attempt + 1)
                            continue
                        cause = getattr(e, "cause", None) or e
                        finished(UnitResult(u.key, False, error=_one_line(cause), attempts=attempt))
                        continue
                    finished(UnitResult(u.key, True, value, attempts=attempt, seconds=secs))
        except BaseException:
            for ref in refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone
                    pass
            raise

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False


def _token_auth_for(address: str) -> None:
    """Ray (2.5x+) clusters started by ``ray start`` use token authentication by default; a
    driver connecting by explicit address finds the token only in token mode. Turn it on
    when a token is at hand (``$RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``, which ``ray start``
    writes) and the user has not chosen a mode."""
    if address == "auto" or os.environ.get("RAY_AUTH_MODE"):
        return
    if os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def _ray_call(fn: Callable[..., Any], kwargs: dict[str, Any], threads: int) -> tuple[Any, float]:
    """Ray task body: the unit, in a quiet worker with ``threads`` torch threads."""
    _worker_init(threads)
    return _call(fn, kwargs)


def resolve_ray_address(ray: bool | str | None) -> str | None | bool:
    """``--ray`` semantics: ``None``/``False`` -> no Ray; ``True``/``""``/``"local"`` ->
    ``$ENTK_RAY_ADDRESS`` if set, else a local instance (``None`` address); an address -> it."""
    if ray is None or ray is False:
        return False
    if ray is True or ray in ("", "local"):
        env = os.environ.get(RAY_ADDRESS_ENV, "").strip()
        return env or None
    return str(ray)


def make_executor(*, ray: bool | str | None = None, workers: int | None = None, n_units: int | None = None,
                  threads_per_worker: int = 1) -> Executor:
    """The executor for a command's options.

    Args:
      ray: ``None``/``False`` (local), ``True``/``"local"`` (a local Ray instance, or
        ``$ENTK_RAY_ADDRESS``), or a cluster address.
      workers: local worker processes (``1`` = :class:`InlineExecutor`; default: the CPU
        count, at most 4, when there are at least 8 units, else inline).
      n_units: how many units will run (for the default).
    """
    addr = resolve_ray_address(ray)
    if addr is not False:
        return RayExecutor(addr, threads_per_unit=threads_per_worker)
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if (n_units or 0) >= 8 else 1
    workers = max(1, min(int(workers), max(1, n_units or workers)))
    if workers == 1:
        return InlineExecutor()
    return LocalExecutor(workers, threads_per_worker=threads_per_worker)


def run_units(units: Iterable[Unit], *, executor: Executor | None = None, ray: bool | str | None = None,
              workers: int | None = None, progress: Progress | None = None,
              on_result: Callable[[UnitResult], None] | None = None) -> list[UnitResult]:
    """Run ``units`` on ``executor`` (or one made by :func:`make_executor`, closed afterwards)."""
    units = list(units)
    own = executor is None
    ex = executor or make_executor(ray=ray, workers=workers, n_units=len(units))
    try:
        return ex.run(units, progress=progress, on_result=on_result)
    finally:
        if own:
            ex.close()
