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
The planner's seconds are flop counts divided by rates measured once per machine and
device (:func:`machine_rates`): a tiny GEMM (dense contraction rate per dtype) and a tiny
forward+backward (autograd rate). The measurement takes well under a second and is
cached in ``$ENTK_CACHE_DIR/engine-rates.json`` (default ``./.entk_cache``); set
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
    "machine_rates",
    "resolve_budget",
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
    """Measured rates of one machine and device.

    ``gemm``: dense matrix-product flop/s per dtype name (``"float32"``, ``"float64"``);
    ``autograd``: flop/s of a forward+backward of small dense layers (counted as
    ``6 · batch · weights``), per dtype; ``source``: ``"measured"``, ``"cached"`` or
    ``"default"``; ``key``: what the measurement is valid for."""

    gemm: dict
    autograd: dict
    source: str = "default"
    key: str = ""

    def gemm_rate(self, dtype: Any) -> float:
        name = dtype_name(dtype)
        return float(self.gemm.get(name) or self.gemm.get("float32") or 1e11)

    def autograd_rate(self, dtype: Any) -> float:
        name = dtype_name(dtype)
        return float(self.autograd.get(name) or self.autograd.get("float32") or 2e10)


#: Used when calibration is off (``ENTK_CALIBRATION=off``): 2 server cores of the project's
#: machines (GEMM 190 / 115 GFLOP/s float32 / float64, autograd about a fifth of it).
DEFAULT_RATES = Rates({"float32": 1.9e11, "float64": 1.15e11}, {"float32": 4e10, "float64": 2.5e10}, "default")

_RATES_LOCK = threading.Lock()
_RATES: dict[str, Rates] = {}
RATES_FILE = "engine-rates.json"


def _machine_key(device: str) -> str:
    import torch

    name = _proc_field("/proc/cpuinfo", "model name")
    cpu = platform.processor() if name is None else (name.split(":", 1)[1].strip() if name else "")
    if device.startswith("cuda"):
        cpu = torch.cuda.get_device_name(torch.device(device))
    return f"{device.split(':')[0]}|{cpu}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def _rates_path() -> Path:
    return Path(os.environ.get("ENTK_CACHE_DIR", ".entk_cache")).expanduser() / RATES_FILE


def _measure_rates(device: str) -> Rates:
    import torch

    dev = torch.device(device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elif dev.type == "mps":
            torch.mps.synchronize()

    def best(fn, reps=3):
        fn()
        sync()
        t = math.inf
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            sync()
            t = min(t, time.perf_counter() - t0)
        return max(t, 1e-9)

    gemm, auto = {}, {}
    gen = torch.Generator().manual_seed(0)
    dtypes = (torch.float32,) if dev.type == "mps" else (torch.float32, torch.float64)
    n = 768 if dev.type == "cpu" else 2048
    for dt in dtypes:
        a = torch.randn(n, n, generator=gen, dtype=dt).to(dev)
        b = torch.randn(n, n, generator=gen, dtype=dt).to(dev)
        gemm[dtype_name(dt)] = 2 * n**3 / best(lambda: a @ b)
        B, d, h = 256, 256, 512
        w1 = torch.randn(h, d, generator=gen, dtype=dt).to(dev).requires_grad_(True)
        w2 = torch.randn(d, h, generator=gen, dtype=dt).to(dev).requires_grad_(True)
        x = torch.randn(B, d, generator=gen, dtype=dt).to(dev)

        def fb():
            with torch.enable_grad(), torch.inference_mode(False):
                y = torch.tanh(x @ w1.T) @ w2.T
                torch.autograd.grad(y.sum(), (w1, w2))

        auto[dtype_name(dt)] = 6 * B * 2 * d * h / best(fb)
    return Rates(gemm, auto, "measured", _machine_key(device))


def machine_rates(device: Any = None) -> Rates:
    """The :class:`Rates` of this machine for ``device`` (default CPU): measured once per
    process (about 0.1 s), stored in ``$ENTK_CACHE_DIR/engine-rates.json`` and reused from
    there by later processes. ``ENTK_CALIBRATION=off`` returns :data:`DEFAULT_RATES`."""
    if os.environ.get("ENTK_CALIBRATION", "").strip().lower() in ("off", "0", "no", "false"):
        return DEFAULT_RATES
    dev = str(device) if device is not None else "cpu"
    try:
        key = _machine_key(dev)
    except Exception:  # noqa: BLE001 - no device information: defaults
        return DEFAULT_RATES
    with _RATES_LOCK:
        if key in _RATES:
            return _RATES[key]
        path = _rates_path()
        stored: dict = {}
        try:
            stored = json.loads(path.read_text())
            if not isinstance(stored, dict):
                stored = {}
        except (OSError, ValueError):
            stored = {}
        entry = stored.get(key)
        rates = None
        if isinstance(entry, dict):
            try:
                g = {str(k): float(v) for k, v in entry["gemm"].items() if float(v) > 0}
                a = {str(k): float(v) for k, v in entry["autograd"].items() if float(v) > 0}
                if g and a:
                    rates = Rates(g, a, "cached", key)
            except (KeyError, TypeError, ValueError, AttributeError):
                rates = None
        if rates is None:
            try:
                rates = _measure_rates(dev)
            except Exception:  # noqa: BLE001 - a device that cannot run the probe: defaults
                rates = DEFAULT_RATES
            if rates.source == "measured":
                stored[key] = {"gemm": rates.gemm, "autograd": rates.autograd, "measured_at": time.time()}
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                    tmp.write_text(json.dumps(stored, indent=1, sort_keys=True))
                    os.replace(tmp, path)
                except OSError:
                    pass   # a read-only cache folder: keep the rates in memory only
        _RATES[key] = rates
        return rates


def eigh_seconds(n: int, rates: Rates, vectors: bool = True) -> float:
    """Rough seconds of a dense symmetric eigendecomposition of an ``n × n`` float64
    matrix (LAPACK divide and conquer): ``9 n³`` (``4 n³`` without vectors) GEMM-rate
    flops, measured on the project's machines (n = 5,000: 7-15 s; n = 24,389: 18 min)."""
    return (9.0 if vectors else 4.0) * float(n) ** 3 / rates.gemm_rate("float64")
