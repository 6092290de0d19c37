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

__all__ = ["machine_info", "status_mb", "reset_peak", "Measured", "measure", "compare", "synchronize", "memory_fields",
           "max_rel_err", "load_fields"]

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
        if i:  # the first run follows the collection above; later ones free the previous result first
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


class Timed(NamedTuple):
    """One side of :func:`compare`: the first run's output, every run's seconds, the statistic."""
    out: Any
    times: list
    seconds: float          # the statistic: best of the runs
    median: float
    peak_rss_mb: float      # host VmHWM during the first run
    base_rss_mb: float      # host VmRSS before it
    peak_gpu_mb: float | None = None
    base_gpu_mb: float | None = None


def compare(fns: dict[str, Callable[[], Any]], repeats: int = 3, device: Any = None,
            warmup: dict[str, Callable[[], Any]] | None = None, keep: bool = True) -> dict[str, Timed]:
    """Time several computations *the same way*: each gets the same warm-up (``warmup[name]``,
    e.g. the same call on a few inputs; else none), then ``repeats`` rounds in which every
    computation runs once, the order alternating between rounds so that all see the same
    machine load. The statistic is the best of the rounds for every side (the median is
    kept too); peak memory is that of the first round (VmHWM reset before each call).
    ``keep``: keep each side's first-round output (else ``None``)."""
    import gc

    for name in fns:
        if warmup and name in warmup:
            warmup[name]()
    names = list(fns)
    times: dict[str, list] = {n: [] for n in names}
    outs: dict[str, Any] = {}
    mem: dict[str, tuple] = {}
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            m = measure(fns[n], 1, device)
            times[n].append(m.seconds)
            if r == 0:
                outs[n] = m.out if keep else None
                mem[n] = (m.peak_rss_mb, m.base_rss_mb, m.peak_gpu_mb, m.base_gpu_mb)
            del m
            gc.collect()
    res = {}
    for n in names:
        ts = sorted(times[n])
        med = ts[len(ts) // 2] if len(ts) % 2 else 0.5 * (ts[len(ts) // 2 - 1] + ts[len(ts) // 2])
        res[n] = Timed(outs[n], times[n], ts[0], med, *mem[n])
    return res


def load_fields() -> dict[str, Any]:
    """The machine's load now: 1-minute load average and the number of runnable processes."""
    import os

    la = os.getloadavg()
    return {"loadavg_1m": la[0], "loadavg_5m": la[1], "usable_cores": len(os.sched_getaffinity(0))}


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


def machine_info(device: Any = "cpu") -> dict[str, Any]:
    """The machine's figures, with the compute ``device`` (and on CUDA the GPU's name)."""
    import os
    import platform

    import torch

    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh.read().splitlines() if ln.startswith("model name")]
    except OSError:
        names = []
    model = names[0] if names else ""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    dev = torch.device(device)
    info = {
        "cpu_model": model or platform.processor(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(dev),
        "loadavg_start": list(os.getloadavg()),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update({"gpu_name": torch.cuda.get_device_name(dev), "gpu_memory_mb": props.total_memory / 2 ** 20,
                     "gpu_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version()})
    return info
