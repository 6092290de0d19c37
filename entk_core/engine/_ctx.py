"""Shared internals of the eNTK engine (a private module of :mod:`entk_core.engine`).

Used by :mod:`~entk_core.engine.kernels` and :mod:`~entk_core.engine.operators`; nothing
outside the engine imports it. It holds one kernel request after validation
(:class:`Ctx`): the inputs as a :class:`Batch`, the output channels and how they are
contracted (:class:`Channels`), the model's structured layers (:class:`Layer`) and the
per-chunk factors (layer inputs, output cotangents, per-example Jacobians) that every
path contracts. See :mod:`entk_core.engine.kernels` for the conventions.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import logging
import math
import threading
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, jvp, vmap

from . import planner
from .devices import resolve_device
from .planner import METHODS as PATHS
from .planner import REDUCTIONS

__all__ = [
    "ALL", "METHODS", "Batch", "Channels", "Ctx", "KernelInfo", "Layer", "Side", "TrainModeWarning",
    "eval_mode", "no_tf32", "autograd_on", "log_once", "model_output", "ranges", "param_group", "layer_groups",
    "per_example_jacobian", "layer_factors", "layer_inputs", "struct_forward", "struct_grads", "prepare_layer",
    "fallback_jacobian", "structured_factors", "flat_layout", "elementwise_jacobians",
]

ALL = "__all__"
METHODS = ("auto",) + PATHS
ProgressFn = Callable[[int, int, str], None]
log = logging.getLogger("entk_core.engine")

# torch loads its forward-mode decompositions (scripted with the deprecated
# torch.jit.script) on the first jvp; load them once here, at import, with that one
# deprecation silenced, so no kernel call ever touches the warnings state.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning)
    try:
        from torch._decomp import decompositions_for_jvp  # noqa: F401
    except Exception:  # noqa: BLE001 - a torch without it loads nothing here
        pass


# ----------------------------------------------------------------------- logging
_LOGGED: collections.OrderedDict = collections.OrderedDict()
_LOG_LOCK = threading.Lock()


def log_once(key: str, message: str) -> None:
    """Log ``message`` at INFO on ``entk_core.engine`` the first time ``key`` is seen in
    this process (a bounded registry of the last 1,024 keys)."""
    with _LOG_LOCK:
        if key in _LOGGED:
            _LOGGED.move_to_end(key)
            return
        _LOGGED[key] = True
        while len(_LOGGED) > 1024:
            _LOGGED.popitem(last=False)
    log.info(message)


class TrainModeWarning(UserWarning):
    """A module in training mode (batch norm with batch statistics, dropout) was
    evaluated in eval mode for the eNTK."""


# ------------------------------------------------------------------------ groups
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
_TF32_STATE: dict[str, Any] = {"depth": 0, "saved": None}


@contextlib.contextmanager
def no_tf32():
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


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """``model.eval()`` for the duration, restoring every module's mode after."""
    modes = [(m, m.training) for m in model.modules()]
    if not any(t for _, t in modes):
        yield
        return
    model.eval()
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t


@contextlib.contextmanager
def autograd_on():
    """Autograd available whatever the caller's context (``torch.no_grad()``,
    ``torch.inference_mode()``): kernel work records graphs of its own."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def ranges(n: int, b: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` covering ``range(n)`` in near-equal chunks of at most ``b``."""
    k = max(1, math.ceil(n / max(1, b)))
    size = math.ceil(n / k)
    return [(i, min(n, i + size)) for i in range(0, n, size)]


# ------------------------------------------------------------------------ inputs
_CONSTS = (type(None), bool, int, float, str)


class Batch:
    """Model inputs: a tensor, or a (nested) tuple / list / dict of tensors sharing the
    leading batch axis ``N``. Non-tensor leaves (``None``, bools, numbers, strings) are
    passed unchanged. A tensor is passed as ``model(x)``, a tuple or list as
    ``model(*x)`` (positionally), a dict as ``model(**x)`` (by keyword)."""

    def __init__(self, tree: Any, name: str = "x1", _spec=None, _leaves=None, _paths=None):
        self.name = name
        if _spec is not None:
            self.spec, self.leaves, self.paths = _spec, list(_leaves), _paths
            self.kind = self.spec[0] if self.spec[0] in ("T", "D") else "L"
        else:
            self.leaves, self.paths = [], []
            self.spec = self._flatten(tree, "")
            self.kind = self.spec[0] if self.spec[0] in ("T", "D") else "L"
            if not self.leaves:
                raise TypeError(f"{name} must be a tensor of shape (N, ...), or a tuple/list/dict of tensors "
                                f"sharing N; got {type(tree).__name__}")
            for t, p in zip(self.leaves, self.paths):
                if t.ndim < 1:
                    raise ValueError(f"{name}{p} is a scalar; every input tensor needs a leading batch axis N")
            ns = {t.shape[0] for t in self.leaves}
            if len(ns) != 1:
                raise ValueError(f"{name} leaves do not share the batch size N: {self.describe()}")
            if next(iter(ns)) == 0:
                raise ValueError(f"{name} has an empty batch axis (N=0)")
        self.n = self.leaves[0].shape[0]

    def _flatten(self, obj: Any, path: str):
        if isinstance(obj, torch.Tensor):
            self.leaves.append(obj)
            self.paths.append(path)
            return ("T", len(self.leaves) - 1)
        if isinstance(obj, (tuple, list)):
            return ("L", type(obj), [self._flatten(o, f"{path}[{i}]") for i, o in enumerate(obj)])
        if isinstance(obj, Mapping):
            keys = list(obj.keys())
            if not all(isinstance(k, str) for k in keys):
                raise TypeError(f"{self.name}{path}: dict inputs need string keys (they become keyword arguments)")
            return ("D", tuple(keys), [self._flatten(obj[k], f"{path}[{k!r}]") for k in keys])
        if isinstance(obj, _CONSTS):
            return ("C", obj)
        raise TypeError(f"{self.name}{path} has unsupported type {type(obj).__name__}; inputs are tensors, "
                        f"or tuples/lists/dicts of tensors")

    def build(self, leaves: list | None = None):
        leaves = self.leaves if leaves is None else leaves

        def rec(s):
            tag = s[0]
            if tag == "T":
                return leaves[s[1]]
            if tag == "C":
                return s[1]
            if tag == "L":
                return s[1](rec(c) for c in s[2])
            return {k: rec(c) for k, c in zip(s[1], s[2])}

        return rec(self.spec)

    def with_leaves(self, leaves: list) -> "Batch":
        return Batch(None, self.name, _spec=self.spec, _leaves=leaves, _paths=self.paths)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Batch":
        return self.with_leaves([fn(t) for t in self.leaves])

    def slice(self, a: int, b: int) -> "Batch":
        if a == 0 and b == self.n:
            return self
        return self.with_leaves([t[a:b] for t in self.leaves])

    def args(self, leaves: list | None = None) -> tuple[tuple, dict]:
        """``(args, kwargs)`` for calling the model."""
        tree = self.build(leaves)
        if self.kind == "T":
            return (tree,), {}
        if self.kind == "D":
            return (), dict(tree)
        return tuple(tree), {}

    def describe(self) -> str:
        def leaf(t):
            return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"
        if self.kind == "T":
            return f"tensor {leaf(self.leaves[0])}"
        parts = ", ".join(f"{p} {leaf(t)}" for p, t in zip(self.paths, self.leaves))
        return f"{'dict' if self.kind == 'D' else 'tuple'} of {len(self.leaves)} tensors: {parts}"

    def signature(self):
        """Structure, constants and per-leaf trailing shapes and dtype kinds (everything
        but N), for comparing ``x1`` with ``x2``."""
        def rec(s):
            tag = s[0]
            if tag == "T":
                t = self.leaves[s[1]]
                return ("T", tuple(t.shape[1:]), t.is_floating_point(), t.dtype == torch.bool)
            if tag == "C":
                return s
            if tag == "L":
                return ("L", tuple(rec(c) for c in s[2]))
            return ("D", s[1], tuple(rec(c) for c in s[2]))
        return rec(self.spec)


def call_model(model: nn.Module, params: dict, batch: Batch, leaves: list | None = None):
    args, kwargs = batch.args(leaves)
    return functional_call(model, params, args, kwargs)


def model_output(out: Any) -> torch.Tensor:
    """The output tensor ``(N, *S)`` of a model call: a tensor, or the ``logits`` of a
    mapping-like output (``transformers`` ``ModelOutput``)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    raise ValueError(f"the model must return a tensor of shape (N, *S) or an output with .logits; "
                     f"got {type(out).__name__} (wrap the model so forward returns one tensor)")


# ------------------------------------------------------------------ model checks
def train_mode_modules(model: nn.Module) -> list[str]:
    """Modules in training mode whose output depends on the batch (batch norm with
    batch statistics) or on randomness (dropout with p > 0)."""
    bn = nn.modules.batchnorm._BatchNorm
    inorm = nn.modules.instancenorm._InstanceNorm
    drop = nn.modules.dropout._DropoutNd
    out = []
    for name, m in model.named_modules():
        if not m.training:
            continue
        if isinstance(m, bn) or (isinstance(m, inorm) and m.track_running_stats):
            out.append(f"{name or '<root>'} ({type(m).__name__})")
        elif isinstance(m, drop) and float(getattr(m, "p", 0.0)) > 0:
            out.append(f"{name or '<root>'} ({type(m).__name__}, p={m.p:g})")
    return out


def _first_bad(t: torch.Tensor) -> str:
    bad = ~torch.isfinite(t)
    idx = tuple(int(i) for i in bad.nonzero()[0].tolist())
    v = float(t[idx])
    kind = "NaN" if math.isnan(v) else "inf"
    return f"{kind} at index {idx if len(idx) != 1 else idx[0]}"


def check_finite_inputs(batch: Batch) -> None:
    for t, p in zip(batch.leaves, batch.paths):
        if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
            raise ValueError(f"{batch.name}{p} contains {_first_bad(t)} (pass check_finite=False to skip this check)")


def check_finite_model(model: nn.Module) -> None:
    for kind, it in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for n, t in it:
            if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
                raise ValueError(f"{kind} '{n}' contains {_first_bad(t.detach())} "
                                 f"(pass check_finite=False to skip this check)")


def private_model(model: nn.Module, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, str]:
    """A copy of ``model`` that kernel work may hook, switch to eval mode and
    re-parametrise without touching the caller's module (which may be shared between
    threads, e.g. cached by a dashboard). Parameters and buffers are shared, not copied,
    unless a cast is needed. Returns ``(module, how)``.

    When the module cannot be deep-copied it is used as it is only if that needs no
    change of mode (every module already in eval mode; the temporary hooks act only in
    the computing thread); otherwise a one-line ``ValueError`` says so."""
    tensors = list(model.parameters()) + list(model.buffers())
    cast = any(t.device != device or (t.is_floating_point() and t.dtype != dtype) for t in tensors)
    try:
        if cast:
            return copy.deepcopy(model).to(device=device, dtype=dtype), "cast copy"
        memo = {id(t): t for t in tensors}
        return copy.deepcopy(model, memo), "private copy"
    except Exception as e:  # noqa: BLE001 - any failure of deepcopy is reported below
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if cast:
            raise ValueError(f"cannot copy the model to move it to {device} / {str(dtype).replace('torch.', '')} "
                             f"(deepcopy failed: {why}); move or cast the model yourself") from None
        if any(m.training for m in model.modules()):
            raise ValueError(f"cannot copy the model to evaluate it in eval mode (deepcopy failed: {why}); "
                             f"call model.eval() first, then the eNTK uses the module as it is") from None
        log_once(f"nocopy:{type(model).__name__}",
                 f"eNTK: deepcopy of {type(model).__name__} failed ({why}); using the module itself "
                 f"(already in eval mode; temporary hooks only)")
        return model, f"shared (deepcopy failed: {why})"


# ---------------------------------------------------------------------- channels
@dataclass(frozen=True)
class Side:
    """The output channels one side of a kernel group uses: ``channels`` (flat channel
    indices, kept-channel-major and traced-channel-minor: ``kp · traced`` of them), or
    ``None`` for the single summed channel ``Σ_c w_c f_c / C`` ("mean")."""

    channels: tuple[int, ...] | None
    kp: int = 1
    tr: int = 1

    def width(self) -> int:
        return 1 if self.channels is None else len(self.channels)


class Channels:
    """Output channels of a request and how they are contracted.

    ``S``: the per-example output shape, ``C = prod(S)``. Either a ``reduction``
    shorthand (the output seen as ``(N, C)``) or neural-tangents' ``trace_axes`` /
    ``diagonal_axes`` over the output axes (axis 0 is the batch axis). ``groups``: one
    ``(left, right)`` :class:`Side` pair per index of the diagonal axes.
    """

    def __init__(self, S: tuple[int, ...], reduction: str | None, trace_axes, diagonal_axes, block, N1: int, N2: int,
                 rectangular: bool):
        self.S = tuple(int(s) for s in S)
        self.C = int(math.prod(self.S)) if self.S else 1
        self.N1, self.N2 = N1, N2
        C = self.C
        self.reduction = reduction
        self.batch = "pair"
        self.kp_shape: tuple[int, ...] = ()
        self.d_shape: tuple[int, ...] = ()
        self.tr = 1
        if reduction is not None:
            self.axes = False
            if reduction == "block":
                if block is None or len(tuple(block)) != 2:
                    raise ValueError("reduction='block' needs block=(c, d)")
                c, d = (int(b) for b in block)
                if not (0 <= c < C and 0 <= d < C):
                    raise ValueError(f"block {tuple(block)} out of range for C={C} output channels")
                self.groups = [(Side((c,)), Side((d,)))]
            elif reduction == "mean":
                self.groups = [(Side(None), Side(None))]
            elif reduction == "trace":
                self.tr = C
                s = Side(tuple(range(C)), 1, C)
                self.groups = [(s, s)]
            else:
                self.kp_shape = (C,)
                s = Side(tuple(range(C)), C, 1)
                self.groups = [(s, s)]
            self.roles = None
            return
        self.axes = True
        nd = 1 + len(self.S)

        def canon(axes, what):
            axes = () if axes is None else ((axes,) if isinstance(axes, int) else tuple(axes))
            out = []
            for a in axes:
                if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
                    raise ValueError(f"{what} must be integers, got {a!r}")
                a = int(a)
                if not -nd <= a < nd:
                    raise ValueError(f"{what} axis {a} is out of range for an output of shape (N, {', '.join(map(str, self.S))}"
                                     f"{')' if self.S else ')'} ({nd} axes)")
                a %= nd
                if a in out:
                    raise ValueError(f"{what} repeats axis {a}")
                out.append(a)
            return sorted(out)

        tr_axes, dg_axes = canon(trace_axes, "trace_axes"), canon(diagonal_axes, "diagonal_axes")
        both = set(tr_axes) & set(dg_axes)
        if both:
            raise ValueError(f"axis {sorted(both)[0]} is in both trace_axes and diagonal_axes")
        roles = ["keep"] * nd
        for a in tr_axes:
            roles[a] = "trace"
        for a in dg_axes:
            roles[a] = "diag"
        self.roles = roles
        if roles[0] != "keep":
            if N1 != N2 or rectangular:
                raise ValueError(f"axis 0 (the batch axis) in {'trace' if roles[0] == 'trace' else 'diagonal'}_axes "
                                 f"needs x2 = None (the kernel of x1 with itself), got N1={N1}, N2={N2}")
            self.batch = "diag" if roles[0] == "diag" else "trace"
        ch_roles = roles[1:]
        dg = [i for i, r in enumerate(ch_roles) if r == "diag"]
        kp = [i for i, r in enumerate(ch_roles) if r == "keep"]
        tr = [i for i, r in enumerate(ch_roles) if r == "trace"]
        self.d_shape = tuple(self.S[i] for i in dg)
        self.kp_shape = tuple(self.S[i] for i in kp)
        self.tr = int(math.prod(self.S[i] for i in tr)) if tr else 1
        nD = int(math.prod(self.d_shape)) if dg else 1
        nK = int(math.prod(self.kp_shape)) if kp else 1
        idx = np.arange(C).reshape(self.S) if self.S else np.arange(1)
        idx = idx.transpose(dg + kp + tr).reshape(nD, nK * self.tr) if self.S else idx.reshape(1, 1)
        self.groups = []
        for d in range(nD):
            s = Side(tuple(int(c) for c in idx[d]), nK, self.tr)
            self.groups.append((s, s))

    # ------------------------------------------------------------------ shapes
    @property
    def kp(self) -> int:
        return int(math.prod(self.kp_shape)) if self.kp_shape else 1

    def out_shape(self) -> tuple[int, ...]:
        """The returned kernel's shape."""
        N1, N2 = self.N1, self.N2
        r = self.reduction
        if not self.axes:
            C = self.C
            if r == "full":
                return (N1, N2, C, C)
            if r == "flat":
                return (C * N1, C * N2)
            return (N1, N2)
        shape = []
        for i, role in enumerate(self.roles):
            a, b = (N1, N2) if i == 0 else (self.S[i - 1], self.S[i - 1])
            if role == "keep":
                shape += [a, b]
            elif role == "diag":
                shape.append(a)
        return tuple(shape)

    def work_shape(self) -> tuple[int, ...]:
        """The shape of the array the work is written to (the output, except that a
        batch axis in ``trace_axes`` is kept until the final mean)."""
        if self.batch != "trace":
            return self.out_shape()
        shape = [self.N1]
        for i, role in enumerate(self.roles[1:]):
            s = self.S[i]
            shape += [s, s] if role == "keep" else ([s] if role == "diag" else [])
        return tuple(shape)

    def group_view(self, out: torch.Tensor, d: int) -> torch.Tensor:
        """View of ``out`` (work shape) for diagonal group ``d``: ``(*kp, N1, *kp, N2)``
        (``batch == "pair"``) or ``(*kp, *kp, N)`` (batch diagonal)."""
        if not self.axes:
            r = self.reduction
            if r == "flat":
                return out.view(self.C, self.N1, self.C, self.N2)
            if r == "full":
                return out.permute(2, 0, 3, 1)
            return out
        # label the work dims, then permute into (diag..., kp1..., n1, kp2..., n2)
        labels = []
        roles = list(self.roles)
        if self.batch == "trace":
            roles[0] = "diag"
        for i, role in enumerate(roles):
            if role == "keep":
                labels += [(i, 1), (i, 2)]
            elif role == "diag":
                labels.append((i, 0))
        dg = [i for i in range(1, len(roles)) if roles[i] == "diag"]
        kp = [i for i in range(1, len(roles)) if roles[i] == "keep"]
        want = [(i, 0) for i in dg] + [(i, 1) for i in kp]
        if self.batch == "pair":
            want += [(0, 1)] + [(i, 2) for i in kp] + [(0, 2)]
        else:
            want += [(i, 2) for i in kp] + [(0, 0)]
        v = out.permute([labels.index(w) for w in want])
        if dg:
            v = v[tuple(int(i) for i in np.unravel_index(d, self.d_shape))]
        return v


# ------------------------------------------------------------------------ layers
@dataclass
class Layer:
    """A module with a structured rule.

    ``kind``: ``"linear"`` (``nn.Linear``; GPT-2 ``Conv1D`` with ``transposed``), ``"conv"``
    (``nn.Conv1d``/``nn.Conv2d``: a Linear on unfolded patches), ``"embedding"`` or
    ``"elementwise"`` (LayerNorm / RMSNorm gains and biases: ``∂y/∂q`` is diagonal).
    ``n_in``/``n_out``: input width (patch size; vocabulary) and output width."""

    name: str
    module: nn.Module
    kind: str
    group: str
    w_name: str | None
    b_name: str | None
    n_in: int
    n_out: int
    positions: int = 1
    padding_idx: int | None = None
    form: str = "pair"
    transposed: bool = False
    conv: dict | None = None
    attrs: tuple[tuple[str, str], ...] = ()      # elementwise: ((attr, full name), ...)

    @property
    def merged_in(self) -> int:
        """Input width with the bias folded in as a constant-1 feature."""
        return self.n_in + (1 if (self.w_name and self.b_name) else 0)

    def describe(self) -> dict:
        """``{"rule", "form", "positions"}`` for :class:`KernelInfo`."""
        rule = {"linear": "Conv1D" if self.transposed else "Linear",
                "conv": f"Conv{self.conv['dims']}d" if self.conv else "Conv",
                "embedding": "Embedding", "elementwise": "elementwise (norm)"}[self.kind]
        return {"rule": rule, "form": self.form, "positions": int(self.positions)}


def _conv_setup(mod: nn.Module) -> dict | None:
    if isinstance(mod, nn.Conv2d) and type(mod).forward is nn.Conv2d.forward:
        dims = 2
    elif isinstance(mod, nn.Conv1d) and type(mod).forward is nn.Conv1d.forward:
        dims = 1
    else:
        return None
    if mod.groups != 1 or mod.padding_mode != "zeros":
        return None
    k, d, s = tuple(mod.kernel_size), tuple(mod.dilation), tuple(mod.stride)
    pad = mod.padding
    if pad == "valid":
        pad = (0,) * dims
    elif pad == "same":
        tot = [di * (ki - 1) for di, ki in zip(d, k)]
        if any(t % 2 for t in tot):
            return None
        pad = tuple(t // 2 for t in tot)
    pad = tuple(int(p) for p in pad)
    return {"dims": dims, "kernel": k, "dilation": d, "padding": pad, "stride": s}


def unfold_patches(L: Layer, a: torch.Tensor) -> torch.Tensor:
    """Conv input ``(B, C_in, *spatial)`` -> patches ``(B, T, C_in·k...)`` (row-major like
    the weight's ``(C_in, *kernel)`` flattening; ``T`` output positions, row-major).

    Built from strided windows (``Tensor.unfold``) and one copy: several times faster on
    the CPU than ``F.unfold`` (im2col)."""
    c = L.conv
    dims = c["dims"]
    pad = []
    for p in reversed(c["padding"]):
        pad += [p, p]
    ap = F.pad(a, pad) if any(c["padding"]) else a
    B, Cin = a.shape[0], a.shape[1]
    v = ap
    for i in range(dims):
        k, d, st = c["kernel"][i], c["dilation"][i], c["stride"][i]
        v = v.unfold(2 + i, d * (k - 1) + 1, st)
    if any(d > 1 for d in c["dilation"]):
        v = v[(Ellipsis,) + tuple(slice(None, None, d) for d in c["dilation"])]
    # v: (B, C_in, *out_spatial, *kernel)
    out_sp = v.shape[2:2 + dims]
    perm = [0] + list(range(2, 2 + dims)) + [1] + list(range(2 + dims, 2 + 2 * dims))
    return v.permute(perm).reshape(B, int(math.prod(out_sp)), Cin * int(math.prod(c["kernel"])))


def _is_norm(mod: nn.Module) -> bool:
    if isinstance(mod, nn.LayerNorm) or (hasattr(nn, "RMSNorm") and isinstance(mod, nn.RMSNorm)):
        return True
    name = type(mod).__name__
    return name.endswith(("RMSNorm", "LayerNorm")) and not list(mod.children())


def _is_gpt2_conv1d(mod: nn.Module) -> bool:
    w = getattr(mod, "weight", None)
    return (type(mod).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.ndim == 2
            and int(getattr(mod, "nf", -1)) == w.shape[1] and not list(mod.children()))


# --------------------------------------------------------------------- metadata
@dataclass
class KernelInfo:
    """What ran for one eNTK call (``return_info=True``).

    Attributes:
      method: ``"structured"``, ``"jacobian"`` or ``"ntk_vp"``; layout: ``"chunks"``,
        ``"panels"`` or ``"stream"``; chunk_size: inputs per chunk.
      device, dtype: where and in what precision the work ran.
      structured: ``{layer: {"rule", "form", "positions"}}`` of the layers contracted by
        structured rules (form ``"pair"`` or ``"perex"``).
      fallbacks: parameters computed by their per-parameter Jacobian and why.
      loops: places where ``vmap`` could not batch and a per-example (or per-channel) loop
        ran instead, with the reason.
      model_copy: how the caller's module was protected (``"private copy"``, ``"cast
        copy"`` or ``"shared (...)"``); train_mode: modules evaluated in eval mode although
        the caller's were in training mode.
      estimate: the planner's :class:`~entk_core.engine.planner.Plan` summary line;
        estimated_seconds / seconds: its estimate and the measured wall time.
      path: for spectra, the top-k path that ran (``"lanczos (structured operator)"``...);
        solver: eigensolver statistics (products, restarts, basis, residuals).
    """

    method: str = ""
    layout: str = "chunks"
    chunk_size: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    structured: dict = field(default_factory=dict)
    fallbacks: list = field(default_factory=list)
    loops: list = field(default_factory=list)
    model_copy: str = "private copy"
    train_mode: list = field(default_factory=list)
    estimate: str = ""
    estimated_seconds: float = 0.0
    seconds: float = 0.0
    path: str = ""
    solver: dict = field(default_factory=dict)

    def note_loop(self, where: str, reason: str) -> None:
        item = {"where": where, "reason": reason}
        if item not in self.loops:
            self.loops.append(item)

    def to_dict(self) -> dict:
        return asdict(self)


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:200] if msg else ''}"


# ---------------------------------------------------------------------- request
class Ctx:
    """Everything about one kernel request, after validation and model inspection."""

    def __init__(self, model: nn.Module, x1: Any, x2: Any = None, *, reduction: str | None = "full",
                 trace_axes=None, diagonal_axes=None, class_weights=None, block=None, groups=None,
                 method: str = "auto", chunk_size=None, dtype=None, device=None, memory_budget=None,
                 progress: ProgressFn | None = None, by_layer: bool = False, plan: bool = True,
                 allow_train_mode: bool = True, check_finite: bool = True, warn_stacklevel: int = 4):
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
        self.info = KernelInfo()
        self.reduction, self.method_req, self.by_layer = reduction, method, by_layer
        self.progress = progress
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
        # ---- semantics: train-mode modules, finite values
        trained = train_mode_modules(model)
        if trained:
            shown = ", ".join(trained[:3]) + (f" and {len(trained) - 3} more" if len(trained) > 3 else "")
            if not allow_train_mode:
                raise ValueError(f"the model is in training mode with batch-dependent or random modules ({shown}); "
                                 f"call model.eval() (or pass allow_train_mode=True to use eval mode)")
            warnings.warn(f"the model is in training mode with batch-dependent or random modules ({shown}); "
                          f"the eNTK is computed in eval mode (call model.eval() to silence this)",
                          TrainModeWarning, stacklevel=warn_stacklevel)
            self.info.train_mode = trained
        if check_finite:
            check_finite_model(model)
        self.model, self.info.model_copy = private_model(model, self.device, self.dtype)
        if self.model is not model:
            self.model.eval()
        self.has_rnn = any(isinstance(m, nn.RNNBase) for m in self.model.modules())

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
        with autograd_on():
            self.base = {n: (p.detach().clone() if p.is_inference() else p.detach()) for n, p in named.items()}
            for n, bf in self.model.named_buffers():
                if bf.is_inference():
                    self.base[n] = bf.detach().clone()
        self.shapes = {n: tuple(named[n].shape) for n in self.names}

        # ---- structured candidates
        self.layers: list[Layer] = []
        self.fallback: list[str] = list(self.names)
        self.reject: dict[str, str] = {}
        if method in ("auto", "structured"):
            self._find_layers(named)
        self.clone_inputs = False

        # ---- inspect: output shape, structured checks, activation size
        with autograd_on():
            self.S, self.act = self._inspect()
        self.C = int(math.prod(self.S)) if self.S else 1
        C = self.C
        if class_weights is None:
            self.w = torch.ones(C, dtype=self.dtype, device=self.device)
        else:
            self.w = (class_weights.detach() if isinstance(class_weights, torch.Tensor)
                      else torch.as_tensor(np.asarray(class_weights, dtype=np.float64))).to(self.device, self.dtype).reshape(-1)
            if self.w.numel() != C:
                raise ValueError(f"class_weights has {self.w.numel()} entries, the model has C={C} output channels")
            if not torch.isfinite(self.w).all():
                raise ValueError("class_weights must be finite")
        self.channels = Channels(self.S, reduction, trace_axes, diagonal_axes, block, self.N1, self.N2,
                                 rectangular=self.x2 is not None)
        self.set_group(0)
        ch = self.channels
        kpl, kpr = self.left.kp if self.left.channels is not None else 1, self.right.kp if self.right.channels is not None else 1
        self.ch_shape = planner.ChannelShape(kpl, kpr, self.left.tr if self.left.channels is not None else 1,
                                             len(ch.groups), "pair" if ch.batch == "pair" else "diag")
        for L in self.layers:
            kind = "embedding" if L.kind == "embedding" else ("elementwise" if L.kind == "elementwise" else "linear")
            L.form = planner.choose_form(kind, L.merged_in if L.kind in ("linear", "conv") else L.n_in, L.n_out,
                                         L.positions, kpl, kpr, self.ch_shape.traced)
        self.plan = None
        if plan:
            self.plan = planner.choose(
                self.N1, None if self.x2 is None else self.N2, C, self.group_specs(), reduction or "full", self.dtype,
                by_layer=by_layer, symmetric=self.x2 is None, method=method,
                chunk_size=chunk_size, memory_budget=memory_budget, device=self.device,
                activation_per_example=self.act, channels=self.ch_shape,
                out_elems=int(math.prod(ch.out_shape())),
            )
            self.method = self.plan.method
            self.chunk = self.plan.chunk_size
            self.cache = self.plan.cache
            self.layout = self.plan.layout
            self.info.estimate = self.plan.summary()
            self.info.estimated_seconds = float(self.plan.seconds)
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
        self.symmetrize_after = self.mirror and self.method == "jacobian" and ch.batch == "pair"
        if self.symmetrize_after:
            self.mirror = False
        self.info.method, self.info.layout, self.info.chunk_size = self.method, self.layout, int(self.chunk)
        self.info.structured = {L.name or "<root>": L.describe() for L in self.layers}
        if self.method == "structured" and self.fallback:
            by_reason: dict[str, list[str]] = {}
            for n in self.fallback:
                by_reason.setdefault(self.reject.get(n, "no structured rule for this parameter"), []).append(n)
            for why, ns in by_reason.items():
                self.info.fallbacks.append({"params": ns, "path": "jacobian", "reason": why})
                log_once(f"fallback:{type(model).__name__}:{','.join(ns)}:{why}",
                         f"eNTK: {len(ns)} parameter(s) of {type(model).__name__} use the per-parameter Jacobian "
                         f"({why}): {', '.join(ns[:4])}{' ...' if len(ns) > 4 else ''}")
        if self.has_rnn and self.method in ("structured", "jacobian") and (self.fallback or self.method == "jacobian"):
            self.note_loop("per-example Jacobian", "the model contains a recurrent module (nn.RNNBase): vmap "
                                                   "is not used, one backward per example")

    def note_loop(self, where: str, reason: str) -> None:
        self.info.note_loop(where, reason)
        log_once(f"loop:{type(self.model).__name__}:{where}:{reason}",
                 f"eNTK: {where} of {type(self.model).__name__} runs as a loop ({reason})")

    def set_group(self, d: int) -> None:
        """Select diagonal group ``d``: its left and right :class:`Side`."""
        self.group_index = d
        self.left, self.right = self.channels.groups[d]
        self.mirror = self.x2 is None and self.left == self.right and self.channels.batch == "pair"
        if getattr(self, "symmetrize_after", False):
            self.mirror = False

    # ------------------------------------------------------------------ layers
    def _find_layers(self, named: dict[str, nn.Parameter]) -> None:
        usage: dict[int, list] = {}
        for mod in self.model.modules():
            for attr, p in mod._parameters.items():
                if p is not None:
                    usage.setdefault(id(p), []).append((mod, attr))
        modname = {id(m): n for n, m in self.model.named_modules()}
        chosen: dict[int, Layer] = {}
        for n in self.names:
            p = named[n]
            uses = usage.get(id(p), [])
            if len(uses) != 1:
                self.reject[n] = "parameter shared between modules (tied weights)"
                continue
            mod, attr = uses[0]
            mname = modname.get(id(mod), "")
            g = self.group_of[n]
            if isinstance(mod, nn.Linear) and type(mod).forward is nn.Linear.forward and attr in ("weight", "bias"):
                L = chosen.get(id(mod)) or chosen.setdefault(id(mod), Layer(mname, mod, "linear", g, None, None,
                                                                            mod.in_features, mod.out_features))
            elif _is_gpt2_conv1d(mod) and attr in ("weight", "bias"):
                L = chosen.get(id(mod)) or chosen.setdefault(id(mod), Layer(
                    mname, mod, "linear", g, None, None, mod.weight.shape[0], mod.weight.shape[1], transposed=True))
            elif isinstance(mod, (nn.Conv1d, nn.Conv2d)) and attr in ("weight", "bias"):
                setup = _conv_setup(mod)
                if setup is None:
                    self.reject[n] = "convolution with groups, a non-zero padding mode or a custom forward"
                    continue
                L = chosen.get(id(mod)) or chosen.setdefault(id(mod), Layer(
                    mname, mod, "conv", g, None, None, int(math.prod(mod.weight.shape[1:])), mod.out_channels,
                    conv=setup))
            elif (isinstance(mod, nn.Embedding) and type(mod).forward is nn.Embedding.forward and attr == "weight"
                  and mod.max_norm is None and not mod.scale_grad_by_freq):
                chosen[id(mod)] = Layer(mname, mod, "embedding", g, n, None, mod.num_embeddings, mod.embedding_dim,
                                        padding_idx=mod.padding_idx)
                continue
            elif _is_norm(mod) and attr in ("weight", "bias"):
                L = chosen.get(id(mod)) or chosen.setdefault(id(mod), Layer(mname, mod, "elementwise", g, None, None,
                                                                            1, p.numel()))
                L.attrs = L.attrs + ((attr, n),)
            else:
                continue
            if attr == "weight":
                L.w_name = n
            else:
                L.b_name = n
        self.layers = list(chosen.values())
        self._sync_fallback()

    def _sync_fallback(self) -> None:
        covered = {nm for L in self.layers for nm in self.layer_params(L)}
        self.fallback = [n for n in self.names if n not in covered]

    @staticmethod
    def layer_params(L: Layer) -> list[str]:
        if L.kind == "elementwise":
            return [full for _, full in L.attrs]
        return [nm for nm in (L.w_name, L.b_name) if nm]

    def group_specs(self) -> dict[str, list[planner.ParamSpec]]:
        specs: dict[str, list[planner.ParamSpec]] = {g: [] for g in self.groups}
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
            specs[self.group_of[n]].append(planner.ParamSpec(n, shape or self.shapes[n], kind, T))
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

    def struct_params(self) -> list[str]:
        return [nm for L in self.layers for nm in self.layer_params(L)]

    def _inspect(self) -> tuple[tuple[int, ...], float]:
        """Forward a few examples: output shape ``S``, checks of the structured rules, and
        saved activations per example (for the planner)."""
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
        bad: dict[int, str] = {}
        for L, calls in zip(self.layers, rec):
            good = True
            T = 0
            for a, _, y in calls:
                if not (isinstance(y, torch.Tensor) and a.ndim >= 1 and a.shape[0] == b and y.ndim >= 1 and y.shape[0] == b):
                    good = False
                    continue
                if L.kind == "linear":
                    good &= (a.ndim >= 2 and y.shape[:-1] == a.shape[:-1] and y.shape[-1] == L.n_out
                             and a.shape[-1] == L.n_in and a.is_floating_point())
                    T += math.prod(a.shape[1:-1])
                elif L.kind == "conv":
                    good &= (a.ndim == 2 + L.conv["dims"] and a.shape[1] * math.prod(L.conv["kernel"]) == L.n_in
                             and y.ndim == a.ndim and y.shape[1] == L.n_out and a.is_floating_point())
                    T += math.prod(y.shape[2:])
                elif L.kind == "embedding":
                    good &= tuple(y.shape[:-1]) == tuple(a.shape)
                    T += math.prod(a.shape[1:])
                else:
                    ok = y.shape == a.shape and a.is_floating_point()
                    for attr, _ in L.attrs:
                        q = getattr(L.module, attr)
                        ok = ok and q is not None and y.ndim > q.ndim and tuple(y.shape[y.ndim - q.ndim:]) == tuple(q.shape)
                    good &= ok
                    if ok:
                        q = getattr(L.module, L.attrs[0][0])
                        T += math.prod(y.shape[1:y.ndim - q.ndim])
            L.positions = max(1, T)
            if not good or not calls:
                bad[id(L)] = "layer applied to inputs the rule does not cover (not batch-first, or unused)" \
                    if calls else "layer not used by the forward pass"
        # gradient check: a random combination of outputs through autograd vs the rule
        gen = torch.Generator(device="cpu").manual_seed(12345)
        r = torch.randn(outf.shape, generator=gen, dtype=torch.float64).to(outf)
        ys = [y for L, calls in zip(self.layers, rec) if id(L) not in bad for (_, _, y) in calls]
        with torch.enable_grad():
            grads = torch.autograd.grad(outf, ys + [params[n] for n in pnames], r, allow_unused=True)
        gy, gp = list(grads[: len(ys)]), dict(zip(pnames, grads[len(ys):]))
        tol = {torch.float64: 1e-9, torch.float32: 1e-4}.get(self.dtype, 1e-2)
        k = 0
        for L, calls in zip(self.layers, rec):
            if id(L) in bad:
                continue
            recon: dict[str, torch.Tensor | None] = {}
            for a, _, y in calls:
                g = gy[k]
                k += 1
                if g is None:
                    continue
                for name, val in _rule_gradients(self, L, a.detach(), g.detach()).items():
                    recon[name] = val if recon.get(name) is None else recon[name] + val
            for name in self.layer_params(L):
                true_g, rec_g = gp[name], recon.get(name)
                tn = 0.0 if true_g is None else float(true_g.norm())
                rn = 0.0 if rec_g is None else float(rec_g.norm())
                if true_g is None or rec_g is None:
                    ok = tn == 0.0 and rn == 0.0
                else:
                    # norm modules may compute in float32 whatever the weights' dtype
                    # (transformers' Llama/Gemma RMSNorms): their rule can only agree with
                    # autograd to float32 precision
                    t = max(tol, 1e-5) if L.kind == "elementwise" else tol
                    ok = rec_g.shape == true_g.shape and float((rec_g - true_g).norm()) <= t * max(tn, 1e-30)
                if not ok:
                    bad[id(L)] = "the structured rule disagrees with autograd (the parameter is also used " \
                                 "outside its module, or the module computes something else)"
        for L in self.layers:
            if id(L) in bad:
                for n in self.layer_params(L):
                    self.reject[n] = bad[id(L)]
        self.layers = [L for L in self.layers if id(L) not in bad]
        self._sync_fallback()
        return S, act


def _rule_gradients(ctx: Ctx, L: Layer, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gradient of ``⟨g, y⟩`` w.r.t. the layer's parameters by the structured rule, for
    one call with input ``a`` and output cotangent ``g``."""
    out: dict[str, torch.Tensor] = {}
    if L.kind in ("linear", "conv"):
        if L.kind == "conv":
            A = unfold_patches(L, a).reshape(-1, L.n_in)
            G = g.reshape(g.shape[0], L.n_out, -1).transpose(1, 2).reshape(-1, L.n_out)
        else:
            A, G = a.reshape(-1, L.n_in), g.reshape(-1, L.n_out)
        if L.w_name:
            W = (A.T @ G) if L.transposed else (G.T @ A)
            out[L.w_name] = W.reshape(ctx.shapes[L.w_name])
        if L.b_name:
            out[L.b_name] = G.sum(0).reshape(ctx.shapes[L.b_name])
    elif L.kind == "embedding":
        tok = a.reshape(-1)
        g2 = g.reshape(-1, L.n_out)
        if L.padding_idx is not None:
            g2 = g2 * (tok != L.padding_idx).to(g2.dtype)[:, None]
        out[L.w_name] = torch.zeros(L.n_in, L.n_out, dtype=g2.dtype, device=g2.device).index_add_(0, tok, g2)
    else:
        for attr, full in L.attrs:
            D = _elementwise_deriv(ctx, L, attr, full, a)
            q = ctx.shapes[full]
            out[full] = (g * D).reshape(-1, *q).sum(0)
    return out


def _elementwise_deriv(ctx: Ctx, L: Layer, attr: str, full: str, a: torch.Tensor) -> torch.Tensor:
    """``∂y/∂q · 1`` for an elementwise parameter ``q`` (``y``'s shape): by forward mode."""
    own = {at: ctx.base[fn] for at, fn in L.attrs}
    q0 = own[attr]

    def f(q):
        return functional_call(L.module, {**own, attr: q}, (a,))

    with torch.no_grad():
        _, D = jvp(f, (q0,), (torch.ones_like(q0),))
    return D


# ------------------------------------------------------------------ cotangents
def _cotangents(ctx: Ctx, out: torch.Tensor, ys: list[torch.Tensor], side: Side, retain: bool = False) -> list:
    """Cotangents at each ``y`` for the side's channels: list of ``(CL, *y.shape)``
    (``None`` where ``y`` does not influence the output)."""
    B, C = out.shape
    w = ctx.w
    if not ys:
        return []
    if side.channels is None:
        go = (w / C).expand(B, C)
        gs = torch.autograd.grad(out, ys, go, allow_unused=True, retain_graph=retain)
        return [None if g is None else g.unsqueeze(0) for g in gs]
    cls = torch.tensor(side.channels, device=out.device)
    CL = len(side.channels)
    go = torch.zeros(CL, B, C, dtype=out.dtype, device=out.device)
    go[torch.arange(CL, device=out.device), :, cls] = w[cls][:, None]
    if CL == 1:
        gs = torch.autograd.grad(out, ys, go[0], allow_unused=True, retain_graph=retain)
        return [None if g is None else g.unsqueeze(0) for g in gs]
    # a few channels of a model with large activations (convolutions): one backward per
    # channel is faster than vmap's batched backward; otherwise batch the channels
    big = CL <= 32 and B * ctx.act >= 2e6
    if not ctx.has_rnn and not big:
        try:
            gs = torch.autograd.grad(out, ys, go, is_grads_batched=True, allow_unused=True, retain_graph=True)
            return list(gs)
        except (RuntimeError, NotImplementedError) as e:
            ctx.note_loop("batched cotangents", _reason(e))
    elif ctx.has_rnn:
        ctx.note_loop("batched cotangents", "the model contains a recurrent module: one backward per channel")
    res: list = [None] * len(ys)
    for k in range(CL):
        gk = torch.autograd.grad(out, ys, go[k], allow_unused=True, retain_graph=retain or k < CL - 1)
        for i, g in enumerate(gk):
            if g is None:
                continue
            if res[i] is None:
                res[i] = torch.zeros((CL,) + tuple(g.shape), dtype=g.dtype, device=g.device)
            res[i][k] = g
    return res


@dataclass
class Fwd:
    """A retained forward pass: outputs ``(B, C)`` and, per structured layer, its calls
    ``[(input, output)]`` (outputs still attached to the graph)."""

    out: torch.Tensor
    calls: list
    ys: list


def struct_forward(ctx: Ctx, x: Batch) -> Fwd:
    B = x.n
    params = ctx.params(ctx.struct_params())
    with torch.enable_grad(), ctx.capture(ctx.layers) as rec:
        out = ctx.forward(params, x)
    ys, calls = [], []
    for L, cl in zip(ctx.layers, rec):
        calls.append([(a, y) for a, _, y in cl])
        for a, _, y in cl:
            if a.shape[0] != B or y.shape[0] != B:
                raise RuntimeError(f"layer {L.name!r} received a non-batch-first input {tuple(a.shape)}")
            ys.append(y)
    return Fwd(out, calls, ys)


def layer_inputs(ctx: Ctx, fwd: Fwd) -> list:
    """Per structured layer, its inputs ``A (B, T, I)`` (linear, conv patches), token ids
    ``(B, T)`` (embedding), or ``{param: ∂y/∂q (B, T, D)}`` (elementwise); positions of all
    calls concatenated."""
    B = fwd.out.shape[0]
    res = []
    with torch.no_grad():
        for L, calls in zip(ctx.layers, fwd.calls):
            if L.kind == "elementwise":
                d = {}
                for attr, full in L.attrs:
                    Ds = [_elementwise_deriv(ctx, L, attr, full, a).reshape(B, -1, math.prod(ctx.shapes[full]))
                          for a, _ in calls]
                    d[full] = Ds[0] if len(Ds) == 1 else torch.cat(Ds, 1)
                res.append(d)
                continue
            if L.kind == "linear":
                As = [a.reshape(B, -1, L.n_in) for a, _ in calls]
            elif L.kind == "conv":
                As = [unfold_patches(L, a) for a, _ in calls]
            else:
                As = [a.reshape(B, -1) for a, _ in calls]
            res.append(As[0] if len(As) == 1 else torch.cat(As, 1))
    return res


def struct_grads(ctx: Ctx, fwd: Fwd, side: Side, retain: bool = False) -> list[torch.Tensor]:
    """Per structured layer, the cotangents ``G (CL, B, T, O)`` at its outputs for the
    side's channels (class weights applied; zero at embedding padding tokens)."""
    B = fwd.out.shape[0]
    with torch.enable_grad():
        gs = _cotangents(ctx, fwd.out, fwd.ys, side, retain=retain)
    CL = side.width()
    res, k = [], 0
    for L, calls in zip(ctx.layers, fwd.calls):
        Gs = []
        for a, y in calls:
            g = gs[k]
            k += 1
            if g is None:
                g = torch.zeros((CL,) + tuple(y.shape), dtype=ctx.dtype, device=ctx.device)
            if L.kind == "conv":
                Gs.append(g.reshape(CL, B, L.n_out, -1).transpose(2, 3))
            else:
                Gs.append(g.reshape(CL, B, -1, L.n_out))
        G = Gs[0] if len(Gs) == 1 else torch.cat(Gs, 2)
        if L.kind == "embedding" and L.padding_idx is not None and calls:
            tok = torch.cat([a.reshape(B, -1) for a, _ in calls], 1)
            G = G * (tok != L.padding_idx).to(G.dtype)[None, :, :, None]
        res.append(G.detach())
    return res


def layer_factors(ctx: Ctx, x: Batch, side: Side) -> list[tuple[Layer, torch.Tensor, Any]]:
    """For each structured layer: ``G (CL, B, T, O)`` (cotangents, class weights applied)
    and its inputs (see :func:`layer_inputs`)."""
    if not ctx.layers:
        return []
    fwd = struct_forward(ctx, x)
    Gs = struct_grads(ctx, fwd, side)
    return list(zip(ctx.layers, Gs, layer_inputs(ctx, fwd)))


def per_example_jacobian(ctx: Ctx, names: list[str], x: Batch, side: Side) -> dict[str, torch.Tensor]:
    """``{name: (CL, B, P_i)}``: per-example Jacobians of the side's (weighted) channels
    w.r.t. the named parameters, via ``vmap(jacrev(functional_call))`` (possibly
    non-contiguous views); a per-example loop when vmap cannot batch the model."""
    if not names:
        return {}
    B = x.n
    C, w = ctx.C, ctx.w
    base = ctx.params()
    sub = {n: base[n] for n in names}
    cls = None if side.channels is None else torch.tensor(side.channels, device=ctx.device)
    CL = side.width()

    def rows(out):
        if cls is None:
            return ((out * w).sum(-1) / C)[..., None]
        return out[..., cls] * w[cls]

    if not ctx.has_rnn:
        def f_single(p, *leaves):
            out = ctx.forward({**base, **p}, x, [t.unsqueeze(0) for t in leaves]).reshape(-1)
            return rows(out)

        try:
            jac = vmap(jacrev(f_single), in_dims=(None,) + (0,) * len(x.leaves))(sub, *x.leaves)
            return {n: jac[n].reshape(B, CL, -1).transpose(0, 1) for n in names}   # views, no copy
        except (RuntimeError, NotImplementedError) as e:
            ctx.note_loop("per-example Jacobian", _reason(e))
    # models that vmap cannot batch: one backward per example (batched over channels)
    res = {n: torch.empty(CL, B, math.prod(ctx.shapes[n]), dtype=ctx.dtype, device=ctx.device) for n in names}
    eye = torch.eye(CL, dtype=ctx.dtype, device=ctx.device)
    for i in range(B):
        with torch.enable_grad():
            p = {n: sub[n].detach().requires_grad_(True) for n in names}
            xi = x.slice(i, i + 1)
            r = rows(ctx.forward({**base, **p}, xi).reshape(-1))
            plist = [p[n] for n in names]
            try:
                gr = torch.autograd.grad(r, plist, eye, is_grads_batched=True, allow_unused=True)
                gr = [None if g is None else g.reshape(CL, -1) for g in gr]
            except (RuntimeError, NotImplementedError):
                per = [torch.autograd.grad(r[k], plist, retain_graph=True, allow_unused=True) for k in range(CL)]
                gr = [None if per[0][j] is None else torch.stack([q[j].reshape(-1) for q in per])
                      for j in range(len(names))]
            for n, g in zip(names, gr):
                res[n][:, i] = 0 if g is None else g
    return res


# ---------------------------------------------------------------------- factors
def keys(ctx: Ctx) -> list[str]:
    return list(ctx.groups) if ctx.by_layer else [ALL]


def key_of(ctx: Ctx, group: str) -> str:
    return group if ctx.by_layer else ALL


def flat_layout(J: torch.Tensor, side: Side) -> torch.Tensor:
    """``(CL, B, P)`` -> ``(kp·B, tr·P)``: kept channels (major) and examples in rows,
    traced channels and parameters in columns."""
    CL, B, P = J.shape
    kp, tr = (1, 1) if side.channels is None else (side.kp, side.tr)
    if tr == 1:
        return J.reshape(CL * B, P)
    return J.reshape(kp, tr, B, P).permute(0, 2, 1, 3).reshape(kp * B, tr * P)


def elementwise_jacobians(L: Layer, G: torch.Tensor, D: dict) -> dict[str, torch.Tensor]:
    """``{param: (CL, B, numel)}`` = ``Σ_t G_t ⊙ ∂y_t/∂q`` for an elementwise layer."""
    return {full: (G * D[full][None]).sum(2) for _, full in L.attrs}


def prepare_layer(L: Layer, G: torch.Tensor, A: Any, side: Side, prune: bool = True):
    """Turn one layer's ``G (CL, B, T, O)`` and inputs into a contraction term:

    * ``("flat", J)`` with per-example gradients ``J (CL, B, P)`` (bias-only layers,
      elementwise layers and the per-example form ``Σ_t g_t a_tᵀ``);
    * ``("pair", kind, Gl, Al, idx)`` with ``Gl`` ``(T', kp·B, tr·O)``, ``Al`` ``(T', B, I)`` /
      ``(T', B)`` and ``idx`` the kept positions (positions whose cotangents vanish for
      every example and channel are dropped).
    """
    CL, B, T, O = G.shape
    if L.kind == "elementwise":
        Js = list(elementwise_jacobians(L, G, A).values())
        return ("flat", Js[0] if len(Js) == 1 else torch.cat(Js, 2))
    if L.w_name is None:                                   # bias only
        return ("flat", G.sum(2))
    if L.kind in ("linear", "conv") and L.b_name is not None:
        A = torch.cat([A, torch.ones(A.shape[:-1] + (1,), dtype=A.dtype, device=A.device)], -1)
    idx = None
    if prune and T > 1 and L.form != "perex":
        keep = G.abs().amax(dim=(0, 1, 3)) > 0
        if not bool(keep.all()):
            idx = keep.nonzero().flatten()
            G, A = G[:, :, idx], A[:, idx]
            T = G.shape[2]
    if L.form == "perex":
        if L.kind == "embedding":
            J = torch.einsum("cbto,btv->cbvo", G, F.one_hot(A, L.n_in).to(G.dtype))
        else:
            J = torch.einsum("cbto,bti->cboi", G, A)
        return ("flat", J.reshape(CL, B, -1))
    kp, tr = (1, 1) if side.channels is None else (side.kp, side.tr)
    Gl = G.reshape(kp, tr, B, T, O).permute(3, 0, 2, 1, 4).reshape(T, kp * B, tr * O)
    Al = A.transpose(0, 1).contiguous()
    if idx is None:
        idx = torch.arange(T)
    return ("pair", "embedding" if L.kind == "embedding" else "linear", Gl, Al, idx.tolist())


def fallback_jacobian(ctx: Ctx, x: Batch, side: Side) -> dict[str, torch.Tensor]:
    """Per-example Jacobians of the fallback parameters, over input chunks: ``{name: (CL, N, P_i)}``."""
    if not ctx.fallback:
        return {}
    parts = [per_example_jacobian(ctx, ctx.fallback, x.slice(a, b), side) for a, b in ranges(x.n, ctx.chunk)]
    if len(parts) == 1:
        return parts[0]
    return {n: torch.cat([p[n] for p in parts], 1) for n in ctx.fallback}


@dataclass
class Fac:
    """Factors of one chunk for one output key.

    ``flat``: per-example gradient rows ``(kp·B, tr·P)``. ``pairs``: ``(kind, G, A)`` with
    ``G`` ``(T, kp·B, tr·O)`` and ``A`` ``(T, B, I)`` (linear inputs) or ``(T, B)`` (token
    ids). ``per_param``: jacobian method, ``[(C, B, P_i)]``. ``x``: ntk_vp method, the
    raw chunk.
    """

    flat: torch.Tensor | None = None
    pairs: list = field(default_factory=list)
    per_param: list = field(default_factory=list)
    x: Batch | None = None


def structured_factors(ctx: Ctx, x: Batch, side: Side) -> dict[str, Fac]:
    """Factors of ``x`` (processed in input chunks of ``ctx.chunk``) for every output key."""
    facs = {k: Fac() for k in keys(ctx)}
    flats: dict[str, list[torch.Tensor]] = {k: [] for k in facs}
    chunks = ranges(x.n, ctx.chunk)
    if ctx.layers:
        parts = []
        for a, b in chunks:
            lf = layer_factors(ctx, x.slice(a, b), side)
            # elementwise and perex layers collapse to small per-example Jacobians per chunk
            part = []
            for L, G, A in lf:
                if L.kind == "elementwise" or L.form == "perex" or L.w_name is None:
                    part.append(("flat", prepare_layer(L, G, A, side)[1]))
                else:
                    part.append(("raw", G, A))
            parts.append(part)
            del lf
        for li, L in enumerate(ctx.layers):
            key = key_of(ctx, L.group)
            if parts[0][li][0] == "flat":
                J = parts[0][li][1] if len(parts) == 1 else torch.cat([p[li][1] for p in parts], 1)
                flats[key].append(J)
                continue
            if len(parts) == 1:
                _, G, A = parts[0][li]
            else:
                G = torch.cat([p[li][1] for p in parts], 1)
                A = torch.cat([p[li][2] for p in parts], 0)
            term = prepare_layer(L, G, A, side)
            if term[0] == "flat":
                flats[key].append(term[1])
            else:
                facs[key].pairs.append(term[1:4])
        del parts
    for n, J in fallback_jacobian(ctx, x, side).items():
        flats[key_of(ctx, ctx.group_of[n])].append(J)
    for k, js in flats.items():
        if js:
            facs[k].flat = flat_layout(torch.cat(js, 2) if len(js) > 1 else js[0], side)
    return facs
