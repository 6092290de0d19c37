"""Memory and cost planner for eNTK computations.

Before any kernel work, :func:`entk_core.engine.kernels.empirical_ntk` asks this module how
much memory and arithmetic each computation path needs for the request, picks the
fastest path that fits the memory budget, and chooses the input chunk size. When
nothing fits, it raises :class:`MemoryBudgetError` with a one-line message saying what
was asked, the estimate, the budget, and what would fit instead. The CLI and the
dashboard call :func:`estimate` to show the cost before running.

Request description
-------------------
``groups`` maps a layer-group name to its parameters, each a :class:`ParamSpec`
(or a tuple ``(name, shape, kind[, positions])``). ``kind`` is one of

* ``"linear_weight"`` -- an ``nn.Linear`` weight of shape ``(out, in)``;
* ``"linear_bias"`` -- its bias, shape ``(out,)``;
* ``"embedding"`` -- an ``nn.Embedding`` weight of shape ``(vocab, dim)``;
* ``"other"`` -- anything without a structured rule (per-parameter Jacobian).

``positions`` is the number of sequence positions (times calls) per example at which
the owning layer is applied (1 for a plain MLP layer).

Paths (``method``)
------------------
* ``"structured"`` -- layer inputs ``a`` and output cotangents ``g`` per class, contracted
  as ``(g·g')(a·a')`` (pairwise over positions) or via per-example gradients
  ``Σ_t g_t a_tᵀ`` (whichever :func:`choose_form` finds cheaper); parameters without
  a rule use the per-parameter Jacobian.
* ``"jacobian"`` -- per-example Jacobians ``(N, C, P_i)`` (``vmap(jacrev)``), contracted by
  einsum (the reference).
* ``"ntk_vp"`` -- NTK-vector products (a vjp and a jvp per output basis vector).

All estimates are rough (factors of ~2). Times assume a dense arithmetic rate
(:data:`RATES`) and are meant for choosing between paths, not as a promise.

Memory budget
-------------
``memory_budget`` (bytes, or a string like ``"4GB"``, ``"512MiB"``); else the
environment variable ``ENTK_MEMORY_BUDGET`` (same syntax); else 50% of the currently
available memory (``MemAvailable`` from ``/proc/meminfo``, or free CUDA memory for a
CUDA device).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "MemoryBudgetError",
    "ParamSpec",
    "Plan",
    "available_memory",
    "choose",
    "choose_form",
    "estimate",
    "estimate_model",
    "format_bytes",
    "parse_bytes",
    "resolve_budget",
]

#: Rough dense arithmetic rates in flop/s used to turn flop counts into seconds.
RATES = {"float64": 5e10, "float32": 1e11, "float16": 1e11, "bfloat16": 1e11}
#: Default fraction of available memory used as the budget.
DEFAULT_FRACTION = 0.5
#: Cap on one kernel tile (so temporaries stay modest and work stays granular).
TILE_CAP_BYTES = 256 * 2**20
METHODS = ("structured", "jacobian", "ntk_vp")
REDUCTIONS = ("full", "trace", "mean", "flat", "block")
KINDS = ("linear_weight", "linear_bias", "embedding", "other")


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
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"memory budget must be a positive number of bytes, got {value!r}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]i?)?[bB]?\s*", str(value))
    if not m:
        raise ValueError(f"cannot parse a byte count from {value!r} (examples: 4GB, 512MiB, 1e9)")
    n = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
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


def available_memory(device: Any = None) -> int:
    """Bytes currently available: free CUDA memory for a CUDA device, else
    ``MemAvailable`` from ``/proc/meminfo`` (falling back to ``os.sysconf``)."""
    dev = str(device) if device is not None else "cpu"
    if dev.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(dev))
        return int(free)
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
        return parse_bytes(env)
    return int(DEFAULT_FRACTION * available_memory(device))


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


def _as_spec(p: ParamSpec | Sequence) -> ParamSpec:
    if isinstance(p, ParamSpec):
        s = p
    else:
        s = ParamSpec(str(p[0]), tuple(int(d) for d in p[1]), *(p[2:]))
    if s.kind not in KINDS:
        raise ValueError(f"unknown parameter kind {s.kind!r} for {s.name}; expected one of {KINDS}")
    return s


def choose_form(kind: str, n_in: int, n_out: int, positions: int, cl: int, cr: int, mode: str) -> str:
    """Pick how a structured layer is contracted: ``"pair"`` (pairwise over positions,
    ``Σ_{t,t'} (G_t G'_{t'}ᵀ) ⊙ (A_t A'_{t'}ᵀ)``) or ``"perex"`` (per-example gradients
    ``Σ_t g_t a_tᵀ`` flattened, then one product), by flops per pair of examples.

    ``kind`` is ``"linear"`` or ``"embedding"``; ``n_in`` the input width (vocabulary size
    for an embedding, +1 when a bias is merged in); ``cl``/``cr`` the class channels on
    each side; ``mode`` ``"outer"`` or ``"diag"``.
    """
    T = max(1, int(positions))
    a_cost = 1 if kind == "embedding" else 2 * n_in
    if mode == "diag":
        pair = T * T * (2 * cl * n_out + a_cost + 1)
        perex = 2 * cl * n_out * n_in
    else:
        pair = T * T * (2 * cl * cr * n_out + a_cost + cl * cr)
        perex = 2 * cl * cr * n_out * n_in
    return "perex" if perex < pair else "pair"


def _mode(reduction: str) -> tuple[str, bool]:
    """(contraction mode, summed-cotangent?) for a reduction."""
    if reduction == "trace":
        return "diag", False
    if reduction == "mean":
        return "outer", True
    return "outer", False


@dataclass
class _Item:
    kind: str  # linear | embedding | bias | other
    group: str
    numel: int
    n_in: int = 0
    n_out: int = 0
    positions: int = 1
    form: str = "flat"


def _items(groups: Mapping[str, Iterable], method: str, cl: int, cr: int, mode: str) -> list[_Item]:
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
                it.form = choose_form("linear", it.n_in, n_out, s.positions, cl, cr, mode)
                items.append(it)
            elif s.kind == "linear_bias":
                if "linear_weight" not in kinds:
                    items.append(_Item("bias", g, s.numel, 1, s.numel, s.positions, "flat"))
            elif s.kind == "embedding":
                it = _Item("embedding", g, s.numel, s.shape[0], s.shape[1], s.positions)
                it.form = choose_form("embedding", s.shape[0], s.shape[1], s.positions, cl, cr, mode)
                items.append(it)
            else:
                items.append(_Item("other", g, s.numel))
    return items


# ---------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """The outcome of :func:`estimate`.

    Attributes:
      method: the chosen path (``None`` if nothing fits).
      chunk_size: inputs per chunk on each side.
      cache: whether the per-chunk factors of the right-hand inputs are kept for reuse.
      bytes: estimated peak bytes of the chosen path (output included).
      output_bytes: bytes of the result tensor(s).
      flops, seconds: estimated arithmetic and a rough time.
      budget: the memory budget in bytes.
      fits: whether ``bytes <= budget``.
      paths: per method ``{"bytes", "flops", "seconds", "chunk_size", "cache", "fits"}``.
      forms: per structured layer group, ``"pair"`` / ``"perex"``.
      layout: how the structured path walks the kernel (``"stream"``, ``"panels"`` or
        ``"chunks"``, see :func:`_layout`); class_block: classes per stream block / panel.
      request: a short description of the request.
      suggestion: what would fit (only when nothing fits).
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: request, chosen path, estimate and budget."""
        if self.method is None:
            return f"{self.request}: nothing fits the budget {format_bytes(self.budget)}; {self.suggestion}"
        return (f"{self.request}: method={self.method}, layout={self.layout}, chunk={self.chunk_size}, "
                f"~{format_bytes(self.bytes)} (output {format_bytes(self.output_bytes)}), "
                f"~{self.flops / 1e9:.3g} GFLOP (~{self.seconds:.3g} s), budget {format_bytes(self.budget)}")


def _itemsize(dtype: Any) -> int:
    name = str(dtype).replace("torch.", "")
    return {"float64": 8, "double": 8, "float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}.get(name, 4)


def _dtype_name(dtype: Any) -> str:
    name = str(dtype).replace("torch.", "")
    return {"double": "float64", "float": "float32", "half": "float16"}.get(name, name)


def _cost(method: str, items: list[_Item], *, n1: int, n2: int, C: int, cl: int, cr: int, mode: str,
          B: int, cache: bool, symmetric: bool, out_bytes: int, s: int, act: float, fp: float,
          _detail: dict | None = None) -> tuple[float, float]:
    """(peak bytes, flops) of one path at chunk size ``B``."""
    B1, B2 = min(B, n1), min(B, n2)
    nrow = math.ceil(n1 / B1)
    # example pairs actually contracted (the reference computes every tile, then symmetrises)
    pairs = n1 * (n1 + B1) / 2 if (symmetric and method != "jacobian") else n1 * n2
    tile = (cl * cr if mode == "outer" else 1) * B1 * B2 * s
    cw = C if method == "jacobian" else max(cl, cr)   # the reference always takes every class's rows
    if method == "ntk_vp":
        P = sum(it.numel for it in items)
        per_basis = (P + (B1 + B2) * act) * s
        nb = cl * B1
        vb = max(1, min(nb, int(max(1.0, 1e9 / per_basis))))
        peak = out_bytes + 3 * tile + vb * per_basis + nb * B1 * C * s + nb * B2 * C * s
        n_pairs = (nrow * (nrow + 1) / 2) if symmetric else nrow * math.ceil(n2 / B2)
        flops = n_pairs * nb * 3 * fp * (B1 + B2)
        return peak, flops
    store = work = 0.0   # elements per example
    contract = 0.0       # flops per example pair
    fac_flops = fp * (1 + 2 * cw)   # one forward, one backward per class channel
    any_other = False
    for it in items:
        if it.kind == "other" or method == "jacobian":
            any_other = True
            store += cw * it.numel
            work += cw * it.numel
            contract += 2 * (cl * cr if mode == "outer" else C) * it.numel
        elif it.kind == "bias":
            store += cw * it.n_out
            contract += 2 * (cl * cr if mode == "outer" else C) * it.n_out
        elif it.form == "perex":
            store += cw * it.n_out * it.n_in
            work += cw * it.positions * it.n_out + it.positions * it.n_in
            contract += 2 * (cl * cr if mode == "outer" else C) * it.n_out * it.n_in
        else:
            T = it.positions
            store += cw * T * it.n_out + T * (1 if it.kind == "embedding" else it.n_in)
            work += cw * T * it.n_out
            a_cost = 1 if it.kind == "embedding" else 2 * it.n_in
            if mode == "outer":
                contract += T * T * (2 * cl * cr * it.n_out + a_cost + cl * cr)
            else:
                contract += T * T * (2 * C * it.n_out + a_cost + 1)
    if any_other:
        work += cw * act   # vmap(jacrev) keeps one set of activations per class channel
        if method == "structured":
            fac_flops += fp * (1 + 2 * cw)
    fwd = B * act * (1 + cw) * s
    peak = out_bytes + 3 * tile + 2 * B * store * s + B * work * s + fwd
    if cache:
        peak += n2 * store * s
    if symmetric:
        n_fac = n1
    else:
        n_fac = n1 + n2 * (1 if cache else nrow)
    flops = n_fac * fac_flops + pairs * contract
    if _detail is not None:
        _detail.update(store=store, work=work)
    return peak, flops


def _layout(items: list[_Item], *, n1: int, n2: int, C: int, cl: int, mode: str, B: int, symmetric: bool,
            out_bytes: int, s: int, act: float, budget: int, store: float, work: float, fits: bool,
            forced_chunk: bool) -> tuple[str, int, int]:
    """How the structured path walks the kernel: ``(layout, peak bytes, class block)``.

    * ``"chunks"``: input chunks, one tile per pair of chunks, upper triangle only when
      symmetric (the general case; the default for class-traced kernels).
    * ``"panels"`` ("full"/"flat" when the factors of all inputs fit): the output is filled
      in contiguous class-major row panels written in place (upper triangle only when
      symmetric), so no tile is copied.
    * ``"stream"`` (class-traced kernels that do not fit in chunks): forward all inputs
      once, then backward one block of classes at a time and accumulate ``Σ_c G_c G_cᵀ``;
      the per-class factors are never all held. Needs the activations of all inputs.
    """
    if forced_chunk:
        return "chunks", 0, 0
    n_sides = 1 if symmetric else 2
    if mode == "diag" and not fits:
        per_class = (n1 + n2) * (act + store / max(1, cl))
        kb = max(1, min(C, int((64 * 2**20 / s) // max(1.0, per_class))))
        acc = sum(it.positions ** 2 for it in items if it.kind in ("linear", "embedding") and it.form == "pair")
        acc = (acc + 1) * n1 * n2 * s
        peak = out_bytes + (n1 + (n2 if not symmetric else 0)) * act * s + kb * per_class * s * 2 + acc
        if peak <= budget:
            return "stream", int(peak), kb
    elif mode == "outer" and cl > 1 and fits:
        rows = max(1, int(TILE_CAP_BYTES // max(1, n1 * C * n2 * s)))   # classes per panel
        panel = min(C, rows) * n1 * C * n2 * s
        peak = out_bytes + n_sides * max(n1, n2) * store * s + B * work * s + B * act * (1 + cl) * s + 2 * panel
        if peak <= budget:
            return "panels", int(peak), min(C, rows)
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
) -> Plan:
    """Estimate bytes and flops of every path for a kernel request and pick one.

    Args:
      n1, n2: numbers of inputs on each side (``n2=None``: the kernel of ``x1`` with
        itself, which is symmetric and computed once per pair of chunks).
      n_classes: ``C``, outputs per input.
      groups: ``group -> [ParamSpec | (name, shape, kind[, positions])]`` (see module doc).
      reduction: ``"full"``, ``"trace"``, ``"mean"``, ``"flat"`` or ``"block"``.
      dtype: compute dtype (``"float32"``, ``torch.float64``...).
      by_layer: one output per group (``empirical_ntk_by_layer``).
      method: ``"auto"`` (the fastest that fits) or one path to cost.
      chunk_size: force the inputs per chunk (default: the largest that fits).
      memory_budget: see :func:`resolve_budget`.
      activation_per_example: elements of saved activations per example for one forward
        (default: a guess from the layer sizes).

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
    groups = {g: [_as_spec(p) for p in ps] for g, ps in groups.items()}
    s = _itemsize(dtype)
    budget = resolve_budget(memory_budget, device)
    mode, summed = _mode(reduction)
    cl = cr = 1 if (summed or reduction == "block") else C
    out_elems = n1 * n2 * (C * C if reduction in ("full", "flat") else 1)
    out_bytes = out_elems * s * (max(1, len(groups)) if by_layer else 1)
    all_specs = [p for ps in groups.values() for p in ps]
    struct_act = sum(p.positions * (sum(p.shape) if p.kind != "other" else 0) for p in all_specs)
    other = sum(p.numel for p in all_specs if p.kind == "other")
    act = float(activation_per_example) if activation_per_example else 2.0 * struct_act + min(other, 10**6) + C
    fp = 0.0
    for p in all_specs:
        fp += 2 * p.positions * p.numel if p.kind in ("linear_weight", "other") else p.positions * p.numel
    fp = max(fp, 1.0)
    rate = RATES.get(_dtype_name(dtype), 1e11)
    desc = (f"{'empirical_ntk_by_layer' if by_layer else 'empirical_ntk'}(N1={n1}, N2={n2}, C={C}, "
            f"reduction={reduction!r}, {_dtype_name(dtype)}, {len(groups)} group{'s' if len(groups) != 1 else ''}, "
            f"{sum(p.numel for p in all_specs)} params)")

    paths: dict[str, dict[str, Any]] = {}
    forms: dict[str, str] = {}
    todo = METHODS if method == "auto" else (method,)
    nmax = max(n1, n2)
    for m in todo:
        items = _items(groups, m, cl, cr, mode)
        if m == "structured":
            forms = {it.group: it.form for it in items if it.kind in ("linear", "embedding")}
        tile_per = (cl * cr if mode == "outer" else 1) * s

        def cost(B: int, cache: bool, _m=m, _items=items) -> tuple[float, float]:
            return _cost(_m, _items, n1=n1, n2=n2, C=C, cl=cl, cr=cr, mode=mode, B=B, cache=cache,
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
                peak, flops = cost(Bb, cache)
                if peak <= budget:
                    best = (Bb, cache, peak, flops)
                    break
            if best is not None:
                break
        if best is not None and symmetric and best[1] and not chunk_size and m == "structured" and best[0] >= nmax:
            # a symmetric kernel in one chunk computes both triangles: split it into a few
            # chunks (tiles stay large enough for efficient GEMMs) and mirror
            k = max(1, min(2, nmax // 200))
            if k > 1:
                Bk = math.ceil(nmax / k)
                pk, fk = cost(Bk, True)
                if pk <= budget:
                    best = (Bk, True, pk, fk)
        if best is None:
            B = cands[-1]
            peak, flops = cost(B, False)
            paths[m] = {"bytes": int(peak), "flops": float(flops), "seconds": flops / rate,
                        "chunk_size": B, "cache": False, "fits": False}
        else:
            B, cache, peak, flops = best
            paths[m] = {"bytes": int(peak), "flops": float(flops), "seconds": flops / rate,
                        "chunk_size": B, "cache": cache, "fits": True}
        if m == "structured":
            det: dict = {}
            B0 = paths[m]["chunk_size"]
            _cost(m, items, n1=n1, n2=n2, C=C, cl=cl, cr=cr, mode=mode, B=B0, cache=True, symmetric=symmetric,
                  out_bytes=out_bytes, s=s, act=act, fp=fp, _detail=det)
            layout, lbytes, cblock = _layout(items, n1=n1, n2=n2, C=C, cl=cl, mode=mode, B=B0,
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
                    budget, True, paths, forms, desc, layout=layout, class_block=cblock)
    cheapest = min(todo, key=lambda m: paths[m]["bytes"])
    p = paths[cheapest]
    plan = Plan(None, p["chunk_size"], False, p["bytes"], out_bytes, p["flops"], p["seconds"],
                budget, False, paths, forms, desc)
    plan.suggestion = _suggest(n1, None if symmetric else n2, C, groups, reduction, dtype, by_layer, method,
                               budget, act)
    return plan


def _fits(n1, n2, C, groups, reduction, dtype, by_layer, method, budget, act) -> Plan:
    return estimate(n1, n2, C, groups, reduction, dtype, by_layer=by_layer, method=method,
                    memory_budget=budget, activation_per_example=act)


def _suggest(n1, n2, C, groups, reduction, dtype, by_layer, method, budget, act) -> str:
    """What would fit: fewer inputs, one layer group, a smaller reduction, or top-k."""
    tips: list[str] = []
    # fewer inputs (scale both sides by the same factor)
    lo, hi = 0, n1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        m2 = None if n2 is None else max(1, round(n2 * mid / n1))
        if _fits(mid, m2, C, groups, reduction, dtype, by_layer, method, budget, act).fits:
            lo = mid
        else:
            hi = mid
    if lo >= 1:
        tips.append(f"at most {lo} inputs" + ("" if n2 is None else " per side"))
    # one layer group
    if len(groups) > 1:
        ok = [g for g in groups if _fits(n1, n2, C, {g: groups[g]}, reduction, dtype, False, method, budget, act).fits]
        if ok:
            tips.append("one layer group (" + ", ".join(repr(g) for g in ok[:4]) + (", ..." if len(ok) > 4 else "") + ")")
    # a smaller reduction
    if reduction in ("full", "flat", "block"):
        for r in ("trace", "mean"):
            p = _fits(n1, n2, C, groups, r, dtype, by_layer, method, budget, act)
            if p.fits:
                tips.append(f"reduction={r!r} (~{format_bytes(p.bytes)})")
                break
    if reduction in ("full", "flat"):
        tips.append("top-k eigenpairs of the flattened kernel via the matrix-free operator "
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


def estimate_model(model: Any, x1: Any, x2: Any = None, *, reduction: str = "full", class_weights: Any = None,
                   block: Any = None, groups: Any = None, method: str = "auto", chunk_size: int | None = None,
                   dtype: Any = None, memory_budget: int | float | str | None = None,
                   by_layer: bool = False) -> Plan:
    """The :class:`Plan` of ``empirical_ntk(model, x1, x2, ...)`` (``by_layer=True``: of
    ``empirical_ntk_by_layer``) with the same arguments, without computing the kernel.
    Runs the model on at most 4 inputs to learn ``C``, the layer structure and the
    activation size. Never raises for budget reasons (see ``plan.fits``)."""
    from .kernels import _Ctx, _no_tf32

    with _no_tf32():
        ctx = _Ctx(model, x1, x2, reduction=reduction, class_weights=class_weights, block=block, groups=groups,
                   method=method, chunk_size=chunk_size, dtype=dtype, by_layer=by_layer, plan=False)
    return estimate(ctx.N1, None if ctx.x2 is None else ctx.N2, ctx.C, ctx._group_specs(), reduction, ctx.dtype,
                    by_layer=by_layer, symmetric=ctx.x2 is None, method=method, chunk_size=chunk_size,
                    memory_budget=memory_budget, device=ctx.device, activation_per_example=ctx.act)
