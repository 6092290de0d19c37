"""Measurement helpers of the benchmark: wall time and peak memory of one call.

Peak host memory is ``VmHWM`` from ``/proc/self/status``, reset through
``/proc/self/clear_refs`` before each measured computation (every case runs in a child
process of its own). On CUDA the timer is bracketed by ``torch.cuda.synchronize()`` and
the peak device memory is ``torch.cuda.max_memory_allocated()``, reset with
``torch.cuda.reset_peak_memory_stats()`` before each measured computation."""
from __future__ import annotations

import math
import time
from typing import Any, Callable, NamedTuple

__all__ = ["status_mb", "reset_peak", "Measured", "measure", "synchronize", "memory_fields", "max_rel_err"]

_MB = 1024.0 * 1024.0


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


def _device_type(device: Any) -> str:
    if device is None:
        return "cpu"
    import torch

    return torch.device(device).type


def synchronize(device: Any = None) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU)."""
    kind = _device_type(device)
    if kind == "cuda":
        import torch

        torch.cuda.synchronize(device)
    elif kind == "mps":
        import torch

        torch.mps.synchronize()


class Measured(NamedTuple):
    """What :func:`measure` returns. ``peak_gpu_mb`` / ``base_gpu_mb`` are ``None`` off CUDA."""
    out: Any
    seconds: float          # best of the repeats
    peak_rss_mb: float      # host VmHWM during the first run
    base_rss_mb: float      # host VmRSS before it
    peak_gpu_mb: float | None = None  # torch.cuda.max_memory_allocated() during the first run
    base_gpu_mb: float | None = None  # torch.cuda.memory_allocated() before it


def measure(fn: Callable[[], Any], repeats: int = 1, device: Any = None) -> Measured:
    """Run ``fn`` ``repeats`` times on ``device`` (default the CPU); return the last result,
    the best seconds and the peak memory of the first run (see :class:`Measured`)."""
    import gc

    cuda = _device_type(device) == "cuda"
    gc.collect()
    base = status_mb("VmRSS")
    base_gpu = peak_gpu = None
    if cuda:
        import torch

        synchronize(device)
        base_gpu = torch.cuda.memory_allocated(device) / _MB
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak()
    best, out = math.inf, None
    peak = None
    for i in range(repeats):
        out = None
        gc.collect()
        synchronize(device)
        t = time.perf_counter()
        out = fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t)
        if peak is None:
            peak = status_mb("VmHWM")
            if cuda:
                peak_gpu = torch.cuda.max_memory_allocated(device) / _MB
    return Measured(out, best, peak or 0.0, base, peak_gpu, base_gpu)


def memory_fields(fast: Measured, ref: Measured | None = None) -> dict[str, float]:
    """The memory figures of a case: ``peak_rss_mb``, ``peak_delta_mb``, ``ref_peak_rss_mb``
    and, on CUDA, ``peak_gpu_mb``, ``peak_gpu_delta_mb``, ``ref_peak_gpu_mb``."""
    d = {"peak_rss_mb": fast.peak_rss_mb, "peak_delta_mb": fast.peak_rss_mb - fast.base_rss_mb}
    if ref is not None:
        d["ref_peak_rss_mb"] = ref.peak_rss_mb
    if fast.peak_gpu_mb is not None:
        d["peak_gpu_mb"] = fast.peak_gpu_mb
        d["peak_gpu_delta_mb"] = fast.peak_gpu_mb - (fast.base_gpu_mb or 0.0)
    if ref is not None and ref.peak_gpu_mb is not None:
        d["ref_peak_gpu_mb"] = ref.peak_gpu_mb
    return d


def max_rel_err(A, B) -> float:
    """``max|A − B| / max|B|`` computed in row blocks (no full-size temporary)."""
    A2, B2 = A.reshape(A.shape[0], -1), B.reshape(B.shape[0], -1)
    num = den = 0.0
    step = max(1, (1 << 24) // max(1, A2.shape[1]))
    for i in range(0, A2.shape[0], step):
        a, b = A2[i:i + step], B2[i:i + step]
        if a.device.type == "mps":  # MPS has no float64
            a, b = a.cpu(), b.cpu()
        a, b = a.double(), b.to(a.device).double()
        num = max(num, float((a - b).abs().max()))
        den = max(den, float(b.abs().max()))
    return num / den if den else num
