"""Guards around kernel work (a private module of :mod:`entk_core.engine`).

Whatever the caller's state, kernel work runs the same way and leaves nothing changed:

* :func:`no_tf32` -- TF32 and reduced-precision float32 matmuls off (re-entrant, thread-safe);
* :func:`eval_mode` -- the module in eval mode for the duration, every mode restored after;
* :func:`autograd_on` -- autograd inside ``torch.no_grad()`` / ``torch.inference_mode()``;
* :func:`train_mode_modules`, :func:`refuse_or_warn_train_mode` -- batch norm with batch
  statistics or dropout in training mode: a :class:`~entk_core.engine.info.TrainModeWarning`
  (or a refusal);
* :func:`check_finite_inputs`, :func:`check_finite_model` -- NaN / inf named in one line;
* :func:`private_model` -- a copy of the module structure that kernel work may hook and
  switch to eval mode (parameters shared, not copied).

Also the engine's logger: :func:`log_once` and :func:`error_reason` (one line of an
exception for :class:`~entk_core.engine.info.KernelInfo`).
"""
from __future__ import annotations

import collections
import contextlib
import copy
import logging
import math
import threading
import warnings
from typing import Any

import torch
from torch import nn

from ._inputs import Batch
from .info import TrainModeWarning

__all__ = [
    "autograd_on", "check_finite_inputs", "check_finite_model", "error_reason", "eval_mode", "log", "log_once",
    "no_tf32", "private_model", "refuse_or_warn_train_mode", "train_mode_modules",
]

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


def error_reason(e: BaseException) -> str:
    """``"TypeName: first line of the message"`` (at most 200 characters of it)."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:200] if msg else ''}"


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


def refuse_or_warn_train_mode(model: nn.Module, allow: bool, stacklevel: int) -> list[str]:
    """The modules of ``model`` in a batch-dependent or random training mode
    (:func:`train_mode_modules`): a one-line ``ValueError`` when ``allow`` is false, else a
    :class:`~entk_core.engine.info.TrainModeWarning` (``stacklevel`` as for
    ``warnings.warn`` called here). Returns them (empty when there are none)."""
    trained = train_mode_modules(model)
    if trained:
        shown = ", ".join(trained[:3]) + (f" and {len(trained) - 3} more" if len(trained) > 3 else "")
        if not allow:
            raise ValueError(f"the model is in training mode with batch-dependent or random modules ({shown}); "
                             f"call model.eval() (or pass allow_train_mode=True to use eval mode)")
        warnings.warn(f"the model is in training mode with batch-dependent or random modules ({shown}); "
                      f"the eNTK is computed in eval mode (call model.eval() to silence this)",
                      TrainModeWarning, stacklevel=stacklevel)
    return trained


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
