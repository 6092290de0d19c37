"""Empirical neural tangent kernels (eNTKs) of PyTorch models.

Conventions (shapes and axes)
-----------------------------
A model maps inputs ``x`` of shape ``(N, ...)`` to outputs of shape ``(N, C)`` (an
output of shape ``(N,)`` counts as ``C = 1``). Inputs may be float tensors or integer
token ids. For inputs ``x1 (N1, ...)`` and ``x2 (N2, ...)`` the eNTK is

    K[n, m, c, d] = Σ_p  w_c ∂f_c(x1_n)/∂θ_p · w_d ∂f_d(x2_m)/∂θ_p

with ``w = class_weights`` (default all ones) and ``p`` running over the selected
parameters. ``reduction`` turns it into:

=========  ======================  ====================================================
reduction  shape                   definition
=========  ======================  ====================================================
"full"     ``(N1, N2, C, C)``      ``K``
"trace"    ``(N1, N2)``            ``mean_c K[:, :, c, c]``
"mean"     ``(N1, N2)``            ``mean_{c,d} K[:, :, c, d]`` (= eNTK of ``Σ_c w_c f_c / C``)
"flat"     ``(C·N1, C·N2)``        class-major: row ``c·N1 + n``, column ``d·N2 + m``
"block"    ``(N1, N2)``            ``K[:, :, c, d]`` for ``block=(c, d)``
=========  ======================  ====================================================

"trace", "mean" and "block" never build the ``(N1, N2, C, C)`` tensor.

Layer groups: :func:`param_group` maps ``net.0.weight -> net.0`` (the dotted path of the
owning module); a parameter of the root module keeps its name (``W``).
:func:`empirical_ntk_by_layer` returns ``{group: kernel}`` in parameter registration
order; the groups sum to :func:`empirical_ntk`.

Methods
-------
* ``"structured"`` -- for ``nn.Linear`` weights/biases and ``nn.Embedding`` weights the
  per-example Jacobian of output ``c`` is ``Σ_t g_{c,t} a_tᵀ`` (``a_t``: the layer input at
  position ``t``, captured by a forward hook; ``g_{c,t}``: the cotangent of output ``c`` at
  the layer output, from one backward per class, or one backward of ``Σ_c w_c f_c / C``
  for "mean"). Hence ``Θ_W = Σ_{t,t'} (g_t·g'_{t'})(a_t·a'_{t'})`` and
  ``Θ_b = Σ_{t,t'} g_t·g'_{t'}``; an embedding is a Linear on one-hot inputs
  (``a·a' = [tok == tok']``). Per layer either that pairwise form or the per-example
  gradient ``Σ_t g_t a_tᵀ`` is contracted, whichever costs fewer flops
  (:func:`entk_core.engine.planner.choose_form`). No per-parameter Jacobian is formed for
  these layers. Every other parameter (LayerNorm gains, raw ``nn.Parameter``\\ s used in
  einsums, weights tied across modules, layers applied to non-batch-first tensors...)
  falls back, per parameter, to the Jacobian path. Before use the structured rule of
  each layer is checked against autograd on a few examples (the gradient of a random
  combination of outputs), so a weight also used outside its module falls back too.
* ``"jacobian"`` -- the reference: ``vmap(jacrev(functional_call))`` per chunk, each
  parameter's Jacobian flattened to ``(N, C, P_i)`` and contracted by ``einsum``
  (the PyTorch NTK tutorial).
* ``"ntk_vp"`` -- NTK-vector products: for each output basis vector a ``vjp`` then a
  ``jvp`` (the torch.func tutorial's second method).
* ``"auto"`` -- the fastest path that fits the memory budget (:mod:`entk_core.engine.planner`).

How the output is walked (chosen by the planner for the structured path): input chunks
with one tile per pair of chunks ("chunks"; the only layout of the other methods),
class-major row panels written in place ("panels", for "full"/"flat" when the factors of
all inputs fit), or one backward per block of classes accumulating ``Σ_c G_c G_cᵀ``
("stream", for "trace" when the chunked factors do not fit). With ``x2=None`` the
structured and ntk_vp paths compute the upper triangle of tiles/panels and mirror it; the
reference ("jacobian") computes every tile, as the tutorial does, and symmetrises.

Assumptions: examples do not interact (no batch norm in training mode: the computation
runs on a private copy of the module structure in ``eval()`` mode, sharing the
parameters; the caller's module is never modified, so it may be shared between
threads); the model is deterministic. Inputs are processed in chunks (size chosen by the planner or
``chunk_size``) so memory stays bounded; with ``x2=None`` each pair of chunks is
computed once and mirrored, and the result is exactly symmetric. TF32 matmuls are
disabled during kernel work. Everything runs on the inputs' device.
"""
from __future__ import annotations

import contextlib
import copy
import math
import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from . import planner
from .planner import MemoryBudgetError

__all__ = [
    "METHODS",
    "REDUCTIONS",
    "MemoryBudgetError",
    "empirical_ntk",
    "empirical_ntk_by_layer",
    "layer_groups",
    "param_group",
]

REDUCTIONS = ("full", "trace", "mean", "flat", "block")
METHODS = ("auto", "structured", "jacobian", "ntk_vp")
_ALL = "__all__"
ProgressFn = Callable[[int, int, str], None]


# ------------------------------------------------------------------------- groups
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


# ---------------------------------------------------------------------- contexts
_TF32_LOCK = threading.Lock()
_TF32_STATE = {"depth": 0, "saved": None}


@contextlib.contextmanager
def _no_tf32():
    """Disable TF32 (and reduced-precision float32 matmuls) for kernel work; re-entrant and
    thread-safe (the first entrant saves the global flags, the last one restores them)."""
    with _TF32_LOCK:
        if _TF32_STATE["depth"] == 0:
            _TF32_STATE["saved"] = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                                    torch.get_float32_matmul_precision())
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.set_float32_matmul_precision("highest")
        _TF32_STATE["depth"] += 1
    try:
        yield
    finally:
        with _TF32_LOCK:
            _TF32_STATE["depth"] -= 1
            if _TF32_STATE["depth"] == 0:
                saved = _TF32_STATE["saved"]
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
                torch.set_float32_matmul_precision(saved[2])


def _private_model(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` in eval mode that kernel work may hook and re-parametrise without
    touching the caller's module (which may be shared between threads, e.g. cached by a
    dashboard). Parameters and buffers are shared, not copied, unless a cast is needed."""
    tensors = list(model.parameters()) + list(model.buffers())
    if any(t.device != device or (t.is_floating_point() and t.dtype != dtype) for t in tensors):
        return copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    memo = {id(t): t for t in tensors}
    try:
        return copy.deepcopy(model, memo).eval()
    except Exception:  # exotic modules that cannot be copied: work on the original
        return model


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t


@contextlib.contextmanager
def _quiet():
    """Silence torch's vmap 'performance drop' fallbacks (tests treat warnings as errors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ----------------------------------------------------------------------- request
@dataclass(frozen=True)
class _Side:
    """Which class channels one side of the kernel uses: ``classes`` (each weighted by
    ``w_c``), or ``None`` for the single summed channel ``Σ_c w_c f_c / C``."""

    classes: tuple[int, ...] | None

    def width(self) -> int:
        return 1 if self.classes is None else len(self.classes)


@dataclass
class _Layer:
    name: str
    module: nn.Module
    kind: str                      # "linear" | "embedding"
    group: str
    w_name: str | None
    b_name: str | None
    n_in: int
    n_out: int
    positions: int = 1
    padding_idx: int | None = None
    form: str = "pair"             # "pair" | "perex"

    @property
    def merged_in(self) -> int:
        """Input width with the bias folded in as a constant-1 feature."""
        return self.n_in + (1 if (self.w_name and self.b_name) else 0)


@dataclass
class _Fac:
    """Factors of one chunk for one output key.

    ``flat``: per-example gradient rows -- outer mode ``(CL·B, P)`` (class-major rows),
    diag mode ``(B, CL·P)``. ``pairs``: ``(kind, G, A)`` with ``G`` ``(T, CL·B, O)`` (outer) or
    ``(T, B, CL·O)`` (diag) and ``A`` ``(T, B, I)`` (linear inputs) or ``(T, B)`` (token ids).
    ``per_param``: jacobian method, ``[(CL, B, P_i)]``. ``x``: ntk_vp method, the raw chunk.
    """

    flat: torch.Tensor | None = None
    pairs: list = field(default_factory=list)
    per_param: list = field(default_factory=list)
    x: torch.Tensor | None = None


class _Ctx:
    """Everything about one kernel request, after validation and model inspection."""

    def __init__(self, model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, *, reduction: str = "full",
                 class_weights=None, block=None, groups=None, method: str = "auto", chunk_size=None,
                 dtype=None, memory_budget=None, progress: ProgressFn | None = None, by_layer: bool = False,
                 plan: bool = True):
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        if not isinstance(x1, torch.Tensor):
            raise TypeError("x1 must be a torch.Tensor of shape (N1, ...)")
        if x2 is not None and not isinstance(x2, torch.Tensor):
            raise TypeError("x2 must be a torch.Tensor of shape (N2, ...) or None")
        if x2 is x1:
            x2 = None
        if x1.ndim < 1 or x1.shape[0] == 0 or (x2 is not None and (x2.ndim < 1 or x2.shape[0] == 0)):
            raise ValueError("inputs must have a non-empty leading batch axis")
        if chunk_size is not None and int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.reduction, self.method_req, self.by_layer = reduction, method, by_layer
        self.progress = progress
        self.device = x1.device
        fdt = [p.dtype for p in model.parameters() if p.is_floating_point()]
        self.dtype = dtype if dtype is not None else (fdt[0] if fdt else torch.get_default_dtype())
        if not self.dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {self.dtype}")
        self.model = _private_model(model, self.device, self.dtype)

        def cast(x):
            x = x.to(self.device)
            return x.to(self.dtype) if x.is_floating_point() else x

        self.x1 = cast(x1)
        self.x2 = None if x2 is None else cast(x2)
        self.N1 = self.x1.shape[0]
        self.N2 = self.N1 if self.x2 is None else self.x2.shape[0]

        # ---- parameter selection
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
        self.base = {n: p.detach() for n, p in named.items()}
        self.shapes = {n: tuple(named[n].shape) for n in self.names}

        # ---- structured candidates
        self.layers: list[_Layer] = []
        self.fallback: list[str] = list(self.names)
        if method in ("auto", "structured"):
            self._find_layers(named)
        self.clone_inputs = False

        # ---- inspect: output shape, structured checks, activation size
        self.C, self.act = self._inspect()
        C = self.C
        if class_weights is None:
            self.w = torch.ones(C, dtype=self.dtype, device=self.device)
        else:
            self.w = (class_weights.detach() if isinstance(class_weights, torch.Tensor)
                      else torch.as_tensor(class_weights, dtype=torch.float64)).to(self.device, self.dtype).reshape(-1)
            if self.w.numel() != C:
                raise ValueError(f"class_weights has {self.w.numel()} entries, the model has C={C} outputs")
            if not torch.isfinite(self.w).all():
                raise ValueError("class_weights must be finite")
        if reduction == "block":
            if block is None or len(tuple(block)) != 2:
                raise ValueError("reduction='block' needs block=(c, d)")
            c, d = (int(b) for b in block)
            if not (0 <= c < C and 0 <= d < C):
                raise ValueError(f"block {block} out of range for C={C}")
            self.left, self.right = _Side((c,)), _Side((d,))
        elif reduction == "mean":
            self.left = self.right = _Side(None)
        else:
            self.left = self.right = _Side(tuple(range(C)))
        self.mode = "diag" if reduction == "trace" else "outer"
        self.mirror = self.x2 is None and self.left == self.right
        cl, cr = self.left.width(), self.right.width()
        for L in self.layers:
            L.form = planner.choose_form(L.kind, L.merged_in if L.kind == "linear" else L.n_in, L.n_out,
                                         L.positions, cl, cr, self.mode)
        self.plan = None
        if plan:
            self.plan = planner.choose(
                self.N1, None if self.x2 is None else self.N2, C, self._group_specs(), reduction, self.dtype,
                by_layer=by_layer, symmetric=self.x2 is None, method="auto" if method == "auto" else method,
                chunk_size=chunk_size, memory_budget=memory_budget, device=self.device,
                activation_per_example=self.act,
            )
            self.method = self.plan.method
            self.chunk = self.plan.chunk_size
            self.cache = self.plan.cache
            self.layout = self.plan.layout
        else:
            self.method = "structured" if method == "auto" else method
            self.chunk = int(chunk_size) if chunk_size else max(self.N1, self.N2)
            self.cache = True
            self.layout = "chunks"
        self.buffers = None
        if self.method != "structured":
            self.layers, self.fallback = [], list(self.names)
        # The reference ("jacobian") follows the tutorial: every tile is computed, then the
        # result is symmetrised exactly; the other paths compute each pair of chunks once.
        self.symmetrize_after = self.mirror and self.method == "jacobian"
        if self.symmetrize_after:
            self.mirror = False

    # ------------------------------------------------------------------ layers
    def _find_layers(self, named: dict[str, nn.Parameter]) -> None:
        usage: dict[int, list] = {}
        for mod in self.model.modules():
            for attr, p in mod._parameters.items():
                if p is not None:
                    usage.setdefault(id(p), []).append((mod, attr))
        modname = {id(m): n for n, m in self.model.named_modules()}
        chosen: dict[int, _Layer] = {}
        for n in self.names:
            p = named[n]
            uses = usage.get(id(p), [])
            if len(uses) != 1:
                continue
            mod, attr = uses[0]
            std_linear = type(mod).forward is nn.Linear.forward and isinstance(mod, nn.Linear)
            std_embed = (type(mod).forward is nn.Embedding.forward and isinstance(mod, nn.Embedding)
                         and mod.max_norm is None and not mod.scale_grad_by_freq)
            if std_linear and attr in ("weight", "bias"):
                L = chosen.get(id(mod))
                if L is None:
                    L = chosen[id(mod)] = _Layer(modname.get(id(mod), ""), mod, "linear", self.group_of[n], None, None,
                                                 mod.in_features, mod.out_features)
                if attr == "weight":
                    L.w_name = n
                else:
                    L.b_name = n
            elif std_embed and attr == "weight":
                chosen[id(mod)] = _Layer(modname.get(id(mod), ""), mod, "embedding", self.group_of[n], n, None,
                                         mod.num_embeddings, mod.embedding_dim, padding_idx=mod.padding_idx)
        self.layers = list(chosen.values())
        self._sync_fallback()

    def _sync_fallback(self) -> None:
        covered = {nm for L in self.layers for nm in (L.w_name, L.b_name) if nm}
        self.fallback = [n for n in self.names if n not in covered]

    def _group_specs(self) -> dict[str, list[planner.ParamSpec]]:
        specs: dict[str, list[planner.ParamSpec]] = {g: [] for g in self.groups}
        where = {}
        for L in self.layers:
            if L.w_name:
                where[L.w_name] = ("embedding" if L.kind == "embedding" else "linear_weight", L.positions)
            if L.b_name:
                where[L.b_name] = ("linear_bias", L.positions)
        for n in self.names:
            kind, T = where.get(n, ("other", 1))
            specs[self.group_of[n]].append(planner.ParamSpec(n, self.shapes[n], kind, T))
        return specs

    # ---------------------------------------------------------- forward helpers
    def params(self, grad_names: Iterable[str] = ()) -> dict[str, torch.Tensor]:
        """All parameters, detached; those in ``grad_names`` as fresh leaves needing grad."""
        gs = set(grad_names)
        return {n: (t.detach().requires_grad_(True) if n in gs else t) for n, t in self.base.items()}

    @contextlib.contextmanager
    def capture(self, layers: list[_Layer]):
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

    def struct_params(self) -> list[str]:
        return [nm for L in self.layers for nm in (L.w_name, L.b_name) if nm]

    def _inspect(self) -> tuple[int, float]:
        """Forward a few examples: output width C, checks of the structured rules, and
        saved activations per example (for the planner)."""
        xs = self.x1[: min(4, self.N1)]
        b = xs.shape[0]
        pnames = self.struct_params()
        params = self.params(pnames if self.layers else self.names)
        pptr = {t.data_ptr() for t in self.base.values()}
        saved = [0]

        def pack(t):
            if t.data_ptr() not in pptr:
                saved[0] += t.numel()
            return t

        with torch.enable_grad(), _eval_mode(self.model), self.capture(self.layers) as rec, \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = functional_call(self.model, params, (xs,))
        if not isinstance(out, torch.Tensor) or out.ndim not in (1, 2) or out.shape[0] != b:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the model must map (N, ...) inputs to (N, C) outputs; got {shape} for N={b}")
        out = out.reshape(b, -1)
        C = out.shape[1]
        act = max(1.0, saved[0] / b)
        if not self.layers:
            return C, act
        if any(a._version != v for calls in rec for (a, v, _) in calls):
            self.clone_inputs = True
        bad = set()
        for L, calls in zip(self.layers, rec):
            good = True
            T = 0
            for a, _, y in calls:
                if L.kind == "linear":
                    good &= (a.ndim >= 2 and a.shape[0] == b and y.shape[:-1] == a.shape[:-1]
                             and y.shape[-1] == L.n_out and a.shape[-1] == L.n_in and a.is_floating_point())
                else:
                    good &= (a.ndim >= 1 and a.shape[0] == b and tuple(y.shape[:-1]) == tuple(a.shape))
                T += math.prod(a.shape[1:-1]) if L.kind == "linear" else math.prod(a.shape[1:])
            L.positions = max(1, T)
            if not good:
                bad.add(id(L))
        # gradient check: a random combination of outputs through autograd vs the rule
        gen = torch.Generator(device="cpu").manual_seed(12345)
        r = torch.randn(out.shape, generator=gen).to(out)
        ys = [y for L, calls in zip(self.layers, rec) if id(L) not in bad for (_, _, y) in calls]
        with torch.enable_grad():
            grads = torch.autograd.grad(out, ys + [params[n] for n in pnames], r, allow_unused=True)
        gy, gp = list(grads[: len(ys)]), dict(zip(pnames, grads[len(ys):]))
        tol = {torch.float64: 1e-9, torch.float32: 1e-4}.get(self.dtype, 1e-2)
        k = 0
        for L, calls in zip(self.layers, rec):
            if id(L) in bad:
                continue
            rw = rb = None
            for a, _, y in calls:
                g = gy[k]
                k += 1
                if g is None:
                    continue
                g2 = g.reshape(-1, L.n_out)
                if L.kind == "linear":
                    a2 = a.reshape(-1, L.n_in)
                    rw = g2.T @ a2 if rw is None else rw + g2.T @ a2
                    rb = g2.sum(0) if rb is None else rb + g2.sum(0)
                else:
                    tok = a.reshape(-1)
                    if L.padding_idx is not None:
                        g2 = g2 * (tok != L.padding_idx).to(g2.dtype)[:, None]
                    e = torch.zeros(L.n_in, L.n_out, dtype=g2.dtype, device=g2.device).index_add_(0, tok, g2)
                    rw = e if rw is None else rw + e
            checks = []
            if L.w_name:
                checks.append((rw, gp[L.w_name]))
            if L.b_name:
                checks.append((rb, gp[L.b_name]))
            for rec_g, true_g in checks:
                tn = 0.0 if true_g is None else float(true_g.norm())
                rn = 0.0 if rec_g is None else float(rec_g.norm())
                if true_g is None or rec_g is None:
                    good = tn == 0.0 and rn == 0.0
                else:
                    good = float((rec_g - true_g).norm()) <= tol * max(tn, 1e-30)
                if not good:
                    bad.add(id(L))
        self.layers = [L for L in self.layers if id(L) not in bad]
        self._sync_fallback()
        return C, act


# ------------------------------------------------------------------ cotangents
def _cotangents(out: torch.Tensor, ys: list[torch.Tensor], side: _Side, w: torch.Tensor,
                retain: bool = False) -> list:
    """Cotangents at each ``y`` for the side's class channels: list of ``(CL, *y.shape)``
    (``None`` where ``y`` does not influence the output)."""
    B, C = out.shape
    if not ys:
        return []
    if side.classes is None:
        go = (w / C).expand(B, C)
        gs = torch.autograd.grad(out, ys, go, allow_unused=True, retain_graph=retain)
        return [None if g is None else g.unsqueeze(0) for g in gs]
    cls = torch.tensor(side.classes, device=out.device)
    CL = len(side.classes)
    go = torch.zeros(CL, B, C, dtype=out.dtype, device=out.device)
    go[torch.arange(CL, device=out.device), :, cls] = w[cls][:, None]
    if CL == 1:
        gs = torch.autograd.grad(out, ys, go[0], allow_unused=True, retain_graph=retain)
        return [None if g is None else g.unsqueeze(0) for g in gs]
    try:
        with _quiet():
            gs = torch.autograd.grad(out, ys, go, is_grads_batched=True, allow_unused=True, retain_graph=True)
    except RuntimeError:
        per = [torch.autograd.grad(out, ys, go[k], allow_unused=True, retain_graph=True) for k in range(CL)]
        gs = tuple(None if per[0][i] is None else torch.stack([p[i] for p in per]) for i in range(len(ys)))
    return list(gs)


@dataclass
class _Fwd:
    """A retained forward pass: outputs ``(B, C)`` and, per structured layer, its calls
    ``[(input, output)]`` (outputs still attached to the graph)."""

    out: torch.Tensor
    calls: list
    ys: list


def _struct_forward(ctx: _Ctx, x: torch.Tensor) -> _Fwd:
    B = x.shape[0]
    params = ctx.params(ctx.struct_params())
    with torch.enable_grad(), ctx.capture(ctx.layers) as rec:
        out = functional_call(ctx.model, params, (x,))
    out = out.reshape(B, -1)
    ys, calls = [], []
    for L, cl in zip(ctx.layers, rec):
        calls.append([(a, y) for a, _, y in cl])
        for a, _, y in cl:
            if a.shape[0] != B or y.shape[0] != B:
                raise RuntimeError(f"layer {L.name!r} received a non-batch-first input {tuple(a.shape)}")
            ys.append(y)
    return _Fwd(out, calls, ys)


def _layer_inputs(ctx: _Ctx, fwd: _Fwd) -> list[torch.Tensor]:
    """Per structured layer, its inputs ``A (B, T, I)`` (linear) or token ids ``(B, T)``
    (embedding), positions of all calls concatenated."""
    B = fwd.out.shape[0]
    res = []
    for L, calls in zip(ctx.layers, fwd.calls):
        if L.kind == "linear":
            As = [a.reshape(B, -1, L.n_in) for a, _ in calls]
            empty = torch.zeros(B, 0, L.n_in, dtype=ctx.dtype, device=ctx.device)
        else:
            As = [a.reshape(B, -1) for a, _ in calls]
            empty = torch.zeros(B, 0, dtype=torch.long, device=ctx.device)
        res.append(empty if not As else As[0] if len(As) == 1 else torch.cat(As, 1))
    return res


def _struct_grads(ctx: _Ctx, fwd: _Fwd, side: _Side, retain: bool = False) -> list[torch.Tensor]:
    """Per structured layer, the cotangents ``G (CL, B, T, O)`` at its outputs for the
    side's class channels (class weights applied; zero at embedding padding tokens)."""
    B = fwd.out.shape[0]
    with torch.enable_grad():
        gs = _cotangents(fwd.out, fwd.ys, side, ctx.w, retain=retain)
    CL = side.width()
    res, k = [], 0
    for L, calls in zip(ctx.layers, fwd.calls):
        Gs = []
        for a, y in calls:
            g = gs[k]
            k += 1
            if g is None:
                g = torch.zeros((CL,) + tuple(y.shape), dtype=ctx.dtype, device=ctx.device)
            Gs.append(g.reshape(CL, B, -1, L.n_out))
        if not Gs:
            G = torch.zeros(CL, B, 0, L.n_out, dtype=ctx.dtype, device=ctx.device)
        else:
            G = Gs[0] if len(Gs) == 1 else torch.cat(Gs, 2)
        if L.kind == "embedding" and L.padding_idx is not None and calls:
            tok = torch.cat([a.reshape(B, -1) for a, _ in calls], 1)
            G = G * (tok != L.padding_idx).to(G.dtype)[None, :, :, None]
        res.append(G.detach())
    return res


def _layer_factors(ctx: _Ctx, x: torch.Tensor, side: _Side) -> list[tuple[_Layer, torch.Tensor, torch.Tensor]]:
    """For each structured layer: ``G (CL, B, T, O)`` (cotangents, class weights applied)
    and its raw inputs ``A (B, T, I)`` (``(B, T)`` token ids for an embedding)."""
    if not ctx.layers:
        return []
    fwd = _struct_forward(ctx, x)
    Gs = _struct_grads(ctx, fwd, side)
    return list(zip(ctx.layers, Gs, _layer_inputs(ctx, fwd)))


def _per_example_jacobian(ctx: _Ctx, names: list[str], x: torch.Tensor, side: _Side) -> dict[str, torch.Tensor]:
    """``{name: (CL, B, P_i)}``: per-example Jacobians of the side's (weighted) class
    channels w.r.t. the named parameters, via ``vmap(jacrev(functional_call))``
    (possibly non-contiguous views)."""
    if not names:
        return {}
    B = x.shape[0]
    C, w = ctx.C, ctx.w
    base = ctx.params()
    sub = {n: base[n] for n in names}
    cls = None if side.classes is None else torch.tensor(side.classes, device=ctx.device)

    def f_single(p, xi):
        out = functional_call(ctx.model, {**base, **p}, (xi.unsqueeze(0),)).reshape(-1)
        if cls is None:
            return (out * w).sum() / C
        return out[cls] * w[cls]

    CL = side.width()
    try:
        with _quiet():
            jac = vmap(jacrev(f_single), in_dims=(None, 0))(sub, x)
        res = {n: jac[n].reshape(B, CL, -1).transpose(0, 1) for n in names}   # views, no copy
    except (RuntimeError, NotImplementedError):
        # models that vmap cannot batch: one autograd.grad per example and channel
        res = {n: torch.empty(CL, B, math.prod(ctx.shapes[n]), dtype=ctx.dtype, device=ctx.device) for n in names}
        for i in range(B):
            with torch.enable_grad():
                p = {n: sub[n].detach().requires_grad_(True) for n in names}
                out = functional_call(ctx.model, {**base, **p}, (x[i: i + 1],)).reshape(-1)
                rows = [(out * w).sum() / C] if cls is None else [out[c] * w[c] for c in side.classes]
                for k, r in enumerate(rows):
                    gr = torch.autograd.grad(r, [p[n] for n in names], retain_graph=True, allow_unused=True)
                    for n, g in zip(names, gr):
                        res[n][k, i] = 0 if g is None else g.reshape(-1)
    return res


# ---------------------------------------------------------------------- factors
def _keys(ctx: _Ctx) -> list[str]:
    return list(ctx.groups) if ctx.by_layer else [_ALL]


def _key(ctx: _Ctx, group: str) -> str:
    return group if ctx.by_layer else _ALL


def _flat_layout(J: torch.Tensor, mode: str) -> torch.Tensor:
    """``(CL, B, P)`` -> outer ``(CL·B, P)`` / diag ``(B, CL·P)``."""
    CL, B, P = J.shape
    return J.reshape(CL * B, P) if mode == "outer" else J.permute(1, 0, 2).reshape(B, CL * P)


def _prepare_layer(L: _Layer, G: torch.Tensor, A: torch.Tensor, mode: str, prune: bool = True):
    """Turn one layer's ``G (CL, B, T, O)`` and inputs into a contraction term:

    * ``("flat", J)`` with per-example gradients ``J (CL, B, P)`` (bias-only layers and the
      per-example form ``Σ_t g_t a_tᵀ``);
    * ``("pair", kind, Gl, Al, idx)`` with ``Gl`` ``(T', CL·B, O)`` (outer) or ``(T', B, CL·O)``
      (diag), ``Al`` ``(T', B, I)`` / ``(T', B)`` and ``idx`` the kept positions (positions
      whose cotangents vanish for every example and channel are dropped).
    """
    CL, B, T, O = G.shape
    if L.w_name is None:                                   # bias only
        return ("flat", G.sum(2))
    if L.kind == "linear" and L.b_name is not None:
        A = torch.cat([A, torch.ones(A.shape[:-1] + (1,), dtype=A.dtype, device=A.device)], -1)
    idx = None
    if prune and T > 1:
        keep = G.abs().amax(dim=(0, 1, 3)) > 0
        if not bool(keep.all()):
            idx = keep.nonzero().flatten()
            G, A = G[:, :, idx], A[:, idx]
            T = G.shape[2]
    if L.form == "perex":
        if L.kind == "linear":
            J = torch.einsum("cbto,bti->cboi", G, A).reshape(CL, B, -1)
        else:
            J = torch.einsum("cbto,btv->cbvo", G, torch.nn.functional.one_hot(A, L.n_in).to(G.dtype))
            J = J.reshape(CL, B, -1)
        return ("flat", J)
    if mode == "outer":
        Gl = G.permute(2, 0, 1, 3).reshape(T, CL * B, O)
    else:
        Gl = G.permute(2, 1, 0, 3).reshape(T, B, CL * O)
    Al = A.transpose(0, 1).contiguous()
    if idx is None:
        idx = torch.arange(T)
    return ("pair", L.kind, Gl, Al, idx.tolist())


def _fallback_jacobian(ctx: _Ctx, x: torch.Tensor, side: _Side) -> dict[str, torch.Tensor]:
    """Per-example Jacobians of the fallback parameters, over input chunks: ``{name: (CL, N, P_i)}``."""
    if not ctx.fallback:
        return {}
    parts = [_per_example_jacobian(ctx, ctx.fallback, x[a:b], side) for a, b in _ranges(x.shape[0], ctx.chunk)]
    if len(parts) == 1:
        return parts[0]
    return {n: torch.cat([p[n] for p in parts], 1) for n in ctx.fallback}


def _structured_factors(ctx: _Ctx, x: torch.Tensor, side: _Side, mode: str | None = None) -> dict[str, _Fac]:
    """Factors of ``x`` (processed in input chunks of ``ctx.chunk``) for every output key."""
    mode = mode or ctx.mode
    facs = {k: _Fac() for k in _keys(ctx)}
    flats: dict[str, list[torch.Tensor]] = {k: [] for k in facs}
    N = x.shape[0]
    chunks = _ranges(N, ctx.chunk)
    if ctx.layers:
        parts = [_layer_factors(ctx, x[a:b], side) for a, b in chunks]
        for li, L in enumerate(ctx.layers):
            if len(parts) == 1:
                _, G, A = parts[0][li]
            else:
                G = torch.cat([p[li][1] for p in parts], 1)
                A = torch.cat([p[li][2] for p in parts], 0)
            term = _prepare_layer(L, G, A, mode)
            key = _key(ctx, L.group)
            if term[0] == "flat":
                flats[key].append(term[1])
            else:
                facs[key].pairs.append(term[1:4])
        del parts
    for n, J in _fallback_jacobian(ctx, x, side).items():
        flats[_key(ctx, ctx.group_of[n])].append(J)
    for k, js in flats.items():
        if js:
            facs[k].flat = _flat_layout(torch.cat(js, 2) if len(js) > 1 else js[0], mode)
    return facs


def _jacobian_factors(ctx: _Ctx, x: torch.Tensor, side: _Side) -> dict[str, _Fac]:
    # the reference computes every class's (weighted) Jacobian rows, whatever the reduction
    facs = {k: _Fac() for k in _keys(ctx)}
    jac = _per_example_jacobian(ctx, ctx.names, x, _Side(tuple(range(ctx.C))))
    for n in ctx.names:
        facs[_key(ctx, ctx.group_of[n])].per_param.append(jac[n])
    return facs


def _factors(ctx: _Ctx, x: torch.Tensor, side: _Side) -> dict[str, _Fac]:
    if ctx.method == "structured":
        return _structured_factors(ctx, x, side)
    if ctx.method == "jacobian":
        return _jacobian_factors(ctx, x, side)
    return {k: _Fac(x=x) for k in _keys(ctx)}


# ------------------------------------------------------------------ contraction
class _Buffers:
    """Reusable scratch buffers (fresh large allocations cost page faults on CPU)."""

    def __init__(self):
        self._b: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        n = math.prod(shape)
        b = self._b.get(name)
        if b is None or b.numel() < n or b.dtype != like.dtype or b.device != like.device:
            b = self._b[name] = torch.empty(n, dtype=like.dtype, device=like.device)
        return b[:n].view(shape)


def _mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return torch.mm(a, b, out=out) if out is not None else a @ b


def _contract(ctx: _Ctx, key: str, fl: _Fac, fr: _Fac, B1: int, B2: int, out: torch.Tensor | None = None,
              rows: slice | None = None, cols: slice | None = None, defer_scale: bool = False) -> torch.Tensor:
    """One tile: outer mode ``(CL·B1, CR·B2)`` (viewable as ``(CL, B1, CR, B2)``), diag mode
    ``(B1, B2)`` (divided by ``C`` unless ``defer_scale``). ``out``: where to write the tile
    (else a buffer); ``rows``/``cols``: restrict to a slice of class-major rows/columns
    (outer mode, whole classes only; ``B1``/``B2`` stay the per-class input counts)."""
    if ctx.method == "ntk_vp":
        t = _ntkvp_tile(ctx, key, fl.x, fr.x)             # diag mode: not yet divided by C
        return t / ctx.C if (ctx.mode == "diag" and not defer_scale) else t
    CL, CR, C = ctx.left.width(), ctx.right.width(), ctx.C
    outer = ctx.mode == "outer"
    rows = rows or slice(None)
    cols = cols or slice(None)
    first = True
    tile = out
    bufs = ctx.buffers
    if outer:
        nr = (CL * B1) if rows == slice(None) else rows.stop - rows.start
        nc = (CR * B2) if cols == slice(None) else cols.stop - cols.start
        shape = (nr, nc)
    else:
        shape = (B1, B2)
    if tile is None:
        tile = bufs.get("tile", shape, ctx.w)

    def add(M_fn, AA=None):
        # tile (+)= M ⊙ AA, AA (B1, B2) broadcast over class channels (outer mode)
        nonlocal first
        if first:
            M_fn(tile)
            if AA is not None:
                _bview(tile).mul_(_bcast(AA))
            first = False
        else:
            tmp = bufs.get("scratch", shape, ctx.w)
            M_fn(tmp)
            if AA is None:
                tile.add_(tmp)
            else:
                _bview(tile).addcmul_(_bview(tmp), _bcast(AA))

    def _bview(o):
        return o.view(-1, B1, o.shape[1] // B2, B2) if outer else o

    def _bcast(AA):
        return AA[None, :, None, :] if outer else AA

    if fl.flat is not None:
        add(lambda o: torch.mm(fl.flat[rows], fr.flat[cols].T, out=o))
    for (kind, GL, AL), (_, GR, AR) in zip(fl.pairs, fr.pairs):
        TL, TR = GL.shape[0], GR.shape[0]
        for t in range(TL):
            for u in range(TR):
                if kind == "linear":
                    AA = AL[t] @ AR[u].T
                else:
                    AA = (AL[t][:, None] == AR[u][None, :]).to(ctx.dtype)
                add(lambda o, t=t, u=u: torch.mm(GL[t][rows], GR[u][cols].T, out=o), AA)
    for JL, JR in zip(fl.per_param, fr.per_param):       # jacobian method: (C, B, P_i) each
        if not outer:
            M = torch.einsum("cnp,cmp->nm", JL, JR)
        elif ctx.left.classes is None:
            M = torch.einsum("cnp,dmp->nm", JL, JR) / (C * C)
        elif CL == 1 and CR == 1 and C > 1:
            M = JL[ctx.left.classes[0]] @ JR[ctx.right.classes[0]].T
        else:
            M = torch.einsum("cnp,dmp->cndm", JL, JR).reshape(CL * B1, CR * B2)
        add(lambda o, M=M: o.copy_(M))
    if first:
        tile.zero_()
    if not outer and not defer_scale:
        tile.div_(C)
    return tile


def _ntkvp_tile(ctx: _Ctx, key: str, xl: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
    names = ctx.names if key == _ALL else [n for n in ctx.names if ctx.group_of[n] == key]
    base = ctx.params()
    sub = {n: base[n] for n in names}
    C, w = ctx.C, ctx.w
    B1, B2 = xl.shape[0], xr.shape[0]
    dev, dt = ctx.device, ctx.dtype

    def f(p, x):
        return functional_call(ctx.model, {**base, **p}, (x,)).reshape(x.shape[0], -1)

    _, vjp_fn = vjp(lambda p: f(p, xl), sub)
    L, R = ctx.left, ctx.right
    ar = torch.arange(B1, device=dev)
    if L.classes is None:
        basis = torch.zeros(B1, B1, C, dtype=dt, device=dev)
        basis[ar, ar, :] = w / C
    else:
        cls = torch.tensor(L.classes, device=dev)
        CL = len(L.classes)
        basis = torch.zeros(CL, B1, B1, C, dtype=dt, device=dev)
        kk = torch.arange(CL, device=dev)[:, None].expand(CL, B1)
        nn_ = ar[None, :].expand(CL, B1)
        basis[kk, nn_, nn_, cls[:, None].expand(CL, B1)] = w[cls][:, None].expand(CL, B1)
        basis = basis.reshape(CL * B1, B1, C)

    def slice_fn(v):
        (ct,) = vjp_fn(v)
        _, jv = jvp(lambda p: f(p, xr), (sub,), (ct,))
        return jv

    P = sum(math.prod(ctx.shapes[n]) for n in names)
    per = (P + (B1 + B2) * ctx.act) * dt.itemsize
    vb = max(1, min(basis.shape[0], int(2e8 // max(per, 1))))
    try:
        with _quiet():
            res = vmap(slice_fn, chunk_size=vb)(basis)       # (nb, B2, C)
    except (RuntimeError, NotImplementedError):
        res = torch.stack([slice_fn(v) for v in basis])
    if L.classes is None:
        return (res * (w / C)).sum(-1)                        # (B1, B2)
    CL = len(L.classes)
    if ctx.mode == "diag":
        res = res.view(CL, B1, B2, C)
        cls = list(L.classes)
        return sum(res[k, :, :, c] * w[c] for k, c in enumerate(cls))
    clsR = torch.tensor(R.classes, device=dev)
    t = (res[..., clsR] * w[clsR]).reshape(CL, B1, B2, len(R.classes))
    return t.permute(0, 1, 3, 2).reshape(CL * B1, len(R.classes) * B2)


# ------------------------------------------------------------------- placement
def _alloc(ctx: _Ctx) -> torch.Tensor:
    C, N1, N2 = ctx.C, ctx.N1, ctx.N2
    if ctx.reduction == "full":
        shape = (N1, N2, C, C)
    elif ctx.reduction == "flat":
        shape = (C * N1, C * N2)
    else:
        shape = (N1, N2)
    return torch.empty(shape, dtype=ctx.dtype, device=ctx.device)


def _symmetrize_(M: torch.Tensor, panel: int = 2048) -> torch.Tensor:
    """Make a square matrix exactly symmetric in place: diagonal blocks averaged with
    their transpose, the strict lower triangle copied from the upper one."""
    n = M.shape[0]
    for r0 in range(0, n, panel):
        r1 = min(n, r0 + panel)
        D = M[r0:r1, r0:r1]
        D.copy_((D + D.T) * 0.5)
        if r1 < n:
            M[r1:, r0:r1] = M[r0:r1, r1:].T
    return M


def _place(ctx: _Ctx, out: torch.Tensor, tile: torch.Tensor, i0: int, i1: int, j0: int, j1: int,
           diagonal: bool) -> None:
    b1, b2 = i1 - i0, j1 - j0
    mirror = ctx.mirror and not diagonal
    red = ctx.reduction
    if diagonal:
        _symmetrize_(tile)                                   # (C·b, C·b) or (b, b), exact
    if red in ("full", "flat"):
        C = ctx.C
        t4 = tile.view(C, b1, C, b2)
        if red == "flat":
            v = out.view(C, ctx.N1, C, ctx.N2)
            v[:, i0:i1, :, j0:j1] = t4
            if mirror:
                v[:, j0:j1, :, i0:i1] = t4.permute(2, 3, 0, 1)
        else:
            out[i0:i1, j0:j1] = t4.permute(1, 3, 0, 2)
            if mirror:
                out[j0:j1, i0:i1] = t4.permute(3, 1, 2, 0)
    else:
        t2 = tile.view(b1, b2)
        out[i0:i1, j0:j1] = t2
        if mirror:
            out[j0:j1, i0:i1] = t2.T


def _ranges(n: int, b: int) -> list[tuple[int, int]]:
    k = max(1, math.ceil(n / max(1, b)))
    size = math.ceil(n / k)
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def _run(ctx: _Ctx) -> dict[str, torch.Tensor]:
    ctx.buffers = _Buffers()
    try:
        if ctx.method == "structured" and ctx.layout == "stream":
            return _run_stream(ctx)
        if ctx.method == "structured" and ctx.layout == "panels":
            return _run_panels(ctx)
        outs = _run_chunks(ctx)
        if ctx.symmetrize_after:
            with torch.no_grad():
                for out in outs.values():
                    _symmetrize_full_(out) if ctx.reduction == "full" else _symmetrize_(out)
        return outs
    finally:
        ctx.buffers = None


def _symmetrize_full_(K: torch.Tensor, panel: int = 256) -> torch.Tensor:
    """In place, exactly: ``K[n, m, c, d] = K[m, n, d, c]`` for a ``(N, N, C, C)`` kernel."""
    n = K.shape[0]
    for r0 in range(0, n, panel):
        r1 = min(n, r0 + panel)
        D = K[r0:r1, r0:r1]
        D.copy_((D + D.permute(1, 0, 3, 2)) * 0.5)
        if r1 < n:
            K[r1:, r0:r1] = K[r0:r1, r1:].permute(1, 0, 3, 2)
    return K


def _run_chunks(ctx: _Ctx) -> dict[str, torch.Tensor]:
    """Input chunks; one tile per pair of chunks (upper triangle only when mirrored)."""
    keys = _keys(ctx)
    outs = {k: _alloc(ctx) for k in keys}
    rows = _ranges(ctx.N1, ctx.chunk)
    xr = ctx.x1 if ctx.x2 is None else ctx.x2
    cols = rows if ctx.x2 is None else _ranges(ctx.N2, ctx.chunk)
    pairs = [(i, j) for i in range(len(rows)) for j in (range(i, len(cols)) if ctx.mirror else range(len(cols)))]
    total = len(pairs)
    cache: dict[tuple, dict[str, _Fac]] = {}
    # factors are shared between the sides when inputs and class channels coincide
    # (the jacobian path always computes every class's rows)
    ltag = ("x1", "J" if ctx.method == "jacobian" else ctx.left)
    rtag = ("x1" if ctx.x2 is None else "x2", "J" if ctx.method == "jacobian" else ctx.right)

    def get(tag, xs, rngs, idx, side, keep):
        k = (tag, idx)
        if k in cache:
            return cache[k]
        a, b = rngs[idx]
        f = _factors(ctx, xs[a:b], side)
        if keep:
            cache[k] = f
        return f

    done = 0
    for i, (i0, i1) in enumerate(rows):
        FL = get(ltag, ctx.x1, rows, i, ctx.left, keep=ctx.cache and ltag == rtag)
        for j in (range(i, len(cols)) if ctx.mirror else range(len(cols))):
            j0, j1 = cols[j]
            FR = FL if (ltag == rtag and i == j) else get(rtag, xr, cols, j, ctx.right, keep=ctx.cache)
            with torch.no_grad():
                for k in keys:
                    tile = _contract(ctx, k, FL[k], FR[k], i1 - i0, j1 - j0, defer_scale=True)
                    _place(ctx, outs[k], tile, i0, i1, j0, j1, diagonal=ctx.mirror and i == j)
                    del tile
            done += 1
            if ctx.progress is not None:
                ctx.progress(done, total, f"eNTK tile {done}/{total} ({ctx.method})")
        if ctx.mirror:
            cache.pop((ltag, i), None)       # later rows only use chunks j > i
    if ctx.mode == "diag":
        with torch.no_grad():
            for out in outs.values():
                out.div_(ctx.C)              # the class mean, once for the whole output
    return outs


def _run_panels(ctx: _Ctx) -> dict[str, torch.Tensor]:
    """"full"/"flat": factors of all inputs, output filled in class-major row panels.

    A panel is the rows of classes ``[c0, c1)`` (``(c1-c0)·N1`` rows) against the columns of
    classes ``[c0, C)`` when mirrored (else all columns); "flat" panels are written in
    place into the output, the diagonal class block is symmetrised and the lower
    triangle mirrored."""
    keys = _keys(ctx)
    outs = {k: _alloc(ctx) for k in keys}
    C, N1, N2 = ctx.C, ctx.N1, ctx.N2
    FL = _structured_factors(ctx, ctx.x1, ctx.left)
    FR = FL if ctx.mirror else _structured_factors(ctx, ctx.x2 if ctx.x2 is not None else ctx.x1, ctx.right)
    cb = max(1, min(C, ctx.plan.class_block if ctx.plan is not None and ctx.plan.class_block else C))
    blocks = [(c0, min(C, c0 + cb)) for c0 in range(0, C, cb)]
    total = len(blocks) * len(keys)
    done = 0
    with torch.no_grad():
        for k in keys:
            out = outs[k]
            for c0, c1 in blocks:
                d0 = c0 if ctx.mirror else 0
                rows, cols = slice(c0 * N1, c1 * N1), slice(d0 * N2, C * N2)
                if ctx.reduction == "flat":
                    _contract(ctx, k, FL[k], FR[k], N1, N2, out=out[rows, cols], rows=rows, cols=cols)
                else:
                    tile = _contract(ctx, k, FL[k], FR[k], N1, N2, rows=rows, cols=cols)
                    out[:, :, c0:c1, d0:] = tile.view(c1 - c0, N1, C - d0, N2).permute(1, 3, 0, 2)
                if ctx.mirror:
                    if ctx.reduction == "flat":
                        _symmetrize_(out[rows, rows])
                        if c1 < C:
                            out[c1 * N1:, rows] = out[rows, c1 * N1:].T
                    else:
                        D = out[:, :, c0:c1, c0:c1]
                        D.copy_((D + D.permute(1, 0, 3, 2)) * 0.5)
                        if c1 < C:
                            out[:, :, c1:, c0:c1] = out[:, :, c0:c1, c1:].permute(1, 0, 3, 2)
                done += 1
                if ctx.progress is not None:
                    ctx.progress(done, total, f"eNTK panel {done}/{total} (structured)")
    return outs


def _run_stream(ctx: _Ctx) -> dict[str, torch.Tensor]:
    """Class-traced kernels: one forward of all inputs (graph kept), then one backward per
    block of classes, accumulating ``Σ_c G_c G_cᵀ`` per layer and position pair; the
    per-class factors of all classes are never held at once."""
    keys = _keys(ctx)
    C = ctx.C
    x2 = ctx.x2
    fL = _struct_forward(ctx, ctx.x1) if ctx.layers else None
    fR = fL if (x2 is None or fL is None) else _struct_forward(ctx, x2)
    AL = _layer_inputs(ctx, fL) if fL is not None else []
    AR = AL if x2 is None else (_layer_inputs(ctx, fR) if fR is not None else [])
    flat_acc: dict[str, torch.Tensor | None] = {k: None for k in keys}
    pair_acc: list[dict[tuple[int, int], torch.Tensor]] = [dict() for _ in ctx.layers]
    pair_A: list = [None] * len(ctx.layers)
    cb = max(1, min(C, ctx.plan.class_block if ctx.plan is not None and ctx.plan.class_block else C))
    blocks = [tuple(range(c0, min(C, c0 + cb))) for c0 in range(0, C, cb)]
    xr = ctx.x1 if x2 is None else x2

    def acc_flat(k, JL, JR):
        with torch.no_grad():
            M = _flat_layout(JL, "diag")
            Mr = M if JR is JL else _flat_layout(JR, "diag")
            if flat_acc[k] is None:
                flat_acc[k] = M @ Mr.T
            else:
                flat_acc[k].addmm_(M, Mr.T)

    for bi, cls in enumerate(blocks):
        side = _Side(cls)
        last = bi == len(blocks) - 1
        if ctx.layers:
            GL = _struct_grads(ctx, fL, side, retain=not last or fR is not fL)
            GR = GL if fR is fL else _struct_grads(ctx, fR, side, retain=not last)
            flats: dict[str, list] = {k: [] for k in keys}
            flatsR: dict[str, list] = {k: [] for k in keys}
            for li, L in enumerate(ctx.layers):
                key = _key(ctx, L.group)
                tl = _prepare_layer(L, GL[li], AL[li], "diag")
                tr = tl if GR is GL else _prepare_layer(L, GR[li], AR[li], "diag")
                if tl[0] == "flat":
                    flats[key].append(tl[1])
                    flatsR[key].append(tr[1])
                    continue
                _, kind, Gl, Al, il = tl
                _, _, Gr, Ar, ir = tr
                with torch.no_grad():
                    for t, to in enumerate(il):
                        for u, uo in enumerate(ir):
                            S = pair_acc[li].get((to, uo))
                            if S is None:
                                pair_acc[li][(to, uo)] = Gl[t] @ Gr[u].T
                            else:
                                S.addmm_(Gl[t], Gr[u].T)
                if pair_A[li] is None:
                    A1 = AL[li] if L.kind != "linear" or L.b_name is None else torch.cat(
                        [AL[li], torch.ones(AL[li].shape[:-1] + (1,), dtype=ctx.dtype, device=ctx.device)], -1)
                    A2 = A1 if AR is AL else (AR[li] if L.kind != "linear" or L.b_name is None else torch.cat(
                        [AR[li], torch.ones(AR[li].shape[:-1] + (1,), dtype=ctx.dtype, device=ctx.device)], -1))
                    pair_A[li] = (kind, A1, A2)
            del GL, GR
            for k in keys:
                if flats[k]:
                    JL = torch.cat(flats[k], 2) if len(flats[k]) > 1 else flats[k][0]
                    JR = JL if flatsR[k] is flats[k] or all(a is b for a, b in zip(flats[k], flatsR[k])) else (
                        torch.cat(flatsR[k], 2) if len(flatsR[k]) > 1 else flatsR[k][0])
                    acc_flat(k, JL, JR)
        if ctx.fallback:
            jl = _fallback_jacobian(ctx, ctx.x1, side)
            jr = jl if x2 is None else _fallback_jacobian(ctx, xr, side)
            for k in keys:
                names = [n for n in ctx.fallback if _key(ctx, ctx.group_of[n]) == k]
                if names:
                    JL = torch.cat([jl[n] for n in names], 2)
                    JR = JL if jr is jl else torch.cat([jr[n] for n in names], 2)
                    acc_flat(k, JL, JR)
        if ctx.progress is not None:
            ctx.progress(bi + 1, len(blocks), f"eNTK classes {cls[0]}-{cls[-1]} of {C} (structured)")
    del fL, fR
    outs = {}
    with torch.no_grad():
        for k in keys:
            K = flat_acc[k]
            for li, L in enumerate(ctx.layers):
                if _key(ctx, L.group) != k or not pair_acc[li]:
                    continue
                kind, A1, A2 = pair_A[li]
                for (t, u), S in pair_acc[li].items():
                    if kind == "linear":
                        AA = A1[:, t] @ A2[:, u].T
                    else:
                        AA = (A1[:, t][:, None] == A2[:, u][None, :]).to(ctx.dtype)
                    S.mul_(AA)
                    K = S if K is None else K.add_(S)
            if K is None:
                K = torch.zeros(ctx.N1, ctx.N2, dtype=ctx.dtype, device=ctx.device)
            K.div_(C)
            if ctx.mirror:
                _symmetrize_(K)
            outs[k] = K
    return outs


def _compute(model, x1, x2, by_layer: bool, **kw) -> dict[str, torch.Tensor]:
    with _no_tf32():
        ctx = _Ctx(model, x1, x2, by_layer=by_layer, **kw)
        with _eval_mode(ctx.model):
            return _run(ctx)


# ------------------------------------------------------------------------ public
def empirical_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    reduction: str = "full",
    class_weights: torch.Tensor | Iterable[float] | None = None,
    block: tuple[int, int] | None = None,
    groups: Iterable[str] | str | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    memory_budget: int | float | str | None = None,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """The empirical NTK of ``model`` between ``x1`` and ``x2``.

    Args:
      model: maps ``(N, ...)`` inputs to ``(N, C)`` outputs (or ``(N,)``, C = 1).
      x1: inputs ``(N1, ...)`` (float features or integer token ids).
      x2: inputs ``(N2, ...)``; ``None`` means ``x1`` (the result is then exactly symmetric).
      reduction: ``"full"`` ``(N1, N2, C, C)``; ``"trace"`` ``(N1, N2)`` = ``mean_c K[..., c, c]``;
        ``"mean"`` ``(N1, N2)`` = ``mean_{c,d} K[..., c, d]``; ``"flat"`` ``(C·N1, C·N2)``,
        class-major (row ``c·N1 + n``); ``"block"`` ``(N1, N2)`` = ``K[..., c, d]``.
      class_weights: ``(C,)``; Jacobian rows of class ``c`` are multiplied by ``w_c``.
      block: ``(c, d)`` for ``reduction="block"``.
      groups: layer groups to include (see :func:`layer_groups`); ``None`` = all parameters.
      method: ``"auto"``, ``"structured"``, ``"jacobian"`` (reference) or ``"ntk_vp"``.
      chunk_size: inputs per chunk (default: chosen by the planner).
      dtype: compute dtype; the model is deep-copied and cast when it differs, floating
        inputs are cast, integer inputs stay integer. Default: the model's dtype.
      memory_budget: bytes or ``"4GB"``-style (default ``$ENTK_MEMORY_BUDGET`` or 50% of
        available memory); :class:`MemoryBudgetError` when nothing fits.
      progress: ``progress(done, total, message)`` called after each kernel tile.

    Returns:
      the kernel in ``dtype`` on the inputs' device, shaped as listed above.
    """
    outs = _compute(model, x1, x2, False, reduction=reduction, class_weights=class_weights, block=block,
                    groups=groups, method=method, chunk_size=chunk_size, dtype=dtype,
                    memory_budget=memory_budget, progress=progress)
    return outs[_ALL]


def empirical_ntk_by_layer(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    reduction: str = "full",
    class_weights: torch.Tensor | Iterable[float] | None = None,
    block: tuple[int, int] | None = None,
    groups: Iterable[str] | str | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    memory_budget: int | float | str | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, torch.Tensor]:
    """Layerwise eNTKs: ``{group: kernel}`` in registration order, each shaped as in
    :func:`empirical_ntk` with the same arguments; the kernels sum to the full kernel.
    The memory budget covers all the returned kernels together."""
    return _compute(model, x1, x2, True, reduction=reduction, class_weights=class_weights, block=block,
                    groups=groups, method=method, chunk_size=chunk_size, dtype=dtype,
                    memory_budget=memory_budget, progress=progress)
