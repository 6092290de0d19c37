"""What one forward and one backward of a model cost: operations, flops and bytes (a private
module of :mod:`entk_core.engine`; the planner's input, see :mod:`.costs`).

:func:`profile_model` runs the model's forward and a full backward (to the selected
parameters) under a counting dispatch mode at two batch sizes, and returns a
:class:`ModelProfile`: per pass the number of kernels launched (``ops``; constant in the
batch size), the matrix-product flops (``torch.utils.flop_counter``'s formulas: mm, bmm,
addmm, convolutions, attention) and the bytes each kernel reads and writes, each split into
a per-example part and a fixed part (the weights read, the parameter gradients written) by
the difference between the two batch sizes. It knows nothing of layer rules, so every path's
cost (and :func:`~entk_core.engine.kernels.estimate_ntk`, whatever ``method`` is asked) is
computed from the same numbers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["ModelProfile", "Pass", "count_ops", "guess_profile", "profile_model"]


@dataclass(frozen=True)
class Pass:
    """One pass (forward, or backward to the parameters): ``ops`` kernels; ``flops`` and
    ``bytes`` per example (``*_fixed``: independent of the batch size)."""

    ops: float = 0.0
    flops: float = 0.0
    bytes: float = 0.0
    flops_fixed: float = 0.0
    bytes_fixed: float = 0.0

    def at(self, batch: float) -> tuple[float, float]:
        """``(flops, bytes)`` of the pass on ``batch`` examples."""
        return self.flops_fixed + batch * self.flops, self.bytes_fixed + batch * self.bytes


@dataclass(frozen=True)
class ModelProfile:
    """Forward and backward costs of a model on its inputs (see the module docstring).
    ``measured``: counted from the model (``False``: guessed from the parameter shapes)."""

    fwd: Pass
    bwd: Pass
    measured: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _attention_flops(name: str, args: tuple) -> float:
    """Matrix-product flops of a CPU attention kernel the flop counter does not know."""
    q, k = args[0], args[1]
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor)) or q.ndim < 2:
        return 0.0
    n = q.numel() // max(1, q.shape[-1])
    per = 4.0 * n * k.shape[-2] * q.shape[-1]
    return per * (2.5 if "backward" in name else 1.0)


def _nbytes(t: torch.Tensor) -> int:
    try:
        return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


class _Count(TorchDispatchMode):
    """Counts kernels (view and metadata operations excluded), flops and bytes moved."""

    def __init__(self):
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self.registry = flop_registry
        self.ops = 0
        self.flops = 0.0
        self.bytes = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "is_view", False) or func.overloadpacket.__name__ in ("detach", "alias", "lift_fresh"):
            return out
        self.ops += 1
        packet = func.overloadpacket
        if packet in self.registry:
            try:
                self.flops += float(self.registry[packet](*args, **kwargs, out_val=out))
            except Exception:  # noqa: BLE001 - an unusual signature: no flops counted
                pass
        elif "scaled_dot_product" in packet.__name__:
            self.flops += _attention_flops(packet.__name__, args)
        leaves, _ = tree_flatten((args, kwargs, out))
        self.bytes += float(sum(_nbytes(t) for t in leaves if isinstance(t, torch.Tensor)))
        return out


def _one(run: Callable[[int], tuple[torch.Tensor, list[torch.Tensor]]], b: int) -> tuple[tuple, tuple]:
    """``((ops, flops, bytes) of the forward, same of the backward)`` on ``b`` examples."""
    with _Count() as f:
        out, params = run(b)
    g = torch.ones_like(out)
    with _Count() as bw:
        torch.autograd.grad(out, params, g, allow_unused=True)
    return (f.ops, f.flops, f.bytes), (bw.ops, bw.flops, bw.bytes)


def _split(small: tuple, large: tuple, b1: int, b2: int) -> Pass:
    ops = max(small[0], large[0])
    per_f = max(0.0, (large[1] - small[1]) / (b2 - b1))
    per_b = max(0.0, (large[2] - small[2]) / (b2 - b1))
    return Pass(float(ops), per_f, per_b, max(0.0, small[1] - b1 * per_f), max(0.0, small[2] - b1 * per_b))


def profile_model(run: Callable[[int], tuple[torch.Tensor, list[torch.Tensor]]], n: int) -> ModelProfile:
    """Profile ``run(b) -> (outputs, parameters)`` (a forward of the first ``b`` inputs with
    the selected parameters as leaves needing grad), at ``b = 1`` and ``b = 2`` when
    ``n >= 2`` (else ``b = 1``, all counted per example)."""
    with torch.enable_grad():
        if n >= 2:
            f1, b1 = _one(run, 1)
            f2, b2 = _one(run, 2)
            return ModelProfile(_split(f1, f2, 1, 2), _split(b1, b2, 1, 2))
        f1, b1 = _one(run, 1)
    return ModelProfile(Pass(f1[0], f1[1], f1[2]), Pass(b1[0], b1[1], b1[2]))


def count_ops(fn: Callable[[], Any]) -> int:
    """Kernels launched by ``fn()`` (views and metadata operations excluded)."""
    with _Count() as c:
        fn()
    return c.ops


def guess_profile(specs: list, act: float, itemsize: int) -> ModelProfile:
    """A :class:`ModelProfile` guessed from the parameters alone (no model to run: direct
    planner calls): a matrix product per weight and position, activations ``act`` per
    example read and written a few times, three kernels per parameter."""
    fl = 0.0
    for p in specs:
        fl += 2.0 * p.positions * p.numel if p.kind in ("linear_weight", "other", "embedding") else p.positions * p.numel
    P = float(sum(p.numel for p in specs))
    ops = 3.0 * max(1, len(specs))
    fwd = Pass(ops, fl, 3.0 * act * itemsize, 0.0, P * itemsize)
    bwd = Pass(2 * ops, 2 * fl, 6.0 * act * itemsize, 0.0, 2 * P * itemsize)
    return ModelProfile(fwd, bwd, measured=False)
