"""What this machine offers kernel work: memory, the memory budget, and measured rates.

Memory budget
-------------
``memory_budget`` (bytes, or a string like ``"4GB"``, ``"512MiB"``, see
:func:`entk_core.engine.units.parse_bytes`); else the environment variable
``ENTK_MEMORY_BUDGET`` (same syntax); else 50% of the currently available memory
(``MemAvailable`` from ``/proc/meminfo``, or free memory of a CUDA device):
:func:`resolve_budget`.

Rates
-----
The planner's seconds come from counts (kernels launched, matrix-product flops, bytes
moved; :mod:`.costs`) and three rates of this machine and device (:func:`machine_rates`):
a GEMM (flop/s per dtype), a large elementwise add (bytes/s) and ``vmap(jacrev)`` of a tiny
model (seconds per kernel): :meth:`Rates.seconds`. The measurement takes a fraction of a second
and is stored in ``$ENTK_CACHE_DIR/engine-rates.json`` (default ``./.entk_cache``) with when
and under what load it was taken; it is taken again when a day old, when the load per
core has changed by more than :data:`LOAD_CHANGE`, or when a call ran :data:`OFF_FACTOR`
times off its estimate (:func:`observe_call`, recorded in ``KernelInfo.rates``). Set
``ENTK_CALIBRATION=off`` to use the built-in :data:`DEFAULT_RATES` instead.
"""
from __future__ import annotations

import json
import math
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .units import parse_bytes

__all__ = [
    "DEFAULT_FRACTION",
    "DEFAULT_RATES",
    "Rates",
    "available_memory",
    "dtype_name",
    "eigh_seconds",
    "itemsize",
    "load_per_core",
    "machine_rates",
    "measuring_seconds",
    "observe_call",
    "resolve_budget",
    "stale_reason",
]

#: Default fraction of available memory used as the budget.
DEFAULT_FRACTION = 0.5


def itemsize(dtype: Any) -> int:
    """Bytes per element of a floating dtype given as a torch dtype or a name (default 4)."""
    name = str(dtype).replace("torch.", "")
    return {"float64": 8, "double": 8, "float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}.get(name, 4)


def dtype_name(dtype: Any) -> str:
    """The canonical name of a dtype (``torch.double`` -> ``"float64"``)."""
    name = str(dtype).replace("torch.", "")
    return {"double": "float64", "float": "float32", "half": "float16"}.get(name, name)


def _proc_field(path: str, prefix: str) -> str | None:
    """The rest of the first line of ``path`` (a ``/proc`` file) that starts with ``prefix``:
    ``""`` when no line does, ``None`` when the file cannot be read."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(prefix):
                    return line[len(prefix):]
    except OSError:
        return None
    return ""


# ------------------------------------------------------------------------ memory
def available_memory(device: Any = None) -> int:
    """Bytes currently available: free memory of a CUDA device, the recommended limit
    minus what is allocated for MPS, else ``MemAvailable`` from ``/proc/meminfo``
    (falling back to ``os.sysconf``)."""
    dev = str(device) if device is not None else "cpu"
    if dev.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(dev))
        return int(free)
    if dev.startswith("mps"):
        import torch

        return int(max(0, torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory()))
    kb = _proc_field("/proc/meminfo", "MemAvailable:")
    if kb:
        return int(kb.split()[0]) * 1024
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def resolve_budget(memory_budget: int | float | str | None = None, device: Any = None) -> int:
    """The budget in bytes: the argument, else ``$ENTK_MEMORY_BUDGET``, else 50% of
    :func:`available_memory`."""
    if memory_budget is not None:
        return parse_bytes(memory_budget)
    env = os.environ.get("ENTK_MEMORY_BUDGET", "").strip()
    if env:
        try:
            return parse_bytes(env)
        except ValueError as e:
            raise ValueError(f"ENTK_MEMORY_BUDGET: {e}") from None
    return int(DEFAULT_FRACTION * available_memory(device))


# ------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class Rates:
    """Measured rates of one machine and device, and when and under what load.

    ``gemm``: dense matrix-product flop/s per dtype name (``"float32"``, ``"float64"``);
    ``autograd``: flop/s of a forward+backward of small dense layers (counted as
    ``6 · batch · weights``), per dtype; ``bandwidth``: bytes/s of memory-bound work (a
    large elementwise add); ``op_seconds``: seconds per kernel of a tiny forward+backward
    (dispatch, autograd and ``vmap`` bookkeeping: what small models pay per operation);
    ``source``: ``"measured"``, ``"cached"`` or ``"default"``; ``key``: what the
    measurement is valid for; ``measured_at``: when (Unix time); ``load``: the 1-minute
    load average per core at that moment; ``reason``: why it was (re-)measured."""

    gemm: dict
    autograd: dict
    source: str = "default"
    key: str = ""
    bandwidth: float = 8e9
    op_seconds: float = 1.5e-5
    measured_at: float = 0.0
    load: float = 0.0
    reason: str = ""

    def gemm_rate(self, dtype: Any) -> float:
        name = dtype_name(dtype)
        return float(self.gemm.get(name) or self.gemm.get("float32") or 1e11)

    def autograd_rate(self, dtype: Any) -> float:
        name = dtype_name(dtype)
        return float(self.autograd.get(name) or self.autograd.get("float32") or 2e10)

    def seconds(self, ops: float, flops: float, nbytes: float, dtype: Any = "float32") -> float:
        """The time model: ``ops · op_seconds + flops / gemm + bytes / bandwidth`` (a kernel
        pays its launch, its arithmetic at the matrix-product rate and its memory traffic;
        on a CPU the three hardly overlap across kernels)."""
        return float(ops) * self.op_seconds + float(flops) / self.gemm_rate(dtype) + float(nbytes) / self.bandwidth

    def describe(self) -> dict[str, Any]:
        """Plain JSON: the rates, their source, age, the load they were measured under."""
        return {"source": self.source, "gemm_gflops": {k: round(v / 1e9, 2) for k, v in self.gemm.items()},
                "bandwidth_gbs": round(self.bandwidth / 1e9, 2), "op_us": round(self.op_seconds * 1e6, 2),
                "measured_at": self.measured_at, "age_s": round(time.time() - self.measured_at, 1)
                if self.measured_at else None, "load_per_core": round(self.load, 2), "reason": self.reason}


#: Used when calibration is off (``ENTK_CALIBRATION=off``): 2 server cores of the project's
#: machines (GEMM 190 / 115 GFLOP/s float32 / float64, autograd about a fifth of it, 8 GB/s
#: for memory-bound work, 15 µs per kernel of a small autograd graph).
DEFAULT_RATES = Rates({"float32": 1.9e11, "float64": 1.15e11}, {"float32": 4e10, "float64": 2.5e10}, "default")

#: Rates older than this are measured again (seconds).
STALE_AFTER_S = 24 * 3600.0
#: Rates measured under a load per core that differs from the current one by more than this
#: are measured again (a machine measured while busy is faster once quiet, and the reverse).
LOAD_CHANGE = 0.75
#: A call whose measured time is this far (either way) from its estimate re-measures the rates.
OFF_FACTOR = 3.0
#: ... when it ran at least this long (shorter calls are dominated by fixed overheads).
OFF_MIN_SECONDS = 0.5
#: ... and at most once per this many seconds per process.
OFF_MIN_INTERVAL_S = 30.0

_RATES_LOCK = threading.Lock()
_RATES: dict[str, Rates] = {}
_LAST_UPDATE: dict[str, float] = {}
_CHECKED: dict[str, float] = {}
#: A long-lived process checks its rates for staleness at most this often (seconds).
RECHECK_S = 300.0
RATES_FILE = "engine-rates.json"


def _calibration_off() -> bool:
    return os.environ.get("ENTK_CALIBRATION", "").strip().lower() in ("off", "0", "no", "false")


def _machine_key(device: str) -> str:
    import torch

    name = _proc_field("/proc/cpuinfo", "model name")
    cpu = platform.processor() if name is None else (name.split(":", 1)[1].strip() if name else "")
    if device.startswith("cuda"):
        cpu = torch.cuda.get_device_name(torch.device(device))
    return f"{device.split(':')[0]}|{cpu}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def _rates_path() -> Path:
    return Path(os.environ.get("ENTK_CACHE_DIR", ".entk_cache")).expanduser() / RATES_FILE


def load_per_core() -> float:
    """The 1-minute load average divided by the usable cores (0 where unknown)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        return os.getloadavg()[0] / max(1, cores)
    except (AttributeError, OSError):
        return 0.0


def _measure_rates(device: str, reason: str = "first use") -> Rates:
    import torch

    from ._profile import count_ops

    dev = torch.device(device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elif dev.type == "mps":
            torch.mps.synchronize()

    def typical(fn, reps=5):
        # the median of a few runs: what work meets under the machine's current load (the
        # best run would be a moment with the cores to itself)
        fn()
        sync()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
        return max(sorted(ts)[reps // 2], 1e-9)

    load = load_per_core()
    gemm, auto = {}, {}
    gen = torch.Generator().manual_seed(0)
    dtypes = (torch.float32,) if dev.type == "mps" else (torch.float32, torch.float64)
    n = 512 if dev.type == "cpu" else 2048
    for dt in dtypes:
        a = torch.randn(n, n, generator=gen, dtype=dt).to(dev)
        b = torch.randn(n, n, generator=gen, dtype=dt).to(dev)
        gemm[dtype_name(dt)] = 2 * n**3 / typical(lambda: a @ b)
        B, d, h = 128, 256, 512
        w1 = torch.randn(h, d, generator=gen, dtype=dt).to(dev).requires_grad_(True)
        w2 = torch.randn(d, h, generator=gen, dtype=dt).to(dev).requires_grad_(True)
        x = torch.randn(B, d, generator=gen, dtype=dt).to(dev)

        def fb():
            with torch.enable_grad(), torch.inference_mode(False):
                y = torch.tanh(x @ w1.T) @ w2.T
                torch.autograd.grad(y.sum(), (w1, w2))

        auto[dtype_name(dt)] = 6 * B * 2 * d * h / typical(fb)
    # memory-bound work: c = a + b over 3 × 24 MB (float32)
    m = (6 * 2**20) if dev.type == "cpu" else (64 * 2**20)
    a = torch.rand(m, generator=gen).to(dev)
    b = torch.rand(m, generator=gen).to(dev)
    c = torch.empty_like(a)
    bandwidth = 3 * m * 4 / typical(lambda: torch.add(a, b, out=c))
    # per-kernel cost of a tiny forward + backward (a 3-layer MLP of width 8 on 2 examples)
    ws = [torch.randn(8, 8, generator=gen).to(dev).requires_grad_(True) for _ in range(3)]
    xs = torch.randn(2, 8, generator=gen).to(dev)

    def tiny():
        with torch.enable_grad(), torch.inference_mode(False):
            h = xs
            for w in ws:
                h = torch.tanh(h @ w.T)
            torch.autograd.grad(h.sum(), ws)

    ops = count_ops(tiny)
    op_seconds = typical(lambda: [tiny() for _ in range(20)]) / (20 * max(1, ops))
    return Rates(gemm, auto, "measured", _machine_key(device), bandwidth=float(bandwidth),
                 op_seconds=float(op_seconds), measured_at=time.time(), load=load, reason=reason)


def _from_entry(entry: Any, key: str) -> Rates | None:
    if not isinstance(entry, dict):
        return None
    try:
        g = {str(k): float(v) for k, v in entry["gemm"].items() if float(v) > 0}
        a = {str(k): float(v) for k, v in entry["autograd"].items() if float(v) > 0}
        bw, op = float(entry["bandwidth"]), float(entry["op_seconds"])
        at, load = float(entry.get("measured_at", 0.0)), float(entry.get("load", 0.0))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not (g and a and bw > 0 and op > 0 and math.isfinite(bw) and math.isfinite(op)):
        return None
    return Rates(g, a, "cached", key, bandwidth=bw, op_seconds=op, measured_at=at, load=load,
                 reason=str(entry.get("reason", "")))


def stale_reason(rates: Rates, now: float | None = None, load: float | None = None) -> str | None:
    """Why cached ``rates`` should be measured again (``None``: they are fresh): older than
    :data:`STALE_AFTER_S`, or measured under a load per core more than :data:`LOAD_CHANGE`
    away from the current one."""
    now = time.time() if now is None else now
    load = load_per_core() if load is None else load
    if not rates.measured_at or now - rates.measured_at > STALE_AFTER_S:
        return f"stale (measured {((now - rates.measured_at) / 3600):.0f} h ago)" if rates.measured_at \
            else "stale (no measurement time)"
    if abs(load - rates.load) > LOAD_CHANGE:
        return f"load changed ({rates.load:.2f} per core when measured, {load:.2f} now)"
    return None


def _store(key: str, rates: Rates) -> None:
    path = _rates_path()
    try:
        stored = json.loads(path.read_text())
        if not isinstance(stored, dict):
            stored = {}
    except (OSError, ValueError):
        stored = {}
    stored[key] = {"gemm": rates.gemm, "autograd": rates.autograd, "bandwidth": rates.bandwidth,
                   "op_seconds": rates.op_seconds, "measured_at": rates.measured_at, "load": rates.load,
                   "reason": rates.reason}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(stored, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass   # a read-only cache folder: keep the rates in memory only


_MEASURING = [0.0]


def measuring_seconds() -> float:
    """Seconds this process has spent measuring rates so far (a request's setup time, part of
    its estimate, leaves them out: the measurement is once a day, not once a call)."""
    return _MEASURING[0]


def _remeasure(dev: str, key: str, reason: str) -> Rates:
    t0 = time.perf_counter()
    try:
        rates = _measure_rates(dev, reason)
    except Exception:  # noqa: BLE001 - a device that cannot run the probe: defaults
        return DEFAULT_RATES
    finally:
        _MEASURING[0] += time.perf_counter() - t0
    _store(key, rates)
    return rates


def machine_rates(device: Any = None) -> Rates:
    """The :class:`Rates` of this machine for ``device`` (default CPU): measured (about
    0.2 s) and stored in ``$ENTK_CACHE_DIR/engine-rates.json`` with when and under what load,
    reused from there by later processes until stale (:func:`stale_reason`: a day old, or
    the load changed), and measured again when a call contradicts them
    (:func:`observe_call`). ``ENTK_CALIBRATION=off`` returns :data:`DEFAULT_RATES`."""
    if _calibration_off():
        return DEFAULT_RATES
    dev = str(device) if device is not None else "cpu"
    try:
        key = _machine_key(dev)
    except Exception:  # noqa: BLE001 - no device information: defaults
        return DEFAULT_RATES
    with _RATES_LOCK:
        if key in _RATES:
            rates = _RATES[key]
            if time.monotonic() - _CHECKED.get(key, 0.0) < RECHECK_S or rates.source == "default":
                return rates
            _CHECKED[key] = time.monotonic()
            why = stale_reason(rates)
            if why is None:
                return rates
            rates = _RATES[key] = _remeasure(dev, key, why)
            return rates
        _CHECKED[key] = time.monotonic()
        try:
            entry = json.loads(_rates_path().read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            entry = None
        rates = _from_entry(entry, key)
        why = "first use" if rates is None else stale_reason(rates)
        if why is not None:
            rates = _remeasure(dev, key, why)
        _RATES[key] = rates
        return rates


def observe_call(estimated_s: float, measured_s: float, device: Any = None) -> dict[str, Any] | None:
    """Compare a call's measured time with its estimate. When it is :data:`OFF_FACTOR` or more
    off either way (and ran at least :data:`OFF_MIN_SECONDS`; at most once per
    :data:`OFF_MIN_INTERVAL_S` per process), the rates are measured again and stored; returns
    ``{"reason", "before", "after"}`` (the rates' :meth:`Rates.describe`), else ``None``."""
    if _calibration_off() or not (estimated_s > 0 and measured_s > 0):
        return None
    ratio = measured_s / estimated_s
    if max(ratio, 1 / ratio) < OFF_FACTOR or max(measured_s, estimated_s) < OFF_MIN_SECONDS:
        return None
    dev = str(device) if device is not None else "cpu"
    try:
        key = _machine_key(dev)
    except Exception:  # noqa: BLE001
        return None
    now = time.monotonic()
    with _RATES_LOCK:
        if now - _LAST_UPDATE.get(key, -math.inf) < OFF_MIN_INTERVAL_S:
            return None
        _LAST_UPDATE[key] = now
        before = _RATES.get(key)
        reason = f"a call measured {ratio:.2g}x its estimate ({measured_s:.3g} s vs {estimated_s:.3g} s)"
        after = _remeasure(dev, key, reason)
        _RATES[key] = after
    return {"reason": reason, "before": before.describe() if before is not None else None,
            "after": after.describe()}


def eigh_seconds(n: int, rates: Rates, vectors: bool = True) -> float:
    """Rough seconds of a dense symmetric eigendecomposition of an ``n × n`` float64
    matrix (LAPACK divide and conquer): ``9 n³`` (``4 n³`` without vectors) GEMM-rate
    flops, measured on the project's machines (n = 5,000: 7-15 s; n = 24,389: 18 min)."""
    return (9.0 if vectors else 4.0) * float(n) ** 3 / rates.gemm_rate("float64")
