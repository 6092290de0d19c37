"""Unit functions for the executor tests (module level, so worker processes can import them)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def square(x: int) -> int:
    return x * x


def fail_once(marker: str, x: int) -> int:
    """Raise the first time (leaving ``marker``), succeed on the retry."""
    m = Path(marker)
    if not m.exists():
        m.write_text("failed once")
        raise RuntimeError("transient failure")
    return x


def die_once(marker: str, x: int) -> int:
    """Kill its own worker process the first time (as the OOM killer would), succeed on the retry."""
    m = Path(marker)
    if not m.exists():
        m.write_text("died once")
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def always_fail(x: int) -> int:
    raise ValueError(f"unit {x} is broken")


def always_die(x: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return x


def slow(seconds: float, marker_dir: str, x: int) -> int:
    """Sleep in small steps, leaving a file while running (to see that cancelled work stops)."""
    f = Path(marker_dir) / f"running-{x}-{os.getpid()}"
    f.write_text("")
    t_end = time.time() + seconds
    while time.time() < t_end:
        time.sleep(0.05)
    f.unlink()
    return x


def env_value(name: str) -> str | None:
    """The worker's value of the environment variable ``name``."""
    return os.environ.get(name)


def niceness() -> int:
    """The worker's scheduling priority (``nice`` value)."""
    return os.nice(0)


def parent() -> int:
    """The worker's parent process (the forkserver that forked it)."""
    return os.getppid()


def pool_parents(progress=None) -> dict:
    """A job step: start a local pool of two workers here and report who forked them, who
    forked this job, and whether this job started a forkserver of its own."""
    from multiprocessing import forkserver

    from entk_core.workflows.executors import LocalExecutor, Unit

    res = LocalExecutor(2).run([Unit(f"p{i}", parent, {}) for i in range(2)])
    return {"job_parent": os.getppid(), "pool_parents": [r.value for r in res],
            "own_forkserver": forkserver._forkserver._forkserver_pid}


def slow_pool(marker_dir: str, progress=None) -> None:
    """A job step: two slow units (a minute each) in a local pool of two workers."""
    from entk_core.workflows.executors import LocalExecutor, Unit

    LocalExecutor(2).run([Unit(f"s{i}", slow, {"seconds": 60.0, "marker_dir": marker_dir, "x": i}) for i in range(2)])
