"""The flattened eNTK without forming it: the Jacobian, and the kernel as an operator.

Conventions: for a model with output ``(N, *S)`` (``C = prod(S)`` channels, see
:mod:`entk_core.engine.kernels`) and inputs ``x`` (``N`` examples; a tensor or a tuple /
dict of tensors), the *flattened Jacobian* ``J`` has shape ``(C·N, P)`` with
**class-major** rows (row ``c·N + n`` holds ``w_c ∂f_c(x_n)/∂θ``) and columns running over
the selected parameters in registration order, each flattened row-major. The flattened
kernel is ``K = J Jᵀ`` ``(C·N, C·N)``, equal to ``empirical_ntk(model, x,
reduction="flat")``. Vectors acted on by :class:`KernelOperator` are class-major of length
``C·N``. Its top eigenpairs: :func:`entk_core.engine.eigenpairs.top_eigenpairs`.

Operators (:class:`KernelOperator` ``mode``)
-------------------------------------------
* ``"structured"`` -- ``K`` kept as per-layer factors of all inputs: for a Linear /
  convolution / embedding layer its output cotangents ``G (C, N, T, O)`` and inputs
  ``A (N, T, I)``, so ``Jᵀ v = Σ_{n,t} (Σ_c v_{cn} G_{cnt}) a_{nt}ᵀ`` and ``J u`` are a few GEMMs
  costing ``~4 N T O (C + I)`` flops per vector instead of ``2 (C·N)²`` for a formed kernel;
  layers whose explicit Jacobian is cheaper (convolutions, norm gains) and parameters
  without a rule are kept as explicit Jacobian columns.
* ``"jacobian"`` -- the explicit ``J`` (:func:`flat_jacobian`); ``K v = J (Jᵀ v)``.
* ``"vjp"`` -- never store anything per example: ``Jᵀ v`` by a vjp pass over input
  chunks, then ``J u`` by a jvp pass (the author's Lanczos operator).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import torch
from torch.func import jvp, vjp, vmap

from ._flat import StructuredOp, flat_ctx, jacobian_from_ctx, structured_bytes
from ._guards import autograd_on, eval_mode, no_tf32
from ._inputs import ranges
from .machine import resolve_budget
from .planner import MemoryBudgetError
from .units import format_bytes

__all__ = ["KernelOperator", "flat_jacobian"]


def flat_jacobian(
    model: torch.nn.Module,
    x: Any,
    *,
    class_weights: torch.Tensor | Iterable[float] | None = None,
    groups: Iterable[str] | str | None = None,
    dtype: torch.dtype | None = None,
    device: Any = None,
    chunk_size: int | None = None,
    memory_budget: int | float | str | None = None,
    progress=None,
) -> torch.Tensor:
    """The flattened Jacobian ``(C·N, P)``, class-major rows (row ``c·N + n``), weighted by
    ``class_weights`` (``(C,)``). Structured layers use their rule (``Σ_t g_t a_tᵀ``), other
    parameters ``vmap(jacrev)``. ``J @ J.T`` is the "flat" eNTK. Returned on the compute
    device (``device``, default ``$ENTK_DEVICE`` or the inputs' device)."""
    ctx = flat_ctx(model, x, class_weights, groups, dtype, device)
    with no_tf32(), autograd_on(), eval_mode(ctx.model):
        return jacobian_from_ctx(ctx, chunk_size, memory_budget, progress)


class KernelOperator:
    """The flattened eNTK ``K = J Jᵀ`` (``(C·N, C·N)``, class-major) as a matrix-free operator.

    ``mode``: ``"structured"`` (per-layer factors), ``"jacobian"`` (explicit ``J``),
    ``"vjp"`` (nothing stored), or ``"auto"`` (``"structured"`` when its factors take at
    most half the memory budget, else ``"vjp"``); see the module docstring. ``dtype``: the
    compute dtype of the factors (default the model's); ``op_dtype``: the dtype products
    are carried out in (default ``dtype``).

    ``matvec(v)`` takes ``(C·N,)`` and ``matmat(V)`` ``(C·N, k)``, numpy or torch (the
    result has the input's type; numpy results are float64 on the CPU).
    """

    def __init__(self, model: torch.nn.Module, x: Any, *, class_weights=None, groups=None,
                 dtype: torch.dtype | None = None, device: Any = None, mode: str = "auto",
                 chunk_size: int | None = None, memory_budget: int | float | str | None = None,
                 op_dtype: torch.dtype | None = None, progress=None):
        if mode not in ("auto", "structured", "jacobian", "vjp"):
            raise ValueError(f"unknown mode {mode!r}; expected 'auto', 'structured', 'jacobian' or 'vjp'")
        self._ctx = ctx = flat_ctx(model, x, class_weights, groups, dtype, device)
        self.C, self.N = ctx.C, ctx.N1
        self.device = ctx.device
        self.P = sum(math.prod(ctx.shapes[n]) for n in ctx.names)
        self.shape = (self.C * self.N, self.C * self.N)
        self.dtype = ctx.dtype
        self.op_dtype = op_dtype or ctx.dtype
        budget = resolve_budget(memory_budget, ctx.device)
        if mode == "auto":
            mode = "structured" if structured_bytes(ctx, self.op_dtype) <= budget // 2 else "vjp"
        self.mode = mode
        self.chunk = int(chunk_size) if chunk_size else max(1, min(self.N, 256))
        self.J = None
        self._op = None
        self.info = ctx.info
        self.info.path = f"operator:{mode}"
        if mode == "jacobian":
            with no_tf32(), autograd_on(), eval_mode(ctx.model):
                self.J = jacobian_from_ctx(ctx, chunk_size, memory_budget, progress).to(self.op_dtype)
        elif mode == "structured":
            need = structured_bytes(ctx, self.op_dtype)
            if need > budget:
                raise MemoryBudgetError(
                    f"KernelOperator(mode='structured', N={self.N}, C={self.C}) needs about {format_bytes(need)} "
                    f"but the memory budget is {format_bytes(budget)}; what would fit: mode='vjp'")
            ctx.chunk = self.chunk
            with no_tf32(), autograd_on(), eval_mode(ctx.model):
                self._op = StructuredOp(ctx, self.op_dtype, self.chunk, progress)
        ctx.info.method = "structured" if mode != "vjp" else "ntk_vp"

    @property
    def flops_per_vector(self) -> float:
        """Arithmetic of one product ``K v`` (rough)."""
        if self._op is not None:
            return self._op.flops_per_vector
        if self.J is not None:
            return 4.0 * self.shape[0] * self.P
        fp = max(1.0, 2.0 * self.P)
        return 6.0 * fp * self.N

    # ---------------------------------------------------------------- products
    def _vjp_jvp(self, V: torch.Tensor) -> torch.Tensor:
        ctx = self._ctx
        C, N, k = self.C, self.N, V.shape[1]
        base = ctx.params()
        sub = {n: base[n] for n in ctx.names}
        w = ctx.w
        Vc = V.T.reshape(k, C, N)

        def f(p, xs):
            return ctx.forward({**base, **p}, xs)

        U = {n: torch.zeros((k,) + tuple(t.shape), dtype=ctx.dtype, device=ctx.device) for n, t in sub.items()}
        chunks = ranges(N, self.chunk)
        for a, b in chunks:
            xs = ctx.x1.slice(a, b)
            _, vjp_fn = vjp(lambda p: f(p, xs), sub)
            cot = (Vc[:, :, a:b] * w[None, :, None]).transpose(1, 2)         # (k, B, C)
            g = None
            if not ctx.has_rnn:
                try:
                    (g,) = vmap(vjp_fn)(cot)
                except (RuntimeError, NotImplementedError) as e:
                    ctx.note_loop("operator vjp", f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}")
            if g is None:
                gs = [vjp_fn(c)[0] for c in cot]
                g = {n: torch.stack([gi[n] for gi in gs]) for n in sub}
            for n in U:
                U[n] += g[n]
        out = torch.empty(k, C, N, dtype=ctx.dtype, device=ctx.device)
        for a, b in chunks:
            xs = ctx.x1.slice(a, b)

            def jv(u):
                return jvp(lambda p: f(p, xs), (sub,), (u,))[1]

            y = None
            if not ctx.has_rnn:
                try:
                    y = vmap(jv)(U)                                           # (k, B, C)
                except (RuntimeError, NotImplementedError) as e:
                    ctx.note_loop("operator jvp", f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}")
            if y is None:
                y = torch.stack([jv({n: U[n][i] for n in U}) for i in range(k)])
            out[:, :, a:b] = (y * w[None, None, :]).transpose(1, 2)
        return out.reshape(k, C * N).T

    def matmat(self, V):
        """``K @ V`` for ``V`` of shape ``(C·N, k)``."""
        is_np = isinstance(V, np.ndarray)
        Vt = torch.as_tensor(V)
        if Vt.ndim != 2 or Vt.shape[0] != self.shape[0]:
            raise ValueError(f"expected a ({self.shape[0]}, k) matrix, got {tuple(Vt.shape)}")
        with no_tf32(), torch.no_grad():
            if self._op is not None:
                R = self._op.matmat(Vt.to(device=self._ctx.device, dtype=self.op_dtype))
            elif self.J is not None:
                Vj = Vt.to(device=self._ctx.device, dtype=self.J.dtype)
                R = self.J @ (self.J.T @ Vj)
            else:
                with autograd_on(), eval_mode(self._ctx.model):
                    R = self._vjp_jvp(Vt.to(device=self._ctx.device, dtype=self.dtype))
        if is_np:
            return R.detach().cpu().to(torch.float64).numpy()
        return R

    def matvec(self, v):
        """``K @ v`` for a class-major vector ``v`` of length ``C·N``."""
        is_np = isinstance(v, np.ndarray)
        vt = torch.as_tensor(v).reshape(-1, 1)
        r = self.matmat(vt.numpy() if is_np else vt)
        return r.reshape(-1)

    def __matmul__(self, other):
        o = torch.as_tensor(other) if not isinstance(other, np.ndarray) else other
        return self.matvec(o) if o.ndim == 1 else self.matmat(o)

    def as_linear_operator(self):
        """A ``scipy.sparse.linalg.LinearOperator`` (float64, symmetric)."""
        from scipy.sparse.linalg import LinearOperator

        def mv(v):
            return self.matvec(np.asarray(v, dtype=np.float64).reshape(-1))

        def mm(V):
            return self.matmat(np.asarray(V, dtype=np.float64))

        return LinearOperator(self.shape, matvec=mv, rmatvec=mv, matmat=mm, rmatmat=mm, dtype=np.float64)
