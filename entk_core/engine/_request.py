"""One kernel request after validation and model inspection (a private module of
:mod:`entk_core.engine`).

:class:`Ctx` is what every path reads: the inputs (:class:`~._inputs.Batch`, cast to the
compute device and dtype), a private copy of the model, the selected parameters and their
layer groups, the structured layers whose rules were checked (:mod:`._layers`), the output
channels and how they are contracted (:mod:`._channels`), and the planner's choice of path,
chunk size and layout. It also runs the model: :meth:`Ctx.forward` (outputs ``(B, C)``) and
:meth:`Ctx.capture` (forward hooks on the structured layers).

Layer groups: :func:`param_group` maps ``net.0.weight -> net.0``; :func:`layer_groups`
lists them in parameter registration order.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from . import planner
from ._channels import Channels
from ._guards import (autograd_on, check_finite_inputs, check_finite_model, error_reason, log_once, private_model,
                      refuse_or_warn_train_mode)
from ._inputs import Batch, call_model, model_output
from ._layers import Layer, check_layers, find_layers
from ._profile import ModelProfile, profile_model
from .costs import ChannelShape, ParamSpec, choose_form
from .devices import resolve_device
from .info import KernelInfo
from .machine import measuring_seconds
from .planner import METHODS as PATHS
from .planner import REDUCTIONS

__all__ = ["ALL", "JACREV_HAZARD", "METHODS", "Ctx", "ForwardADError", "LayerRuleError", "ProgressFn", "fastest_other",
           "layer_groups", "param_group", "safe_chunk"]

ALL = "__all__"
"""The output key of a kernel that is not split by layer group."""
METHODS = ("auto",) + PATHS
ProgressFn = Callable[[int, int, str], None]

JACREV_HAZARD = ("vmap(jacrev) over a chunk of as many examples as output rows gives wrong Jacobians for some "
                 "modules (nn.PReLU; a PyTorch bug)")
"""Why a chunk of ``vmap(jacrev)`` never has as many examples as ``jacrev`` has output rows.

Found with ``nn.PReLU`` (torch 2.13): its backward (``aten::_prelu_kernel_backward``)
batches two nested vmap levels -- the examples, and ``jacrev``'s basis of output rows --
as if they were one. When the two sizes differ it raises a shape error (the engine then
loops over examples, recorded in ``info.loops``); when they are equal it silently mixes
examples with output rows (relative errors 0.5-7 in the Jacobian; one vmap level, or a
chunk of one example, is right). The guard costs nothing: the chunk is lowered by one
(:meth:`Ctx._avoid_hazardous_chunk`), or a chunk of that size is split in two
(:func:`~._factors.per_example_jacobian`)."""


def fastest_other(paths: dict[str, dict], excluded) -> str:
    """The fastest path of a plan's ``paths`` that fits, other than the ``excluded`` ones
    (``"structured"`` when none fits: the planner then says what would)."""
    ok = [m for m in PATHS if m not in excluded and paths[m]["fits"]]
    return min(ok, key=lambda m: paths[m]["seconds"]) if ok else "structured"


def safe_chunk(chunk: int, rows: set[int]) -> int:
    """``chunk`` lowered until it is none of ``rows`` (> 1): see :data:`JACREV_HAZARD`."""
    rows = {r for r in rows if r > 1}
    while chunk in rows and chunk > 1:
        chunk -= 1
    return chunk


class LayerRuleError(RuntimeError):
    """A structured layer received, on some chunk, an input its rule does not cover
    (caught by :meth:`Ctx.run_with_fallbacks`: the layer falls back to the Jacobian path)."""

    def __init__(self, layer: str, reason: str):
        super().__init__(f"layer {layer!r}: {reason}")
        self.layer, self.reason = layer, reason


class ForwardADError(RuntimeError):
    """Forward-mode AD failed on the ntk_vp path (caught by :meth:`Ctx.run_with_fallbacks`)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def param_group(name: str) -> str:
    """The layer group of a parameter: the dotted path of its owning module
    (``"net.0.weight" -> "net.0"``); a root parameter keeps its name (``"W" -> "W"``)."""
    return name.rsplit(".", 1)[0] if "." in name else name


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """``{group: [parameter names]}`` in parameter registration order."""
    out: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        out.setdefault(param_group(name), []).append(name)
    return out


def _one_time_imports() -> None:
    """Import what torch loads lazily on a process's first request (``torch._dynamo``, about
    1 s on 2 cores, pulled in by the first ``detach`` under a functional transform) before a
    request's setup is timed: the setup is part of every estimate, the import happens once."""
    import torch._dynamo  # noqa: F401


class Ctx:
    """Everything about one kernel request, after validation and model inspection.

    Built in named steps, each reading only what the steps before it set:

    1. :meth:`_check_arguments` -- reduction, method, chunk size (nothing is touched yet);
    2. :meth:`_take_inputs` -- ``x1``/``x2`` as batches, the compute ``device`` and ``dtype``;
    3. :meth:`_protect_model` -- train mode, finite weights, the private copy ``model``;
    4. :meth:`_cast_inputs` -- inputs on the device in the dtype, ``N1``/``N2``;
    5. :meth:`_select_parameters` -- ``groups``, ``names``, ``base``, ``shapes``;
    6. :meth:`_inspect` -- the output shape ``S``, the checked structured ``layers`` and the
       ``fallback`` parameters, the activation size ``act``;
    7. :meth:`_set_channels` -- ``C``, class weights ``w``, ``channels``, each layer's form;
    8. :meth:`_choose_path` -- the planner's ``method``, ``chunk``, ``cache``, ``layout``
       (never a ``vmap(jacrev)`` chunk of as many examples as output rows:
       :data:`JACREV_HAZARD`; ``ntk_vp`` replaced where forward-mode AD fails);
    9. :meth:`set_group` (group 0) -- ``left``/``right`` sides and ``mirror``;
    10. :meth:`_record` -- :class:`~entk_core.engine.info.KernelInfo` and the fallback log.

    At run time, :meth:`run_with_fallbacks` repeats the work after a layer that breaks its
    rule on a later chunk (:meth:`drop_layer`) or an ntk_vp path whose forward-mode AD fails
    (:meth:`exclude_path`); both plan again from step 8.

    ``plan=False`` (estimates, top-k) skips the planner: the structured path in one chunk.
    """

    def __init__(self, model: nn.Module, x1: Any, x2: Any = None, *, reduction: str | None = "full",
                 trace_axes=None, diagonal_axes=None, class_weights=None, block=None, groups=None,
                 method: str = "auto", chunk_size=None, dtype=None, device=None, memory_budget=None,
                 progress: ProgressFn | None = None, by_layer: bool = False, plan: bool = True,
                 allow_train_mode: bool = True, check_finite: bool = True, warn_stacklevel: int = 4):
        self.info = KernelInfo()
        _one_time_imports()
        self._t0 = time.perf_counter()
        self._m0 = measuring_seconds()
        self.progress = progress
        self.by_layer = by_layer
        self._check_arguments(model, reduction, trace_axes, diagonal_axes, method, chunk_size)
        b1, b2 = self._take_inputs(model, x1, x2, dtype, device)
        # warn_stacklevel counts from __init__; the warning is issued two calls deeper
        self._protect_model(model, allow_train_mode, check_finite, warn_stacklevel + 2)
        self._cast_inputs(b1, b2, check_finite)
        self._select_parameters(groups)
        self.layers: list[Layer] = []
        self.fallback: list[str] = list(self.names)
        self.reject: dict[str, str] = {}
        if method in ("auto", "structured"):
            self.layers, self.reject = find_layers(self.model, self.names, self.group_of)
            self._sync_fallback()
        self.clone_inputs = False
        with autograd_on():
            self.S, self.act = self._inspect()
        self._set_channels(class_weights, reduction, trace_axes, diagonal_axes, block)
        self.checked_layers = list(self.layers)
        self.excluded: dict[str, str] = {}
        self.corrections: dict[str, float] = {}   # from a timed pilot (see adopt_pilot)
        self._plan_args = (plan, method, chunk_size, memory_budget)
        self.model_name = type(model).__name__
        self._choose_path(*self._plan_args)
        self.set_group(0)
        self._record()

    # ------------------------------------------------------------------- steps
    def _check_arguments(self, model, reduction, trace_axes, diagonal_axes, method, chunk_size) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if trace_axes is not None or diagonal_axes is not None:
            reduction = None
        elif reduction is None:
            reduction = "full"
        if reduction is not None and reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        if chunk_size is not None and int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.reduction, self.method_req = reduction, method

    def _take_inputs(self, model: nn.Module, x1: Any, x2: Any, dtype, device) -> tuple[Batch, Batch | None]:
        b1 = Batch(x1, "x1")
        if x2 is x1:
            x2 = None
        b2 = None if x2 is None else Batch(x2, "x2")
        if b2 is not None and b2.signature() != b1.signature():
            raise ValueError(f"x1 and x2 must have the same structure and per-example shapes; "
                             f"x1 is {b1.describe()}, x2 is {b2.describe()}")
        self.device = resolve_device(device, default=b1.leaves[0].device)
        fdt = [p.dtype for p in model.parameters() if p.is_floating_point()]
        self.dtype = dtype if dtype is not None else (fdt[0] if fdt else torch.get_default_dtype())
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch dtype, got {self.dtype}")
        if self.device.type == "mps" and self.dtype == torch.float64:
            raise ValueError("MPS has no float64; pass dtype=torch.float32 or use the CPU")
        self.info.device, self.info.dtype = str(self.device), str(self.dtype).replace("torch.", "")
        return b1, b2

    def _protect_model(self, model: nn.Module, allow_train_mode: bool, check_finite: bool, stacklevel: int) -> None:
        trained = refuse_or_warn_train_mode(model, allow_train_mode, stacklevel)
        if trained:
            self.info.train_mode = trained
        if check_finite:
            check_finite_model(model)
        self.model, self.info.model_copy = private_model(model, self.device, self.dtype)
        if self.model is not model:
            self.model.eval()
        self.has_rnn = any(isinstance(m, nn.RNNBase) for m in self.model.modules())

    def _cast_inputs(self, b1: Batch, b2: Batch | None, check_finite: bool) -> None:
        def cast(t: torch.Tensor) -> torch.Tensor:
            t = t.to(self.device)
            if t.is_floating_point():
                t = t.to(self.dtype)
            return t.clone() if t.is_inference() else t

        with autograd_on():
            self.x1 = b1.map(cast)
            self.x2 = None if b2 is None else b2.map(cast)
        if check_finite:
            check_finite_inputs(self.x1)
            if self.x2 is not None:
                check_finite_inputs(self.x2)
        self.N1 = self.x1.n
        self.N2 = self.N1 if self.x2 is None else self.x2.n
        self.raw1, self.raw2 = b1, b2          # as given (the spot check's reference casts them itself)

    def _select_parameters(self, groups: Iterable[str] | str | None) -> None:
        all_groups = layer_groups(self.model)
        if groups is None:
            sel = list(all_groups)
        else:
            sel = [groups] if isinstance(groups, str) else list(groups)
            unknown = [g for g in sel if g not in all_groups]
            if unknown:
                raise ValueError(f"unknown layer group(s) {unknown}; known: {list(all_groups)}")
            if not sel:
                raise ValueError("groups selects no parameters")
        selset = set(sel)
        self.groups = [g for g in all_groups if g in selset]
        named = dict(self.model.named_parameters())
        self.names = [n for n, _ in self.model.named_parameters() if param_group(n) in selset]
        if not self.names:
            raise ValueError("the model has no parameters to differentiate")
        self.group_of = {n: param_group(n) for n in self.names}
        with autograd_on():
            self.base = {n: (p.detach().clone() if p.is_inference() else p.detach()) for n, p in named.items()}
            for n, bf in self.model.named_buffers():
                if bf.is_inference():
                    self.base[n] = bf.detach().clone()
        self.shapes = {n: tuple(named[n].shape) for n in self.names}

    def _inspect(self) -> tuple[tuple[int, ...], float]:
        """Forward a few examples: output shape ``S``, checks of the structured rules
        (:func:`~._layers.check_layers`; failing layers fall back), and saved activations per
        example (for the planner)."""
        xs = self.x1.slice(0, min(4, self.N1))
        b = xs.n
        pnames = self.struct_params()
        params = self.params(pnames if self.layers else self.names)
        pptr = {t.data_ptr() for t in self.base.values()}
        saved = [0]

        def pack(t):
            if t.data_ptr() not in pptr:
                saved[0] += t.numel()
            return t

        with torch.enable_grad(), self.capture(self.layers) as rec, \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            raw = call_model(self.model, params, xs)
        out = model_output(raw)
        if out.ndim < 1 or out.shape[0] != b:
            raise ValueError(f"the model must map (N, ...) inputs to (N, *S) outputs; got {tuple(out.shape)} for N={b}")
        if not out.is_floating_point():
            raise ValueError(f"the model's output must be floating point, got {out.dtype}")
        S = tuple(out.shape[1:])
        outf = out.reshape(b, -1)
        act = max(1.0, saved[0] / b)
        if not self.layers:
            return S, act
        if any(a._version != v for calls in rec for (a, v, _) in calls):
            self.clone_inputs = True
        bad = check_layers(self.layers, rec, outf, params, self.shapes, self.base, self.dtype)
        for L in self.layers:
            if id(L) in bad:
                for n in L.param_names():
                    self.reject[n] = bad[id(L)]
        self.layers = [L for L in self.layers if id(L) not in bad]
        self._sync_fallback()
        return S, act

    def _set_channels(self, class_weights, reduction, trace_axes, diagonal_axes, block) -> None:
        self.C = C = int(math.prod(self.S)) if self.S else 1
        if class_weights is None:
            self.w = torch.ones(C, dtype=self.dtype, device=self.device)
        else:
            self.w = (class_weights.detach() if isinstance(class_weights, torch.Tensor)
                      else torch.as_tensor(np.asarray(class_weights, dtype=np.float64))).to(self.device, self.dtype).reshape(-1)
            if self.w.numel() != C:
                raise ValueError(f"class_weights has {self.w.numel()} entries, the model has C={C} output channels")
            if not torch.isfinite(self.w).all():
                raise ValueError("class_weights must be finite")
        ch = self.channels = Channels(self.S, self.reduction, trace_axes, diagonal_axes, block, self.N1, self.N2,
                                      rectangular=self.x2 is not None)
        left, right = ch.groups[0]
        kpl = left.kp if left.channels is not None else 1
        kpr = right.kp if right.channels is not None else 1
        self.ch_shape = ChannelShape(kpl, kpr, left.tr if left.channels is not None else 1,
                                     len(ch.groups), "pair" if ch.batch == "pair" else "diag")
        for L in self.layers:
            kind = "embedding" if L.kind == "embedding" else ("elementwise" if L.kind == "elementwise" else "linear")
            L.form = choose_form(kind, L.merged_in if L.kind in ("linear", "conv") else L.n_in, L.n_out,
                                 L.positions, kpl, kpr, self.ch_shape.traced)

    def _choose_path(self, plan: bool, method: str, chunk_size, memory_budget) -> None:
        self.plan = None
        self.adjustments: list[dict] = []
        self.layers = list(self.checked_layers)
        self._sync_fallback()
        if plan:
            args, kw = self._planner_request(chunk_size, memory_budget)
            if method in self.excluded or (method == "auto" and any(m in PATHS for m in self.excluded)):
                # a path that cannot run on this model (see exclude_path): the fastest of the others
                method = fastest_other(planner.estimate(*args, method="auto", **kw).paths, self.excluded)
            self.plan = planner.choose(*args, method=method, **kw)
            self.method = self.plan.method
            self.chunk = self.plan.chunk_size
            self.cache = self.plan.cache
            self.layout = self.plan.layout
            self.work_seconds = float(self.plan.seconds)   # the kernel work alone (a pilot's estimate)
            self.plan.seconds += self.setup_seconds()
            self.info.estimate = self.plan.summary()
            self.info.estimated_seconds = float(self.plan.seconds)
        else:
            self.method = "structured" if method == "auto" or method in self.excluded else method
            self.chunk = int(chunk_size) if chunk_size else max(self.N1, self.N2)
            self.cache = True
            self.layout = "chunks"
        self.buffers = None
        if self.method != "structured":
            self.layers, self.fallback = [], list(self.names)
        self._avoid_hazardous_chunk(chunk_size)
        # The reference ("jacobian") follows the tutorial: every tile is computed, then the
        # result is symmetrised exactly; the other paths compute each pair of chunks once.
        self.symmetrize_after = (self.x2 is None and self.method == "jacobian" and self.channels.batch == "pair"
                                 and self.channels.groups[0][0] == self.channels.groups[0][1])
        if plan and self.method == "ntk_vp" and "ntk_vp" not in self.excluded:
            why = self.forward_ad_failure()
            if why is not None:
                self.exclude_path("ntk_vp", f"forward-mode AD is not supported by this model ({why})")

    def _planner_request(self, chunk_size, memory_budget, n: int | None = None) -> tuple[tuple, dict]:
        """The planner's arguments for this request (``n``: for its first ``n`` inputs)."""
        n1 = self.N1 if n is None else min(n, self.N1)
        n2 = None if self.x2 is None else (self.N2 if n is None else min(n, self.N2))
        out = self.channels.out_shape()
        if n is not None:   # the batch axes of the output shrink with the inputs
            scale = (n1 * (n1 if n2 is None else n2)) / (self.N1 * (self.N1 if self.x2 is None else self.N2))
            out_elems = int(math.prod(out) * (n1 / self.N1 if self.channels.batch == "diag" else scale))
        else:
            out_elems = int(math.prod(out))
        kw = dict(by_layer=self.by_layer, symmetric=self.x2 is None, chunk_size=chunk_size,
                  memory_budget=memory_budget, device=self.device, activation_per_example=self.act,
                  channels=self.ch_shape, out_elems=out_elems, profile=self.model_profile(),
                  corrections=self.corrections or None)
        return (n1, n2, self.C, self.group_specs(), self.reduction or "full", self.dtype), kw

    def estimate_head(self, n: int, method: str) -> float:
        """Estimated seconds of ``method``'s kernel work on the first ``n`` inputs in one chunk
        (what a pilot of :mod:`._pilot` would take)."""
        args, kw = self._planner_request(n, self._plan_args[3], n=n)
        kw["corrections"] = None
        return float(planner.estimate(*args, **{**kw, "method": method}).seconds)

    def setup_seconds(self) -> float:
        """Seconds spent so far on this request before any kernel work (checks, the private
        model copy, the layer checks, the profile): part of every estimate of the call. Time
        spent measuring this machine's rates (:func:`~.machine.machine_rates`, once a day) is
        left out."""
        return time.perf_counter() - self._t0 - (measuring_seconds() - self._m0)

    def model_profile(self) -> ModelProfile | None:
        """The model's forward and backward counts on these inputs (kernels, flops, bytes;
        :func:`~._profile.profile_model`), measured once; ``None`` where counting fails (the
        planner then guesses them from the parameters)."""
        if not hasattr(self, "_profile"):
            def run(b: int):
                params = self.params(self.names)
                return self.forward(params, self.x1.slice(0, b)), [params[n] for n in self.names]

            try:
                with autograd_on():
                    self._profile = profile_model(run, self.N1)
            except Exception as e:  # noqa: BLE001 - an operation the counter cannot follow: guessed
                log_once(f"profile:{self.model_name}", f"eNTK: the planner guesses {self.model_name}'s costs "
                                                       f"({error_reason(e)})")
                self._profile = None
        return self._profile

    def jacrev_rows(self, method: str | None = None) -> set[int]:
        """The numbers of output rows ``vmap(jacrev)`` differentiates at once on ``method``'s
        path (default: the chosen one; see :data:`JACREV_HAZARD`): ``C`` on the jacobian
        path, each side's channels for the fallback parameters of the structured path."""
        method = method or self.method
        if method == "jacobian":
            return {self.C}
        fallback = self.fallback if method == self.method else \
            [n for n in self.names if n not in {nm for L in self.checked_layers for nm in L.param_names()}]
        if method == "structured" and fallback:
            return {s.width() for g in self.channels.groups for s in g}
        return set()

    def _avoid_hazardous_chunk(self, chunk_size) -> None:
        """Never a chunk of ``vmap(jacrev)`` equal to its number of output rows (see
        :data:`JACREV_HAZARD`): the planner's or the caller's ``chunk_size`` is lowered
        (:func:`safe_chunk`) and the change recorded. (Chunks that :func:`~._inputs.ranges`
        cuts smaller are split again where they are used:
        :func:`~._factors.per_example_jacobian`.)"""
        old = self.chunk
        self.chunk = safe_chunk(old, self.jacrev_rows())
        if self.chunk == old:
            return
        if self.plan is not None:
            self.plan.chunk_size = self.chunk
            self.info.estimate = self.plan.summary()
        self.adjustments.append({"what": f"chunk_size {old} -> {self.chunk}",
                                 "by": "the caller" if chunk_size else "the planner", "reason": JACREV_HAZARD})

    def forward_ad_failure(self) -> str | None:
        """``None`` when forward-mode AD runs on one example (the ntk_vp path needs it), else
        why not (``"NotImplementedError: Trying to use forward AD with ..."``)."""
        base = self.params()
        sub = {n: base[n] for n in self.names}
        x = self.x1.slice(0, 1)
        try:
            with torch.no_grad():
                torch.func.jvp(lambda p: self.forward({**base, **p}, x), (sub,),
                               ({n: torch.zeros_like(t) for n, t in sub.items()},))
        except (RuntimeError, NotImplementedError) as e:
            return error_reason(e)
        return None

    def exclude_path(self, method: str, reason: str) -> None:
        """``method`` (a path, or ``"operator:vjp"``) cannot run on this model: plan again
        without it (recorded in ``info.fallbacks``)."""
        self.excluded[method] = reason
        if method == "ntk_vp":
            self.info.loops = [lp for lp in self.info.loops if lp["where"] != "NTK-vector products"]
        if method in PATHS:
            self._choose_path(*self._plan_args)
            self.set_group(0)
        self._record()

    def adopt_pilot(self, corrections: dict[str, float], record: dict) -> None:
        """Plan again with the paths' seconds scaled by ``corrections`` (``{path: measured /
        estimated}`` of a timed pilot, :mod:`._pilot`); ``record`` goes to ``info.pilot``."""
        self.corrections = dict(corrections)
        self._choose_path(*self._plan_args)
        self.set_group(0)
        self._record()
        self.info.pilot = {**record, "chose": self.method}

    def drop_layer(self, name: str, reason: str) -> None:
        """A structured layer broke its rule's assumptions at run time (a chunk fed it an
        input that is not batch-first although the probe examples did): its parameters
        fall back to the Jacobian path with ``reason``, and the request is planned again."""
        for L in self.checked_layers:
            if L.name == name:
                for n in L.param_names():
                    self.reject[n] = reason
        self.checked_layers = [L for L in self.checked_layers if L.name != name]
        self._choose_path(*self._plan_args)
        self.set_group(0)
        self._record()

    def run_with_fallbacks(self, fn: Callable[[], Any]) -> Any:
        """``fn()``, again after each structured layer that fails at run time
        (:class:`LayerRuleError`: :meth:`drop_layer`) or forward-mode AD that fails on the
        ntk_vp path (:class:`ForwardADError`: :meth:`exclude_path`)."""
        while True:
            try:
                return fn()
            except LayerRuleError as e:
                self.drop_layer(e.layer, e.reason)
            except ForwardADError as e:
                if "ntk_vp" in self.excluded:
                    raise
                self.exclude_path("ntk_vp", f"forward-mode AD is not supported by this model ({e.reason})")

    def _record(self) -> None:
        name = self.model_name
        self.info.method, self.info.layout, self.info.chunk_size = self.method, self.layout, int(self.chunk)
        self.info.structured = {L.name or "<root>": L.describe() for L in self.layers}
        self.info.fallbacks = []
        self.info.adjustments = list(self.adjustments)
        for m, why in self.excluded.items():
            path = f"operator:{self.method}" if m.startswith("operator:") else self.method
            self.info.fallbacks.append({"params": list(self.names), "path": path, "instead_of": m, "reason": why})
            log_once(f"exclude:{name}:{m}:{why}", f"eNTK: {name} runs the {path} path instead of {m} ({why})")
        if self.method == "structured" and self.fallback:
            by_reason: dict[str, list[str]] = {}
            for n in self.fallback:
                by_reason.setdefault(self.reject.get(n, "no structured rule for this parameter"), []).append(n)
            for why, ns in by_reason.items():
                self.info.fallbacks.append({"params": ns, "path": "jacobian", "reason": why})
                log_once(f"fallback:{name}:{','.join(ns)}:{why}",
                         f"eNTK: {len(ns)} parameter(s) of {name} use the per-parameter Jacobian "
                         f"({why}): {', '.join(ns[:4])}{' ...' if len(ns) > 4 else ''}")
        for a in self.adjustments:
            log_once(f"adjust:{name}:{a['what']}", f"eNTK: {name}: {a['what']} ({a['reason']})")
        if self.has_rnn and self.method in ("structured", "jacobian") and (self.fallback or self.method == "jacobian"):
            self.note_loop("per-example Jacobian", "the model contains a recurrent module (nn.RNNBase): vmap "
                                                   "is not used, one backward per example")

    # --------------------------------------------------------------- selection
    def note_loop(self, where: str, reason: str) -> None:
        self.info.note_loop(where, reason)
        log_once(f"loop:{type(self.model).__name__}:{where}:{reason}",
                 f"eNTK: {where} of {type(self.model).__name__} runs as a loop ({reason})")

    def note_adjustment(self, what: str, reason: str) -> None:
        """Record (once) a setting changed to avoid a known hazard."""
        item = {"what": what, "by": "the engine", "reason": reason}
        if item not in self.info.adjustments:
            self.info.adjustments.append(item)
            log_once(f"adjust:{self.model_name}:{what}", f"eNTK: {self.model_name}: {what} ({reason})")

    def set_group(self, d: int) -> None:
        """Select diagonal group ``d``: its left and right :class:`~._channels.Side`, and
        whether tiles are mirrored (the kernel of ``x1`` with itself on equal sides, unless
        the path symmetrises the whole result afterwards)."""
        self.group_index = d
        self.left, self.right = self.channels.groups[d]
        self.mirror = (self.x2 is None and self.left == self.right and self.channels.batch == "pair"
                       and not self.symmetrize_after)

    def _sync_fallback(self) -> None:
        covered = {nm for L in self.layers for nm in L.param_names()}
        self.fallback = [n for n in self.names if n not in covered]

    def struct_params(self) -> list[str]:
        """The parameters covered by the structured layers, in layer order."""
        return [nm for L in self.layers for nm in L.param_names()]

    def group_specs(self) -> dict[str, list[ParamSpec]]:
        """The request as the planner sees it: ``{group: [ParamSpec]}``."""
        specs: dict[str, list[ParamSpec]] = {g: [] for g in self.groups}
        where: dict[str, tuple] = {}
        for L in self.layers:
            if L.kind == "elementwise":
                for _, full in L.attrs:
                    where[full] = ("elementwise", L.positions, None)
                continue
            if L.w_name:
                if L.kind == "embedding":
                    where[L.w_name] = ("embedding", L.positions, None)
                else:
                    where[L.w_name] = ("linear_weight", L.positions, (L.n_out, L.n_in))
            if L.b_name:
                where[L.b_name] = ("linear_bias", L.positions, None)
        for n in self.names:
            kind, T, shape = where.get(n, ("other", 1, None))
            specs[self.group_of[n]].append(ParamSpec(n, shape or self.shapes[n], kind, T))
        return specs

    # ---------------------------------------------------------- forward helpers
    def params(self, grad_names: Iterable[str] = ()) -> dict[str, torch.Tensor]:
        """All parameters (and inference-mode buffers, cloned), detached; those in
        ``grad_names`` as fresh leaves needing grad."""
        gs = set(grad_names)
        return {n: (t.detach().requires_grad_(True) if n in gs else t) for n, t in self.base.items()}

    def forward(self, params: dict, batch: Batch, leaves: list | None = None) -> torch.Tensor:
        """The model's output on ``batch`` flattened to ``(B, C)``."""
        out = model_output(call_model(self.model, params, batch, leaves))
        return out.reshape(out.shape[0], -1)

    @contextlib.contextmanager
    def capture(self, layers: list[Layer]):
        """Forward hooks recording ``(input, input version, output)`` of each call."""
        rec: list[list] = [[] for _ in layers]
        handles = []
        clone = self.clone_inputs
        owner = threading.get_ident()
        for i, L in enumerate(layers):
            def hook(mod, inp, out, i=i):
                if threading.get_ident() != owner:   # another thread's forward of a shared module
                    return None
                a = inp[0]
                a_det = a.detach().clone() if clone else a.detach()
                rec[i].append((a_det, a._version, out))
                return out.clone()   # later in-place ops act on the clone, not on `out`
            handles.append(L.module.register_forward_hook(hook))
        try:
            yield rec
        finally:
            for h in handles:
                h.remove()
