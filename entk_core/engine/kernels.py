"""Empirical neural tangent kernels (eNTKs) of PyTorch models.

Conventions (shapes and axes)
-----------------------------
Inputs ``x1`` are a tensor, or a (nested) tuple / list / dict of tensors sharing the
leading batch axis ``N1`` (e.g. ``{"input_ids": ids, "attention_mask": mask}``); a tensor
is passed as ``model(x)``, a tuple or list positionally (``model(*x)``), a dict by keyword
(``model(**x)``); non-tensor leaves (``None``, bools, numbers, strings) are passed
unchanged. ``x2`` (``N2`` examples) has the same structure and per-example shapes.
Float inputs may be features, integer tensors token ids or masks.

The model maps inputs to an output of shape ``(N, *S)`` (a tensor, or the ``logits`` of a
``transformers`` output). Write ``f_s(x)`` for output channel ``s`` (a multi-index into
``S``; flattened row-major, ``C = prod(S)`` channels, ``c``). The eNTK is

    Θ[n, m, s, s'] = Σ_p  w_s ∂f_s(x1_n)/∂θ_p · w_s' ∂f_s'(x2_m)/∂θ_p

with ``w = class_weights`` (``(C,)`` over the flattened channels, default all ones) and
``p`` over the selected parameters.

**Output axes, neural-tangents semantics.** ``trace_axes`` and ``diagonal_axes`` are axes
of the output ``(N, *S)`` (axis 0 is the batch axis; negative axes count from the end),
exactly as in ``neural_tangents.empirical_ntk_fn``: a traced axis is summed over its
diagonal and divided by its size (averaged away); a diagonal axis is kept once (only
``i == i'``); every other axis appears twice, as ``(size in x1, size in x2)``, in the order
of the output's axes. For an output ``(N, T, C)``:

==============================  ==================  ==========================================
trace_axes, diagonal_axes       shape               entry
==============================  ==================  ==========================================
``(), ()``                      ``(N1, N2, T, T, C, C)``  ``Θ[n, m, (t, c), (t', c')]``
``(-1,), ()``                   ``(N1, N2, T, T)``  ``mean_c Θ[n, m, (t, c), (t', c)]``
``(-1,), (1,)``                 ``(N1, N2, T)``     ``mean_c Θ[n, m, (t, c), (t, c)]``
``(1, 2), ()``                  ``(N1, N2)``        ``mean_{t,c} Θ[n, m, (t, c), (t, c)]``
``(-1,), (0,)``                 ``(N, T, T)``       ``mean_c Θ[n, n, (t, c), (t', c)]`` (x2 = None)
==============================  ==================  ==========================================

**Reduction shorthands** (``reduction=``, when neither axes argument is given; the output is
seen as ``(N, C)``, an ``(N,)`` output as ``C = 1``, an ``(N, *S)`` output flattened):

=========  ======================  ====================================================
reduction  shape                   definition
=========  ======================  ====================================================
"full"     ``(N1, N2, C, C)``      ``Θ`` (= ``trace_axes=(), diagonal_axes=()`` for (N, C))
"trace"    ``(N1, N2)``            ``mean_c Θ[:, :, c, c]`` (= ``trace_axes=(-1,)``)
"mean"     ``(N1, N2)``            ``mean_{c,d} Θ[:, :, c, d]`` (= eNTK of ``Σ_c w_c f_c / C``)
"flat"     ``(C·N1, C·N2)``        class-major "full": row ``c·N1 + n``, column ``d·N2 + m``
"block"    ``(N1, N2)``            ``Θ[:, :, c, d]`` for ``block=(c, d)``
=========  ======================  ====================================================

Traced and diagonal contractions never build the all-pairs tensor.

Layer groups: :func:`param_group` maps ``net.0.weight -> net.0`` (the dotted path of the
owning module); a parameter of the root module keeps its name (``W``).
:func:`empirical_ntk_by_layer` returns ``{group: kernel}`` in parameter registration
order; the groups sum to :func:`empirical_ntk`.

Methods
-------
* ``"structured"`` -- per layer, the per-example Jacobian of channel ``c`` is
  ``Σ_t g_{c,t} a_tᵀ`` (``a_t``: the layer input at position ``t``, captured by a forward
  hook; ``g_{c,t}``: the cotangent of channel ``c`` at the layer output, from one batched
  backward per block of channels). Rules: ``nn.Linear`` and GPT-2's ``Conv1D`` weights and
  biases; ``nn.Conv1d``/``nn.Conv2d`` (``groups=1``, zero padding) as a Linear on unfolded
  patches, one position per output pixel; ``nn.Embedding`` (a Linear on one-hot inputs,
  ``a·a' = [tok == tok']``); and the gains and biases of ``nn.LayerNorm``, ``nn.RMSNorm``
  and ``*RMSNorm`` / ``*LayerNorm`` modules such as those of ``transformers`` (Llama's
  ``w · n(x)``, Gemma3's ``(1 + w) · n(x)``), whose Jacobian is diagonal: ``∂y/∂q`` is read
  by one forward-mode product and contracted per example. A layer is contracted
  pairwise (``Θ = Σ_{t,t'} (g_t·g'_{t'})(a_t·a'_{t'})``) or through per-example gradients,
  whichever costs fewer flops (:func:`entk_core.engine.costs.choose_form`). Every other
  parameter (raw ``nn.Parameter``\\ s, weights tied across modules, layers applied to
  non-batch-first tensors, grouped convolutions, recurrent layers...) falls back, per
  parameter, to the Jacobian path; the fallback is logged once (logger
  ``entk_core.engine``) and recorded in :class:`KernelInfo`. Before use, each layer's rule
  is checked **per example** against autograd on 4 probe examples: applied to each
  example's input and output cotangent, randomly weighted per example and summed, it must
  give autograd's gradient of the same weighted sum of outputs. So a layer fed a tensor
  whose leading axis is not the batch (sequence-first, even when its length equals the
  probe's batch), a layer applied to a parameter (a hypernetwork) and a weight also used
  outside its module fall back; a layer that passes on the probe but receives a
  non-batch-first input on a later chunk falls back then (the request is planned again).
* ``"jacobian"`` -- the reference: ``vmap(jacrev(functional_call))`` per chunk, each
  parameter's Jacobian flattened to ``(N, C, P_i)`` and contracted by ``einsum``
  (the PyTorch NTK tutorial). Models ``vmap`` cannot batch (and models with an
  ``nn.RNNBase`` module) run one backward per example instead, recorded in ``loops``. A
  chunk never has as many examples as ``jacrev`` has output rows (``nn.PReLU``'s backward
  is wrong there under nested vmap, a PyTorch bug: see ``_request.JACREV_HAZARD``): such a
  ``chunk_size`` is lowered by one and recorded in ``adjustments``.
* ``"ntk_vp"`` -- NTK-vector products: for each output basis vector a ``vjp`` then a
  ``jvp`` (the torch.func tutorial's second method). On a model whose forward-mode AD
  fails (``nn.MultiheadAttention``'s fused kernel), the fastest other path runs instead,
  recorded in ``fallbacks`` (``"instead_of": "ntk_vp"``).
* ``"auto"`` -- the fastest path that fits the memory budget (:mod:`entk_core.engine.planner`).

How the output is walked (chosen by the planner for the structured path): input chunks
with one tile per pair of chunks ("chunks"; the only layout of the other methods),
channel-major row panels written in place ("panels", for kept channels when the factors
of all inputs fit), or one backward per block of channels accumulating ``Σ_c G_c G_cᵀ``
("stream", for traced kernels when the chunked factors do not fit). With ``x2=None`` the
structured and ntk_vp paths compute the upper triangle of tiles/panels and mirror it; the
reference ("jacobian") computes every tile, as the tutorial does, and symmetrises.

Semantics
---------
* Examples must not interact and the model must be deterministic: the computation runs
  on a private copy of the module structure in ``eval()`` mode (parameters shared, not
  copied); the caller's module is never modified, so it may be shared between threads.
  A caller's module in training mode with batch norm (batch statistics) or dropout gets
  a one-line :class:`TrainModeWarning`; ``allow_train_mode=False`` refuses instead. A
  module that cannot be deep-copied is used as it is only when already in eval mode.
* NaN or inf in a floating input leaf, a parameter or a buffer is a one-line
  ``ValueError`` naming where (``check_finite=False`` skips the check).
* Works inside ``torch.no_grad()`` and ``torch.inference_mode()``.
* ``device``: where the work runs (``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``; default
  ``$ENTK_DEVICE`` or the inputs' device); inputs and (a copy of) the model are moved
  there, the work is chunked by the planner on that device's free memory, and the kernel
  is returned there. TF32 matmuls are disabled during kernel work.
* ``progress(done, total, message)`` is called after every tile / panel / channel block;
  an exception raised by it stops the computation and propagates (cancellation).
* ``check=k`` recomputes ``k`` seeded random entries of the result by per-example
  autograd in float64 (:mod:`entk_core.engine.checks`): the worst relative error is in
  ``info.check``; above the tolerance a one-line :class:`KernelCheckError`.

Where the work is done
----------------------
The request is validated and the model inspected in :mod:`._request` (inputs:
:mod:`._inputs`; guards: :mod:`._guards`; output axes: :mod:`._channels`; layer rules:
:mod:`._layers`), chunks are factored in :mod:`._factors`, and the output is walked and
contracted in :mod:`._kernel_paths`. What ran is reported as a
:class:`~entk_core.engine.info.KernelInfo`.
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterable

import torch
from torch import nn

from . import planner
from ._guards import autograd_on, eval_mode, no_tf32
from ._kernel_paths import run
from ._pilot import maybe_pilot
from ._request import ALL, METHODS, Ctx, fastest_other, layer_groups, param_group, safe_chunk
from .checks import KernelCheckError, check_count, spot_check
from .info import KernelInfo, TrainModeWarning
from .machine import machine_rates, observe_call
from .planner import REDUCTIONS, MemoryBudgetError, Plan

__all__ = [
    "METHODS",
    "REDUCTIONS",
    "KernelCheckError",
    "KernelInfo",
    "MemoryBudgetError",
    "Plan",
    "TrainModeWarning",
    "empirical_ntk",
    "empirical_ntk_by_layer",
    "estimate_ntk",
    "layer_groups",
    "param_group",
]


def _compute(model, x1, x2, by_layer: bool, return_info: bool, check=None, check_tolerance=None, **kw):
    t0 = time.perf_counter()
    k = check_count(check)
    with no_tf32(), autograd_on():
        ctx = Ctx(model, x1, x2, by_layer=by_layer, warn_stacklevel=4, **kw)
        # auto: before leaving the structured path, time the estimates' pick against it (_pilot)
        maybe_pilot(ctx, x1, x2, lambda m, n, a, b: Ctx(ctx.model, a, b, by_layer=by_layer, **{
            **kw, "method": m, "chunk_size": n, "progress": None, "check_finite": False}), run)
        with eval_mode(ctx.model):
            outs = ctx.run_with_fallbacks(lambda: run(ctx))
            ctx.info.seconds = time.perf_counter() - t0
            ctx.info.rates = machine_rates(ctx.device).describe()
            update = observe_call(ctx.info.estimated_seconds, ctx.info.seconds, ctx.device)
            if update is not None:
                ctx.info.rates["update"] = update
            if k:
                spot_check(ctx, lambda key, idx: [float(outs[key][i]) for i in idx], k, check_tolerance,
                           keys=list(outs))
    return outs, ctx.info


_DOC_ARGS = """
    Args:
      model: maps inputs to an ``(N, *S)`` output (see the module docstring).
      x1: inputs with ``N1`` examples: a tensor, or a tuple / list / dict of tensors.
      x2: inputs with ``N2`` examples, same structure; ``None`` means ``x1`` (the result is
        then exactly symmetric).
      reduction: a shorthand for an ``(N, C)`` output: ``"full"`` (default) ``(N1, N2, C, C)``;
        ``"trace"`` ``(N1, N2)``; ``"mean"`` ``(N1, N2)``; ``"flat"`` ``(C·N1, C·N2)``
        class-major; ``"block"`` ``(N1, N2)``.
      trace_axes, diagonal_axes: neural-tangents' output axes (instead of ``reduction``).
      class_weights: ``(C,)`` over the flattened channels; Jacobian rows of channel ``c``
        are multiplied by ``w_c``.
      block: ``(c, d)`` for ``reduction="block"``.
      groups: layer groups to include (see :func:`layer_groups`); ``None`` = all parameters.
      method: ``"auto"``, ``"structured"``, ``"jacobian"`` (reference) or ``"ntk_vp"``.
      chunk_size: inputs per chunk (default: chosen by the planner).
      dtype: compute dtype; the model is deep-copied and cast when it differs, floating
        inputs are cast, integer inputs stay integer. Default: the model's dtype.
      device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` or a ``torch.device``; default
        ``$ENTK_DEVICE`` or the inputs' device.
      memory_budget: bytes or ``"4GB"``-style (default ``$ENTK_MEMORY_BUDGET`` or 50% of
        the device's available memory); :class:`MemoryBudgetError` when nothing fits.
      progress: ``progress(done, total, message)`` after each tile / panel / channel
        block; raising in it cancels the computation.
      allow_train_mode: ``False`` refuses a model in training mode with batch norm or
        dropout (default: a :class:`TrainModeWarning`, then eval mode).
      check_finite: check inputs, parameters and buffers for NaN / inf first.
      check: spot-check this many random kernel entries against per-example autograd in
        float64 (:mod:`entk_core.engine.checks`): the worst relative error is in
        ``info.check``; above the tolerance, a one-line :class:`KernelCheckError`. Seeded:
        the same entries every time. Costs ``2 × (traced channels)`` single-example
        backwards per entry (``check=4``: a few percent of a kernel of a few hundred inputs).
      check_tolerance: the check's tolerance (default
        :data:`entk_core.engine.checks.TOLERANCE` of the dtype: 1e-3 float32, 1e-6 float64).
      return_info: also return a :class:`KernelInfo` (which path ran, fallbacks, loops, the
        check).
"""


def _check_args(reduction, trace_axes, diagonal_axes):
    if reduction is not None and (trace_axes is not None or diagonal_axes is not None):
        raise ValueError("pass either reduction= or trace_axes=/diagonal_axes=, not both")


# ------------------------------------------------------------------------ public
def empirical_ntk(
    model: nn.Module,
    x1: Any,
    x2: Any = None,
    *,
    reduction: str | None = None,
    trace_axes: int | Iterable[int] | None = None,
    diagonal_axes: int | Iterable[int] | None = None,
    class_weights: torch.Tensor | Iterable[float] | None = None,
    block: tuple[int, int] | None = None,
    groups: Iterable[str] | str | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: Any = None,
    memory_budget: int | float | str | None = None,
    progress=None,
    allow_train_mode: bool = True,
    check_finite: bool = True,
    check: int | None = None,
    check_tolerance: float | None = None,
    return_info: bool = False,
):
    """The empirical NTK of ``model`` between ``x1`` and ``x2``.
    {args}
    Returns:
      the kernel in ``dtype`` on the compute device, shaped as in the module docstring;
      ``(kernel, info)`` with ``return_info=True``.
    """
    _check_args(reduction, trace_axes, diagonal_axes)
    outs, info = _compute(model, x1, x2, False, return_info, reduction=reduction, trace_axes=trace_axes,
                          diagonal_axes=diagonal_axes, class_weights=class_weights, block=block, groups=groups,
                          method=method, chunk_size=chunk_size, dtype=dtype, device=device,
                          memory_budget=memory_budget, progress=progress, allow_train_mode=allow_train_mode,
                          check_finite=check_finite, check=check, check_tolerance=check_tolerance)
    return (outs[ALL], info) if return_info else outs[ALL]


def empirical_ntk_by_layer(
    model: nn.Module,
    x1: Any,
    x2: Any = None,
    *,
    reduction: str | None = None,
    trace_axes: int | Iterable[int] | None = None,
    diagonal_axes: int | Iterable[int] | None = None,
    class_weights: torch.Tensor | Iterable[float] | None = None,
    block: tuple[int, int] | None = None,
    groups: Iterable[str] | str | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: Any = None,
    memory_budget: int | float | str | None = None,
    progress=None,
    allow_train_mode: bool = True,
    check_finite: bool = True,
    check: int | None = None,
    check_tolerance: float | None = None,
    return_info: bool = False,
):
    """Layerwise eNTKs: ``{{group: kernel}}`` in registration order, each shaped as in
    :func:`empirical_ntk` with the same arguments; the kernels sum to the full kernel.
    The memory budget covers all the returned kernels together.
    {args}"""
    _check_args(reduction, trace_axes, diagonal_axes)
    outs, info = _compute(model, x1, x2, True, return_info, reduction=reduction, trace_axes=trace_axes,
                          diagonal_axes=diagonal_axes, class_weights=class_weights, block=block, groups=groups,
                          method=method, chunk_size=chunk_size, dtype=dtype, device=device,
                          memory_budget=memory_budget, progress=progress, allow_train_mode=allow_train_mode,
                          check_finite=check_finite, check=check, check_tolerance=check_tolerance)
    return (outs, info) if return_info else outs


def estimate_ntk(
    model: nn.Module,
    x1: Any,
    x2: Any = None,
    *,
    reduction: str | None = None,
    trace_axes: int | Iterable[int] | None = None,
    diagonal_axes: int | Iterable[int] | None = None,
    class_weights: Any = None,
    block: tuple[int, int] | None = None,
    groups: Iterable[str] | str | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: Any = None,
    memory_budget: int | float | str | None = None,
    by_layer: bool = False,
) -> Plan:
    """The :class:`~entk_core.engine.planner.Plan` of ``empirical_ntk(model, x1, x2, ...)``
    (``by_layer=True``: of :func:`empirical_ntk_by_layer`) with the same arguments, without
    computing the kernel: ``plan.seconds`` (counted work × this machine's measured rates, plus
    the request's measured setup: see :mod:`entk_core.engine.planner`), ``plan.bytes``,
    ``plan.method`` (the path that would run), ``plan.summary()``. Runs the model on at most 4 inputs to learn the output
    shape, the layer structure and the activation size. Never raises for budget reasons
    (see ``plan.fits``)."""
    _check_args(reduction, trace_axes, diagonal_axes)
    with no_tf32(), autograd_on():
        ctx = Ctx(model, x1, x2, reduction=reduction, trace_axes=trace_axes, diagonal_axes=diagonal_axes,
                  class_weights=class_weights, block=block, groups=groups, method=method, chunk_size=chunk_size,
                  dtype=dtype, device=device, by_layer=by_layer, plan=False, warn_stacklevel=3)
    def plan_for(m: str) -> Plan:
        return planner.estimate(ctx.N1, None if ctx.x2 is None else ctx.N2, ctx.C, ctx.group_specs(),
                                ctx.reduction or "full", ctx.dtype, by_layer=by_layer, symmetric=ctx.x2 is None,
                                method=m, chunk_size=chunk_size, memory_budget=memory_budget, device=ctx.device,
                                activation_per_example=ctx.act, channels=ctx.ch_shape,
                                out_elems=int(math.prod(ctx.channels.out_shape())), profile=ctx.model_profile())

    plan = plan_for(method)
    if plan.method == "ntk_vp" and ctx.forward_ad_failure() is not None:   # what would run instead
        plan = plan_for(fastest_other(plan_for("auto").paths, ("ntk_vp",)))
    if plan.method is not None:   # the chunk that would run (never a vmap(jacrev) hazard: see _request)
        plan.chunk_size = safe_chunk(plan.chunk_size, ctx.jacrev_rows(plan.method))
    plan.seconds += ctx.setup_seconds()   # the call repeats this request's setup (checks, copy, profile)
    return plan


empirical_ntk.__doc__ = empirical_ntk.__doc__.format(args=_DOC_ARGS)
empirical_ntk_by_layer.__doc__ = empirical_ntk_by_layer.__doc__.format(args=_DOC_ARGS)
