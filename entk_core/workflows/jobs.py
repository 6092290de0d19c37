"""Long computations for interactive callers: look a result up without computing it, and
run a computation in a separate, killable worker process that reports progress.

The dashboard uses both (:func:`entk_core.ui.jobs.long_call`): a request whose result is cached is
served at once (:func:`cached`); otherwise the caller estimates its cost, asks the user
above ~10 s, and runs it with :class:`Job` -- a ``python -m entk_core.workflows.jobs``
subprocess that computes the result into the shared on-disk cache and streams
``progress(done, total, message)`` lines back as JSON. Stopping a job kills the process
(its CPU is free at once, whatever the computation is doing); nothing partial is cached,
because the cache stores a result only once it is complete. The caller then reads the
result with :func:`cached` (or calls the function again: a cache hit).

Targets are named ``"module:function"`` and called as ``function(run, **kwargs,
progress=callback)`` with ``run`` opened from its folder in the worker, so only plain
JSON values cross the process boundary. The worker imports no Streamlit and writes no
log lines of its own.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = ["NotCached", "ProbeCache", "cached", "Job", "JobError"]


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
      env: extra environment for the worker (the cache and runs folders are inherited).
    """

    target: str
    run: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    done: int = 0
    total: int = 0
    message: str = ""

    def start(self) -> "Job":
        payload = json.dumps({"target": self.target, "run": self.run, "kwargs": self.kwargs})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "entk_core.workflows.jobs"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env={**os.environ, **self.env}, text=True, bufsize=1,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(payload + "\n")
        self.proc.stdin.close()
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._buf = ""
        return self

    def poll(self) -> str:
        """Read what the worker reported: ``"running"``, ``"done"``; raises :class:`JobError`."""
        assert self.proc is not None and self.proc.stdout is not None
        try:
            chunk = self.proc.stdout.read()
        except (BlockingIOError, TypeError):
            chunk = None
        if chunk:
            self._buf += chunk
        status = "running"
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("kind") == "progress":
                self.done, self.total, self.message = int(msg["done"]), int(msg["total"]), str(msg.get("message", ""))
            elif msg.get("kind") == "done":
                status = "done"
            elif msg.get("kind") == "error":
                self.kill()
                raise JobError(msg.get("message") or "the worker failed", user_error=bool(msg.get("user_error")),
                               worker_traceback=str(msg.get("traceback") or ""))
        if status == "running" and self.proc.poll() is not None:
            raise JobError(f"the worker exited with status {self.proc.returncode}")
        return status

    def wait(self, on_progress: Callable[[int, int, str], None] | None = None, interval: float = 0.2) -> None:
        """Block until done, calling ``on_progress`` after every poll (it may raise to stop:
        the worker is then killed). Raises :class:`JobError` if the worker fails."""
        try:
            while self.poll() != "done":
                if on_progress is not None:
                    on_progress(self.done, self.total, self.message)
                time.sleep(interval)
        except BaseException:
            self.kill()
            raise
        self.proc.wait()
        self.kill()  # closes the pipe (the worker has exited)

    def kill(self) -> None:
        """Stop the worker now (SIGKILL), reap it and close its pipe."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()


def _main() -> int:  # the worker: python -m entk_core.workflows.jobs < {"target", "run", "kwargs"}
    import warnings

    warnings.simplefilter("ignore")
    req = json.loads(sys.stdin.readline())
    out = sys.stdout

    def send(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    def progress(done: int, total: int, message: str = "") -> None:
        send({"kind": "progress", "done": int(done), "total": int(total), "message": str(message)})

    try:
        from ..families.run import open_run

        mod, name = req["target"].split(":")
        fn = getattr(importlib.import_module(mod), name)
        fn(open_run(req["run"]), **req.get("kwargs", {}), progress=progress)
    except Exception as e:  # noqa: BLE001 - reported to the caller as one line
        import traceback

        from ..errors import is_user_error, one_line

        send({"kind": "error", "message": one_line(e), "user_error": is_user_error(e),
              "traceback": traceback.format_exc()})
        return 1
    send({"kind": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(_main())
