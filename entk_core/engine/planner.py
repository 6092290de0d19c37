"""Memory and time planner for eNTK computations.

Before any kernel work, :func:`entk_core.engine.kernels.empirical_ntk` asks this module how
much memory and time each computation path needs for the request, picks the **fastest
path that fits** the memory budget, and chooses the input chunk size. When nothing
fits, it raises :class:`MemoryBudgetError` with a one-line message saying what was
asked, the estimate, the budget, and what would fit instead. The CLI and the dashboard
call :func:`entk_core.engine.kernels.estimate` (kernels) or
:func:`entk_core.engine.operators.estimate_top_eigenpairs` (flattened spectra) to show the
cost before running. This module imports nothing else from the engine.

Request description
-------------------
``groups`` maps a layer-group name to its parameters, each a :class:`ParamSpec`
(or a tuple ``(name, shape, kind[, positions])``). ``kind`` is one of

* ``"linear_weight"`` -- a weight acting as ``y = W a`` on ``a`` of width ``prod(shape[1:])``
  (``nn.Linear``; ``nn.Conv1d``/``nn.Conv2d`` on unfolded patches; GPT-2's ``Conv1D``);
* ``"linear_bias"`` -- its bias, shape ``(out,)``;
* ``"embedding"`` -- an ``nn.Embedding`` weight of shape ``(vocab, dim)``;
* ``"elementwise"`` -- a gain or bias acting elementwise (LayerNorm, RMSNorm);
* ``"other"`` -- anything without a structured rule (per-parameter Jacobian).

``positions`` is the number of positions (sequence positions, convolution output
positions, times calls) per example at which the owning layer is applied.

Output channels
---------------
A model output ``(N, *S)`` is seen as ``C = prod(S)`` channels. A request contracts them as
described by a :class:`ChannelShape`: ``groups`` independent diagonal groups, each
producing a ``(kp_left·N1, kp_right·N2)`` block whose entries sum over ``traced``
channels. ``"full"``/``"flat"`` are ``kp = C, traced = 1``; ``"trace"`` is ``kp = 1,
traced = C``; ``"mean"`` and ``"block"`` are ``kp = traced = 1``.

Paths (``method``)
------------------
* ``"structured"`` -- layer inputs ``a`` and output cotangents ``g`` per channel,
  contracted as ``(g·g')(a·a')`` (pairwise over positions) or via per-example gradients
  ``Σ_t g_t a_tᵀ`` (whichever :func:`choose_form` finds cheaper); parameters without a
  rule use the per-parameter Jacobian.
* ``"jacobian"`` -- per-example Jacobians ``(N, C, P_i)`` (``vmap(jacrev)``), contracted by
  einsum (the reference).
* ``"ntk_vp"`` -- NTK-vector products (a vjp and a jvp per output basis vector).

Time
----
Seconds are flop counts divided by rates measured once per machine and device
(:func:`machine_rates`): a tiny GEMM (dense contraction rate per dtype) and a tiny
forward+backward (autograd rate). The measurement takes well under a second and is
cached in ``$ENTK_CACHE_DIR/engine-rates.json`` (default ``./.entk_cache``); set
``ENTK_CALIBRATION=off`` to use the built-in :data:`DEFAULT_RATES` instead. Estimates
are rough (factors of ~2) and are meant for choosing between paths and for telling a
user what to expect.

Memory budget
-------------
``memory_budget`` (bytes, or a string like ``"4GB"``, ``"512MiB"``); else the environment
variable ``ENTK_MEMORY_BUDGET`` (same syntax); else 50% of the currently available memory
(``MemAvailable`` from ``/proc/meminfo``, or free memory of a CUDA device).
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "ChannelShape",
    "DEFAULT_RATES",
    "KINDS",
    "METHODS",
    "MemoryBudgetError",
    "ParamSpec",
    "Plan",
    "REDUCTIONS",
    "Rates",
    "available_memory",
    "choose",
    "choose_form",
    "eigh_seconds",
    "estimate",
    "format_bytes",
    "format_seconds",
    "machine_rates",
    "parse_bytes",
    "resolve_budget",
]

#: The reductions of an ``(N, C)`` output (shorthands; see :mod:`entk_core.engine.kernels`).
REDUCTIONS = ("full", "trace", "mean", "flat", "block")
#: Kernel computation paths.
METHODS = ("structured", "jacobian", "ntk_vp")
KINDS = ("linear_weight", "linear_bias", "embedding", "elementwise", "other")
#: Default fraction of available memory used as the budget.
DEFAULT_FRACTION = 0.5
#: Cap on one kernel tile (so temporaries stay modest and work stays granular).
TILE_CAP_BYTES = 256 * 2**20


class MemoryBudgetError(ValueError):
    """The requested kernel computation does not fit the memory budget.

    The message is a single line: what was asked, the estimate, the budget and what
    would fit instead.
    """


# --------------------------------------------------------------------------- bytes
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(value: int | float | str) -> int:
    """Parse a byte count: ``1000000``, ``"1e9"``, ``"4GB"``, ``"4 GiB"``, ``"512M"``.

    Suffixes without ``i`` are decimal (``GB`` = 10⁹), with ``i`` binary (``GiB`` = 2³⁰).
    """
    if isinstance(value, bool):
        raise ValueError(f"not a byte count: {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0 or value >= 2**63:
            raise ValueError(f"memory budget must be a positive number of bytes below 2**63, got {value!r}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]i?)?[bB]?\s*", str(value))
    if not m:
        raise ValueError(f"cannot parse a byte count from {value!r} (examples: 4GB, 512MiB, 1e9)")
    n = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if not math.isfinite(n) or n >= 2**63:
        raise ValueError(f"byte count too large: {value!r}")
    if n <= 0:
        raise ValueError(f"memory budget must be positive, got {value!r}")
    return int(n)


def format_bytes(n: float) -> str:
    """``2.4 GB`` style (decimal units)."""
    n = float(n)
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.3g} {unit}"
    return f"{int(n)} B"


def format_seconds(s: float) -> str:
    """``0.4 s``, ``12 s``, ``3.5 min``, ``2.1 h``."""
    s = float(s)
    if s < 10:
        return f"{s:.2g} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


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
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
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
        name = _dtype_name(dtype)
        return float(self.gemm.get(name) or self.gemm.get("float32") or 1e11)

    def autograd_rate(self, dtype: Any) -> float:
        name = _dtype_name(dtype)
        return float(self.autograd.get(name) or self.autograd.get("float32") or 2e10)


#: Used when calibration is off (``ENTK_CALIBRATION=off``): 2 server cores of the project's
#: machines (GEMM 190 / 115 GFLOP/s float32 / float64, autograd about a fifth of it).
DEFAULT_RATES = Rates({"float32": 1.9e11, "float64": 1.15e11}, {"float32": 4e10, "float64": 2.5e10}, "default")

_RATES_LOCK = threading.Lock()
_RATES: dict[str, Rates] = {}
RATES_FILE = "engine-rates.json"


def _machine_key(device: str) -> str:
    import torch

    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        cpu = platform.processor()
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
        gemm[_dtype_name(dt)] = 2 * n**3 / best(lambda: a @ b)
        B, d, h = 256, 256, 512
        w1 = torch.randn(h, d, generator=gen, dtype=dt).to(dev).requires_grad_(True)
        w2 = torch.randn(d, h, generator=gen, dtype=dt).to(dev).requires_grad_(True)
        x = torch.randn(B, d, generator=gen, dtype=dt).to(dev)

        def fb():
            with torch.enable_grad(), torch.inference_mode(False):
                y = torch.tanh(x @ w1.T) @ w2.T
                torch.autograd.grad(y.sum(), (w1, w2))

        auto[_dtype_name(dt)] = 6 * B * 2 * d * h / best(fb)
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


# --------------------------------------------------------------------- request spec
@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a request: ``name``, ``shape``, ``kind`` (see module doc) and the
    number of ``positions`` per example at which its layer is applied."""

    name: str
    shape: tuple[int, ...]
    kind: str = "other"
    positions: int = 1

    @property
    def numel(self) -> int:
        return int(math.prod(self.shape))


@dataclass(frozen=True)
class ChannelShape:
    """How output channels are contracted (see the module docstring). ``batch``:
    ``"pair"`` (every pair of examples) or ``"diag"`` (only ``K(x_n, x_n)``)."""

    kp_left: int
    kp_right: int
    traced: int = 1
    groups: int = 1
    batch: str = "pair"

    @property
    def left(self) -> int:
        return self.kp_left * self.traced

    @property
    def right(self) -> int:
        return self.kp_right * self.traced


def shorthand_channels(reduction: str, C: int) -> ChannelShape:
    """The :class:`ChannelShape` of a ``reduction`` shorthand for ``C`` channels."""
    if reduction == "trace":
        return ChannelShape(1, 1, C)
    if reduction in ("mean", "block"):
        return ChannelShape(1, 1, 1)
    return ChannelShape(C, C, 1)


def _as_spec(p: ParamSpec | Sequence) -> ParamSpec:
    if isinstance(p, ParamSpec):
        s = p
    else:
        s = ParamSpec(str(p[0]), tuple(int(d) for d in p[1]), *(p[2:]))
    if s.kind not in KINDS:
        raise ValueError(f"unknown parameter kind {s.kind!r} for {s.name}; expected one of {KINDS}")
    return s


def choose_form(kind: str, n_in: int, n_out: int, positions: int, kp_left: int, kp_right: int,
                traced: int = 1) -> str:
    """Pick how a structured layer is contracted: ``"pair"`` (pairwise over positions,
    ``Σ_{t,t'} (G_t G'_{t'}ᵀ) ⊙ (A_t A'_{t'}ᵀ)``) or ``"perex"`` (per-example gradients
    ``Σ_t g_t a_tᵀ`` flattened, then one product), by flops per pair of examples.

    ``kind`` is ``"linear"``, ``"embedding"`` or ``"elementwise"`` (always ``"perex"``);
    ``n_in`` the input width (vocabulary size for an embedding, +1 when a bias is merged
    in); ``kp_left``/``kp_right`` the kept channels on each side and ``traced`` the
    channels summed over (see :class:`ChannelShape`).
    """
    if kind == "elementwise":
        return "perex"
    T = max(1, int(positions))
    a_cost = 1 if kind == "embedding" else 2 * n_in
    kk = kp_left * kp_right
    pair = T * T * (2 * kk * traced * n_out + a_cost + kk)
    perex = 2 * kk * traced * n_out * n_in
    return "perex" if perex < pair else "pair"


@dataclass
class _Item:
    kind: str  # linear | embedding | elementwise | bias | other
    group: str
    numel: int
    n_in: int = 0
    n_out: int = 0
    positions: int = 1
    form: str = "flat"


def _items(groups: Mapping[str, Iterable], method: str, ch: ChannelShape) -> list[_Item]:
    items: list[_Item] = []
    for g, params in groups.items():
        specs = [_as_spec(p) for p in params]
        if method != "structured":
            items += [_Item("other", g, s.numel) for s in specs]
            continue
        kinds = {s.kind for s in specs}
        for s in specs:
            if s.kind == "linear_weight":
                n_out, n_in = s.shape[0], int(math.prod(s.shape[1:]))
                merged = "linear_bias" in kinds
                it = _Item("linear", g, s.numel + (n_out if merged else 0), n_in + (1 if merged else 0), n_out, s.positions)
                it.form = choose_form("linear", it.n_in, n_out, s.positions, ch.kp_left, ch.kp_right, ch.traced)
                items.append(it)
            elif s.kind == "linear_bias":
                if "linear_weight" not in kinds:
                    items.append(_Item("bias", g, s.numel, 1, s.numel, s.positions, "flat"))
            elif s.kind == "embedding":
                it = _Item("embedding", g, s.numel, s.shape[0], s.shape[1], s.positions)
                it.form = choose_form("embedding", s.shape[0], s.shape[1], s.positions, ch.kp_left, ch.kp_right,
                                      ch.traced)
                items.append(it)
            elif s.kind == "elementwise":
                items.append(_Item("elementwise", g, s.numel, 1, s.numel, s.positions, "perex"))
            else:
                items.append(_Item("other", g, s.numel))
    return items


# ---------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """The outcome of an estimate.

    Attributes:
      method: the chosen path (``None`` if nothing fits).
      chunk_size: inputs per chunk on each side.
      cache: whether the per-chunk factors of the right-hand inputs are kept for reuse.
      bytes: estimated peak bytes of the chosen path (output included).
      output_bytes: bytes of the result tensor(s).
      flops: estimated arithmetic; seconds: estimated wall time (calibrated rates).
      budget: the memory budget in bytes.
      fits: whether ``bytes <= budget``.
      paths: per method ``{"bytes", "flops", "seconds", "chunk_size", "cache", "fits", ...}``.
      forms: per structured layer group, ``"pair"`` / ``"perex"``.
      layout: how the structured path walks the kernel (``"stream"``, ``"panels"`` or
        ``"chunks"``); class_block: channels per stream block / panel.
      request: a short description of the request.
      suggestion: what would fit (only when nothing fits).
      device: where the work runs; rates: ``"measured"``, ``"cached"`` or ``"default"``.
    """

    method: str | None
    chunk_size: int
    cache: bool
    bytes: int
    output_bytes: int
    flops: float
    seconds: float
    budget: int
    fits: bool
    paths: dict[str, dict[str, Any]] = field(default_factory=dict)
    forms: dict[str, str] = field(default_factory=dict)
    request: str = ""
    suggestion: str = ""
    layout: str = "chunks"
    class_block: int = 0
    device: str = "cpu"
    rates: str = "default"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: request, chosen path, estimate and budget."""
        if self.method is None:
            return f"{self.request}: nothing fits the budget {format_bytes(self.budget)}; {self.suggestion}"
        lay = f", layout={self.layout}" if self.layout and self.layout != "chunks" else ""
        return (f"{self.request}: method={self.method}{lay}, chunk={self.chunk_size}, "
                f"~{format_seconds(self.seconds)}, ~{format_bytes(self.bytes)} (output {format_bytes(self.output_bytes)}), "
                f"~{self.flops / 1e9:.3g} GFLOP on {self.device}, budget {format_bytes(self.budget)}")


def _itemsize(dtype: Any) -> int:
    name = str(dtype).replace("torch.", "")
    return {"float64": 8, "double": 8, "float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}.get(name, 4)


def _dtype_name(dtype: Any) -> str:
    name = str(dtype).replace("torch.", "")
    return {"double": "float64", "float": "float32", "half": "float16"}.get(name, name)


def _cost(method: str, items: list[_Item], *, n1: int, n2: int, C: int, ch: ChannelShape,
          B: int, cache: bool, symmetric: bool, out_bytes: int, s: int, act: float, fp: float,
          _detail: dict | None = None) -> tuple[float, float, float]:
    """(peak bytes, autograd flops, contraction flops) of one path at chunk size ``B``."""
    B1, B2 = min(B, n1), min(B, n2)
    nrow = math.ceil(n1 / B1)
    kk = ch.kp_left * ch.kp_right
    ng = max(1, ch.groups)
    # example pairs actually contracted (the reference computes every tile, then symmetrises)
    if ch.batch == "diag":
        pairs = n1 * B1
    elif symmetric and method != "jacobian":
        pairs = n1 * (n1 + B1) / 2
    else:
        pairs = n1 * n2
    tile = kk * B1 * B2 * s
    cw = C if method == "jacobian" else max(ch.left, ch.right)   # the reference takes every channel's rows
    if method == "ntk_vp":
        P = sum(it.numel for it in items)
        per_basis = (P + (B1 + B2) * act) * s
        nb = ch.left * B1
        vb = max(1, min(nb, int(max(1.0, 1e9 / per_basis))))
        peak = out_bytes + 3 * tile + vb * per_basis + nb * B1 * C * s + nb * B2 * C * s
        if ch.batch == "diag":
            n_pairs = nrow
        else:
            n_pairs = (nrow * (nrow + 1) / 2) if symmetric else nrow * math.ceil(n2 / B2)
        fb = ng * n_pairs * nb * 3 * fp * (B1 + B2)
        return peak, fb, 0.0
    store = work = 0.0   # elements per example
    contract = 0.0       # flops per example pair
    fac = fp * (1 + 2 * cw)   # one forward, one backward per channel
    any_other = False
    kt = kk * ch.traced
    for it in items:
        if it.kind == "other" or method == "jacobian":
            any_other = True
            store += cw * it.numel
            work += cw * it.numel
            contract += 2 * kt * it.numel
        elif it.kind == "bias":
            store += cw * it.n_out
            contract += 2 * kt * it.n_out
        elif it.kind == "elementwise":
            store += cw * it.numel
            work += (cw + 1) * it.positions * it.numel
            contract += 2 * kt * it.numel
        elif it.form == "perex":
            store += cw * it.n_out * it.n_in
            work += cw * it.positions * it.n_out + it.positions * it.n_in
            contract += 2 * kt * it.n_out * it.n_in
        else:
            T = it.positions
            store += cw * T * it.n_out + T * (1 if it.kind == "embedding" else it.n_in)
            work += cw * T * it.n_out
            a_cost = 1 if it.kind == "embedding" else 2 * it.n_in
            contract += T * T * (2 * kt * it.n_out + a_cost + kk)
    if any_other:
        work += cw * act   # vmap(jacrev) keeps one set of activations per channel
        if method == "structured":
            fac += fp * (1 + 2 * cw)
    # per-example gradient GEMMs of perex layers (Σ_t g_t a_tᵀ), on the autograd side
    for it in items:
        if method == "structured" and it.kind == "linear" and it.form == "perex":
            fac += 2 * cw * it.positions * it.n_out * it.n_in
    fwd = B * act * (1 + cw) * s
    peak = out_bytes + 3 * tile + 2 * B * store * s + B * work * s + fwd
    if cache:
        peak += n2 * store * s
    if symmetric or ch.batch == "diag":
        n_fac = n1
    else:
        n_fac = n1 + n2 * (1 if cache else nrow)
    if _detail is not None:
        _detail.update(store=store, work=work)
    return peak, ng * n_fac * fac, ng * pairs * contract


def _layout(items: list[_Item], *, n1: int, n2: int, C: int, ch: ChannelShape, B: int, symmetric: bool,
            out_bytes: int, s: int, act: float, budget: int, store: float, work: float, fits: bool,
            forced_chunk: bool) -> tuple[str, int, int]:
    """How the structured path walks the kernel: ``(layout, peak bytes, channel block)``.

    * ``"chunks"``: input chunks, one tile per pair of chunks, upper triangle only when
      symmetric (the general case).
    * ``"panels"`` (several kept channels, when the factors of all inputs fit): the output
      is filled in contiguous channel-major row panels written in place (upper triangle
      only when symmetric), so no tile is copied.
    * ``"stream"`` (traced kernels with one kept channel that do not fit in chunks):
      forward all inputs once, then backward one block of channels at a time and
      accumulate ``Σ_c G_c G_cᵀ``; the per-channel factors are never all held. Needs the
      activations of all inputs.
    """
    if forced_chunk or ch.batch != "pair" or ch.groups != 1:
        return "chunks", 0, 0
    n_sides = 1 if symmetric else 2
    if ch.kp_left == 1 and ch.kp_right == 1 and ch.traced > 1 and not fits:
        per_class = (n1 + n2) * (act + store / max(1, ch.left))
        kb = max(1, min(C, int((64 * 2**20 / s) // max(1.0, per_class))))
        acc = sum(it.positions ** 2 for it in items if it.kind in ("linear", "embedding") and it.form == "pair")
        acc = (acc + 1) * n1 * n2 * s
        peak = out_bytes + (n1 + (n2 if not symmetric else 0)) * act * s + kb * per_class * s * 2 + acc
        if peak <= budget:
            return "stream", int(peak), kb
    elif ch.kp_left > 1 and fits:
        K = ch.kp_left
        rows = max(1, int(TILE_CAP_BYTES // max(1, n1 * ch.kp_right * n2 * s)))   # kept channels per panel
        panel = min(K, rows) * n1 * ch.kp_right * n2 * s
        peak = out_bytes + n_sides * max(n1, n2) * store * s + B * work * s + B * act * (1 + ch.left) * s + 2 * panel
        if peak <= budget:
            return "panels", int(peak), min(K, rows)
    return "chunks", 0, 0


def estimate(
    n1: int,
    n2: int | None,
    n_classes: int,
    groups: Mapping[str, Iterable],
    reduction: str = "full",
    dtype: Any = "float32",
    *,
    by_layer: bool = False,
    symmetric: bool | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
    memory_budget: int | float | str | None = None,
    device: Any = None,
    activation_per_example: float | None = None,
    channels: ChannelShape | None = None,
    out_elems: int | None = None,
) -> Plan:
    """Estimate bytes and seconds of every path for a kernel request and pick one.

    Args:
      n1, n2: numbers of inputs on each side (``n2=None``: the kernel of ``x1`` with
        itself, which is symmetric and computed once per pair of chunks).
      n_classes: ``C``, output channels per input (``prod(S)`` for an ``(N, *S)`` output).
      groups: ``group -> [ParamSpec | (name, shape, kind[, positions])]`` (see module doc).
      reduction: ``"full"``, ``"trace"``, ``"mean"``, ``"flat"`` or ``"block"`` (used when
        ``channels`` is not given, and in the description).
      dtype: compute dtype (``"float32"``, ``torch.float64``...).
      by_layer: one output per group (``empirical_ntk_by_layer``).
      method: ``"auto"`` (the fastest that fits) or one path to cost.
      chunk_size: force the inputs per chunk (default: the largest that fits).
      memory_budget: see :func:`resolve_budget`.
      device: where the work runs (memory and calibrated rates of that device).
      activation_per_example: elements of saved activations per example for one forward
        (default: a guess from the layer sizes).
      channels: the channel contraction (default: the shorthand's, see :class:`ChannelShape`).
      out_elems: elements of one output kernel (default: from ``channels``).

    Returns:
      a :class:`Plan`; ``plan.fits`` is ``False`` (and ``plan.suggestion`` says what would
      fit) when no path fits. Never raises for budget reasons: see :func:`choose`.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    if method not in ("auto",) + METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {('auto',) + METHODS}")
    if symmetric is None:
        symmetric = n2 is None
    n2 = n1 if n2 is None else int(n2)
    n1, C = int(n1), int(n_classes)
    ch = channels or shorthand_channels(reduction, C)
    groups = {g: [_as_spec(p) for p in ps] for g, ps in groups.items()}
    s = _itemsize(dtype)
    budget = resolve_budget(memory_budget, device)
    rates = machine_rates(device)
    if out_elems is None:
        out_elems = (n1 if ch.batch == "diag" else n1 * n2) * ch.kp_left * ch.kp_right * ch.groups
    out_bytes = out_elems * s * (max(1, len(groups)) if by_layer else 1)
    all_specs = [p for ps in groups.values() for p in ps]
    struct_act = sum(p.positions * (sum(p.shape) if p.kind != "other" else 0) for p in all_specs)
    other = sum(p.numel for p in all_specs if p.kind == "other")
    act = float(activation_per_example) if activation_per_example else 2.0 * struct_act + min(other, 10**6) + C
    fp = 0.0
    for p in all_specs:
        fp += 2 * p.positions * p.numel if p.kind in ("linear_weight", "other") else p.positions * p.numel
    fp = max(fp, 1.0)
    gemm, auto = rates.gemm_rate(dtype), rates.autograd_rate(dtype)
    dev = str(device) if device is not None else "cpu"
    desc = (f"{'empirical_ntk_by_layer' if by_layer else 'empirical_ntk'}(N1={n1}, N2={n2}, C={C}, "
            f"reduction={reduction!r}, {_dtype_name(dtype)}, {len(groups)} group{'s' if len(groups) != 1 else ''}, "
            f"{sum(p.numel for p in all_specs)} params)")

    def seconds(fb: float, ct: float) -> float:
        return fb / auto + ct / gemm

    paths: dict[str, dict[str, Any]] = {}
    forms: dict[str, str] = {}
    todo = METHODS if method == "auto" else (method,)
    nmax = max(n1, n2)
    for m in todo:
        items = _items(groups, m, ch)
        if m == "structured":
            forms = {it.group: it.form for it in items if it.kind in ("linear", "embedding")}
        tile_per = ch.kp_left * ch.kp_right * s

        def cost(B: int, cache: bool, _m=m, _items=items) -> tuple[float, float, float]:
            return _cost(_m, _items, n1=n1, n2=n2, C=C, ch=ch, B=B, cache=cache,
                         symmetric=symmetric, out_bytes=out_bytes, s=s, act=act, fp=fp)

        best = None
        if chunk_size:
            cands = [max(1, min(int(chunk_size), nmax))]
        else:
            cap = max(1, int(math.sqrt(TILE_CAP_BYTES / tile_per)))
            hi = max(1, min(nmax, cap, 64 if m == "ntk_vp" else nmax))
            cands = sorted({hi} | {max(1, hi >> k) for k in range(1, 16)}, reverse=True)
        for cache in ((False,) if m == "ntk_vp" else (True, False)):
            for B in cands:
                # balance chunks: same number of chunks, equal sizes
                nch = math.ceil(nmax / B)
                Bb = math.ceil(nmax / nch)
                peak, fb, ct = cost(Bb, cache)
                if peak <= budget:
                    best = (Bb, cache, peak, fb, ct)
                    break
            if best is not None:
                break
        if (best is not None and symmetric and best[1] and not chunk_size and m == "structured"
                and best[0] >= nmax and ch.batch == "pair"):
            # a symmetric kernel in one chunk computes both triangles: split it into a few
            # chunks (tiles stay large enough for efficient GEMMs) and mirror
            k = max(1, min(2, nmax // 200))
            if k > 1:
                Bk = math.ceil(nmax / k)
                pk, fk, ck = cost(Bk, True)
                if pk <= budget:
                    best = (Bk, True, pk, fk, ck)
        if best is None:
            B = cands[-1]
            peak, fb, ct = cost(B, False)
            paths[m] = {"bytes": int(peak), "flops": float(fb + ct), "seconds": seconds(fb, ct),
                        "chunk_size": B, "cache": False, "fits": False}
        else:
            B, cache, peak, fb, ct = best
            paths[m] = {"bytes": int(peak), "flops": float(fb + ct), "seconds": seconds(fb, ct),
                        "chunk_size": B, "cache": cache, "fits": True}
        if m == "structured":
            det: dict = {}
            B0 = paths[m]["chunk_size"]
            _cost(m, items, n1=n1, n2=n2, C=C, ch=ch, B=B0, cache=True, symmetric=symmetric,
                  out_bytes=out_bytes, s=s, act=act, fp=fp, _detail=det)
            layout, lbytes, cblock = _layout(items, n1=n1, n2=n2, C=C, ch=ch, B=B0,
                                             symmetric=symmetric, out_bytes=out_bytes, s=s, act=act,
                                             budget=budget, store=det["store"], work=det["work"],
                                             fits=paths[m]["fits"], forced_chunk=bool(chunk_size))
            paths[m].update(layout=layout, class_block=cblock)
            if layout != "chunks":
                paths[m].update(bytes=lbytes, fits=True)

    fitting = [m for m in todo if paths[m]["fits"]]
    if fitting:
        chosen = min(fitting, key=lambda m: (paths[m]["seconds"], METHODS.index(m)))
        p = paths[chosen]
        layout, cblock = p.get("layout", "chunks"), p.get("class_block", 0)
        return Plan(chosen, p["chunk_size"], p["cache"], p["bytes"], out_bytes, p["flops"], p["seconds"],
                    budget, True, paths, forms, desc, layout=layout, class_block=cblock, device=dev,
                    rates=rates.source)
    cheapest = min(todo, key=lambda m: paths[m]["bytes"])
    p = paths[cheapest]
    plan = Plan(None, p["chunk_size"], False, p["bytes"], out_bytes, p["flops"], p["seconds"],
                budget, False, paths, forms, desc, device=dev, rates=rates.source)
    plan.suggestion = _suggest(n1, None if symmetric else n2, C, groups, reduction, dtype, by_layer, method,
                               budget, act, ch, device)
    return plan


def _fits(n1, n2, C, groups, reduction, dtype, by_layer, method, budget, act, ch, device) -> Plan:
    return estimate(n1, n2, C, groups, reduction, dtype, by_layer=by_layer, method=method,
                    memory_budget=budget, activation_per_example=act, channels=ch, device=device)


def _suggest(n1, n2, C, groups, reduction, dtype, by_layer, method, budget, act, ch, device) -> str:
    """What would fit: fewer inputs, one layer group, a smaller reduction, or top-k."""
    tips: list[str] = []
    # fewer inputs (scale both sides by the same factor)
    lo, hi = 0, n1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        m2 = None if n2 is None else max(1, round(n2 * mid / n1))
        if _fits(mid, m2, C, groups, reduction, dtype, by_layer, method, budget, act, ch, device).fits:
            lo = mid
        else:
            hi = mid
    if lo >= 1:
        tips.append(f"at most {lo} inputs" + ("" if n2 is None else " per side"))
    # one layer group
    if len(groups) > 1:
        ok = [g for g in groups
              if _fits(n1, n2, C, {g: groups[g]}, reduction, dtype, False, method, budget, act, ch, device).fits]
        if ok:
            tips.append("one layer group (" + ", ".join(repr(g) for g in ok[:4]) + (", ..." if len(ok) > 4 else "") + ")")
    # a smaller reduction
    if ch.kp_left > 1:
        for r in ("trace", "mean"):
            p = _fits(n1, n2, C, groups, r, dtype, by_layer, method, budget, act, shorthand_channels(r, C), device)
            if p.fits:
                tips.append(f"reduction={r!r} (~{format_bytes(p.bytes)})")
                break
        if reduction in ("full", "flat"):
            tips.append("top-k eigenpairs of the flattened kernel without forming it "
                        "(entk_core.engine.operators.flat_top_eigenpairs)")
    return "what would fit: " + ("; or ".join(tips) if tips else "nothing at this size; raise the budget")


def choose(*args: Any, **kwargs: Any) -> Plan:
    """:func:`estimate`, raising :class:`MemoryBudgetError` (one line) when nothing fits."""
    plan = estimate(*args, **kwargs)
    if not plan.fits:
        raise MemoryBudgetError(
            f"{plan.request} needs about {format_bytes(plan.bytes)} (output {format_bytes(plan.output_bytes)}) "
            f"but the memory budget is {format_bytes(plan.budget)}; {plan.suggestion}"
        )
    return plan
