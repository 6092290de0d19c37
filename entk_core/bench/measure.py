"""Measurement helpers of the benchmark: wall time and peak memory of one call.

Peak memory is ``VmHWM`` from ``/proc/self/status``, reset through
``/proc/self/clear_refs`` before each measured computation (every case runs in a child
process of its own)."""
from __future__ import annotations

import math
import time
from typing import Any, Callable

__all__ = ["status_mb", "reset_peak", "measure", "max_rel_err"]


# ---------------------------------------------------------------- memory helpers
def status_mb(field: str) -> float:
    """A ``/proc/self/status`` field in MB (0 when unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float, float, float]:
    """Run ``fn`` ``repeats`` times; return (last result, best seconds, peak RSS MB during the
    first run, RSS MB before it)."""
    import gc

    gc.collect()
    base = status_mb("VmRSS")
    reset_peak()
    best, out = math.inf, None
    peak = None
    for i in range(repeats):
        out = None
        gc.collect()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
        if peak is None:
            peak = status_mb("VmHWM")
    return out, best, peak or 0.0, base


def max_rel_err(A, B) -> float:
    """``max|A − B| / max|B|`` computed in row blocks (no full-size temporary)."""
    A2, B2 = A.reshape(A.shape[0], -1), B.reshape(B.shape[0], -1)
    num = den = 0.0
    step = max(1, (1 << 24) // max(1, A2.shape[1]))
    for i in range(0, A2.shape[0], step):
        a, b = A2[i:i + step].double(), B2[i:i + step].double()
        num = max(num, float((a - b).abs().max()))
        den = max(den, float(b.abs().max()))
    return num / den if den else num


