"""Model inputs as pytrees, and chunks of them (a private module of :mod:`entk_core.engine`).

:class:`Batch` holds ``x1`` or ``x2``: a tensor, or a (nested) tuple / list / dict of
tensors sharing the leading batch axis ``N``, with non-tensor leaves passed unchanged. It
slices, casts and rebuilds them, and says how to call the model (``model(x)``,
``model(*x)`` or ``model(**x)``). :func:`call_model` calls a model functionally on a batch,
:func:`model_output` picks the ``(N, *S)`` output tensor, :func:`ranges` cuts ``N`` inputs
into near-equal chunks.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["Batch", "call_model", "model_output", "ranges"]


def ranges(n: int, b: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` covering ``range(n)`` in near-equal chunks of at most ``b``."""
    k = max(1, math.ceil(n / max(1, b)))
    size = math.ceil(n / k)
    return [(i, min(n, i + size)) for i in range(0, n, size)]


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
    """``model`` called functionally with ``params`` on ``batch`` (its leaves replaced by
    ``leaves`` when given, e.g. one example's under ``vmap``)."""
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
