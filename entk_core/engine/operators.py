"""The flattened eNTK without (or before) forming it: Jacobian, operator, top-k spectrum.

Conventions: for a model ``f: (N, ...) -> (N, C)`` and inputs ``x (N, ...)``, the
*flattened Jacobian* ``J`` has shape ``(C·N, P)`` with **class-major** rows (row ``c·N + n``
holds ``w_c ∂f_c(x_n)/∂θ``) and columns running over the selected parameters in
registration order, each flattened row-major. The flattened kernel is ``K = J Jᵀ``
``(C·N, C·N)``, equal to ``empirical_ntk(model, x, reduction="flat")``. Vectors acted on
by :class:`KernelOperator` are class-major of length ``C·N``.

Eigenpairs follow :mod:`entk_core.engine.spectra`: eigenvalues descending, float64 ``(k,)``;
eigenvectors float64 ``(C·N, k)``, unit columns, largest-magnitude entry positive.

Top-k strategy (:func:`flat_top_eigenpairs`, ``method="auto"``):

* ``"gram"`` when ``P < C·N`` and ``J`` fits the memory budget: the nonzero spectrum of
  ``J Jᵀ`` equals that of the ``P × P`` Gram matrix ``Jᵀ J``; eigenvectors map back as
  ``J u / √λ`` (:func:`gram_eigenpairs`).
* ``"dense"`` when the ``(C·N)²`` kernel is small (``C·N <= 12,000`` and it fits): the
  kernel, then :func:`entk_core.engine.spectra.top_eigenpairs`.
* ``"iterative"`` otherwise: ``scipy.sparse.linalg.eigsh`` on the matrix-free
  :class:`KernelOperator`.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
from torch.func import functional_call, jvp, vjp, vmap

from . import planner
from .kernels import _Ctx, _eval_mode, _layer_factors, _no_tf32, _per_example_jacobian, _quiet, _ranges, empirical_ntk
from .planner import MemoryBudgetError
from .spectra import fix_signs, top_eigenpairs

__all__ = ["KernelOperator", "flat_jacobian", "flat_top_eigenpairs", "gram_eigenpairs"]

DENSE_MAX = 12_000


def _ctx(model, x, class_weights, groups, dtype) -> _Ctx:
    return _Ctx(model, x, None, reduction="flat", class_weights=class_weights, groups=groups,
                method="structured", dtype=dtype, plan=False)


def _jacobian_from_ctx(ctx: _Ctx, chunk_size: int | None, memory_budget) -> torch.Tensor:
    C, N = ctx.C, ctx.N1
    offs, P = {}, 0
    for n in ctx.names:
        offs[n] = (P, P + math.prod(ctx.shapes[n]))
        P = offs[n][1]
    budget = planner.resolve_budget(memory_budget, ctx.device)
    need = C * N * P * ctx.dtype.itemsize
    if need > budget:
        raise MemoryBudgetError(
            f"flat_jacobian(N={N}, C={C}, P={P}, {str(ctx.dtype).replace('torch.', '')}) needs about "
            f"{planner.format_bytes(need)} but the memory budget is {planner.format_bytes(budget)}; what would fit: "
            f"at most {max(1, budget // max(1, C * P * ctx.dtype.itemsize))} inputs, one layer group, or the "
            f"matrix-free KernelOperator (mode='vjp')")
    J = torch.empty(C, N, P, dtype=ctx.dtype, device=ctx.device)
    per_ex = max(1, 4 * C * P + 8 * C * int(ctx.act))
    B = int(chunk_size) if chunk_size else max(1, min(N, int((budget - need) // 4 // (per_ex * ctx.dtype.itemsize))))
    side = ctx.left
    for a, b in _ranges(N, B):
        xs = ctx.x1[a:b]
        for L, G, A in _layer_factors(ctx, xs, side):
            if L.w_name:
                o0, o1 = offs[L.w_name]
                if L.kind == "linear":
                    Jw = torch.einsum("cbto,bti->cboi", G, A)
                else:
                    Jw = torch.einsum("cbto,btv->cbvo", G, torch.nn.functional.one_hot(A, L.n_in).to(G.dtype))
                J[:, a:b, o0:o1] = Jw.reshape(C, b - a, -1)
            if L.b_name:
                o0, o1 = offs[L.b_name]
                J[:, a:b, o0:o1] = G.sum(2)
        for n, Jn in _per_example_jacobian(ctx, ctx.fallback, xs, side).items():
            o0, o1 = offs[n]
            J[:, a:b, o0:o1] = Jn
    return J.reshape(C * N, P)


def flat_jacobian(
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    class_weights: torch.Tensor | Iterable[float] | None = None,
    groups: Iterable[str] | str | None = None,
    dtype: torch.dtype | None = None,
    chunk_size: int | None = None,
    memory_budget: int | float | str | None = None,
) -> torch.Tensor:
    """The flattened Jacobian ``(C·N, P)``, class-major rows (row ``c·N + n``), weighted by
    ``class_weights`` (``(C,)``). Linear and Embedding weights use the structured rule
    (``Σ_t g_t a_tᵀ``), other parameters ``vmap(jacrev)``. ``J @ J.T`` is the "flat" eNTK."""
    with _no_tf32():
        ctx = _ctx(model, x, class_weights, groups, dtype)
        with _eval_mode(ctx.model):
            return _jacobian_from_ctx(ctx, chunk_size, memory_budget)


def gram_eigenpairs(
    J: torch.Tensor | np.ndarray,
    k: int,
    *,
    class_weights: torch.Tensor | np.ndarray | Iterable[float] | None = None,
    rtol: float = 1e-12,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` eigenpairs of ``K = J Jᵀ`` from an explicit ``J`` of shape ``(R, P)``.

    With ``class_weights`` (``(C,)``, ``R = C·N`` class-major rows), row block ``c`` is
    scaled by ``w_c`` first, so a caller can cache an unweighted ``J`` and sweep weights
    (e.g. TMS importance exponents β) cheaply. When ``P < R`` the ``P × P`` Gram matrix
    ``Jᵀ J`` is formed in ``J``'s precision, decomposed in float64, and eigenvectors map
    back as ``J u / ‖J u‖``; otherwise ``J Jᵀ`` is formed and decomposed densely. With a
    float32 ``J`` eigenvalues are accurate to ~1e-6 relative (times ``λ_max/λ_k``); pass a
    float64 ``J`` for more. Eigenvalues at or below
    ``rtol · λ_max`` are numerical zeros: they are returned as 0 and their vectors are
    not meaningful.

    Returns:
      ``(vals (k,), vecs (R, k))``, float64 numpy, descending, signs fixed.
    """
    Jt = torch.as_tensor(J).detach()
    if Jt.ndim != 2:
        raise ValueError(f"J must be (rows, P), got shape {tuple(Jt.shape)}")
    R, P = Jt.shape
    # products in J's precision (float64 stays float64), eigensolver always in float64
    wdt = torch.float64 if Jt.dtype == torch.float64 or not Jt.is_floating_point() else Jt.dtype
    Jw = Jt.to(wdt)
    if class_weights is not None:
        w = torch.as_tensor(np.asarray(class_weights, dtype=np.float64) if not isinstance(class_weights, torch.Tensor)
                            else class_weights.detach().cpu().double()).reshape(-1)
        C = w.numel()
        if R % C:
            raise ValueError(f"J has {R} rows, not a multiple of C={C} class weights")
        Jw = (Jw.view(C, R // C, P) * w.to(Jw.device, wdt)[:, None, None]).reshape(R, P)
    k = max(1, min(int(k), R))
    if P >= R:
        return top_eigenpairs((Jw @ Jw.T).double().cpu(), k)
    with _no_tf32():
        M = (Jw.T @ Jw).double().cpu()
        M = (M + M.T) * 0.5
        lam, U = torch.linalg.eigh(M)
    lam, U = lam.flip(0), U.flip(1)
    kk = min(k, P)
    lam, U = lam[:kk], U[:, :kk]
    V = (Jw @ U.to(Jw.device, wdt)).double().cpu()
    norms = V.norm(dim=0)
    zero = lam <= rtol * max(float(lam[0]), 0.0)
    V = V / torch.where(norms > 0, norms, torch.ones_like(norms))
    lam = torch.where(zero, torch.zeros_like(lam), lam.clamp_min(0.0))
    vals = lam.numpy().copy()
    vecs = np.ascontiguousarray(V.numpy())
    if kk < k:   # more requested than the rank bound P: pad with zero eigenvalues
        vals = np.concatenate([vals, np.zeros(k - kk)])
        vecs = np.concatenate([vecs, np.zeros((R, k - kk))], axis=1)
    return vals, fix_signs(vecs)


class KernelOperator:
    """The flattened eNTK ``K = J Jᵀ`` (``(C·N, C·N)``, class-major) as a matrix-free operator.

    ``mode``:

    * ``"jacobian"`` -- cache ``J`` (:func:`flat_jacobian`, ``C·N·P`` numbers); ``K v = J (Jᵀ v)``.
    * ``"vjp"`` -- never store ``J``: ``Jᵀ v`` by a vjp pass over input chunks, then
      ``J u`` by a jvp pass (the author's Lanczos operator).
    * ``"auto"`` -- ``"jacobian"`` when ``J`` takes at most half the memory budget.

    ``matvec(v)`` takes ``(C·N,)`` and ``matmat(V)`` ``(C·N, k)``, numpy or torch (the
    result has the input's type; numpy results are float64).
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, *, class_weights=None, groups=None,
                 dtype: torch.dtype | None = None, mode: str = "auto", chunk_size: int | None = None,
                 memory_budget: int | float | str | None = None):
        if mode not in ("auto", "jacobian", "vjp"):
            raise ValueError(f"unknown mode {mode!r}; expected 'auto', 'jacobian' or 'vjp'")
        with _no_tf32():
            self._ctx = ctx = _ctx(model, x, class_weights, groups, dtype)
        self.C, self.N = ctx.C, ctx.N1
        self.P = sum(math.prod(ctx.shapes[n]) for n in ctx.names)
        self.shape = (self.C * self.N, self.C * self.N)
        self.dtype = ctx.dtype
        budget = planner.resolve_budget(memory_budget, ctx.device)
        if mode == "auto":
            mode = "jacobian" if self.C * self.N * self.P * ctx.dtype.itemsize <= budget // 2 else "vjp"
        self.mode = mode
        self.chunk = int(chunk_size) if chunk_size else max(1, min(self.N, 256))
        self.J = None
        if mode == "jacobian":
            with _no_tf32(), _eval_mode(ctx.model):
                self.J = _jacobian_from_ctx(ctx, chunk_size, memory_budget)

    # ---------------------------------------------------------------- products
    def _vjp_jvp(self, V: torch.Tensor) -> torch.Tensor:
        ctx = self._ctx
        C, N, k = self.C, self.N, V.shape[1]
        base = ctx.params()
        sub = {n: base[n] for n in ctx.names}
        w = ctx.w
        Vc = V.T.reshape(k, C, N)

        def f(p, xs):
            return functional_call(ctx.model, {**base, **p}, (xs,)).reshape(xs.shape[0], -1)

        U = {n: torch.zeros((k,) + tuple(t.shape), dtype=ctx.dtype, device=ctx.device) for n, t in sub.items()}
        chunks = _ranges(N, self.chunk)
        for a, b in chunks:
            xs = ctx.x1[a:b]
            _, vjp_fn = vjp(lambda p: f(p, xs), sub)
            cot = (Vc[:, :, a:b] * w[None, :, None]).transpose(1, 2)         # (k, B, C)
            try:
                with _quiet():
                    (g,) = vmap(vjp_fn)(cot)
            except (RuntimeError, NotImplementedError):
                gs = [vjp_fn(c)[0] for c in cot]
                g = {n: torch.stack([gi[n] for gi in gs]) for n in sub}
            for n in U:
                U[n] += g[n]
        out = torch.empty(k, C, N, dtype=ctx.dtype, device=ctx.device)
        for a, b in chunks:
            xs = ctx.x1[a:b]

            def jv(u):
                return jvp(lambda p: f(p, xs), (sub,), (u,))[1]

            try:
                with _quiet():
                    y = vmap(jv)(U)                                           # (k, B, C)
            except (RuntimeError, NotImplementedError):
                y = torch.stack([jv({n: U[n][i] for n in U}) for i in range(k)])
            out[:, :, a:b] = (y * w[None, None, :]).transpose(1, 2)
        return out.reshape(k, C * N).T

    def matmat(self, V):
        """``K @ V`` for ``V`` of shape ``(C·N, k)``."""
        is_np = isinstance(V, np.ndarray)
        Vt = torch.as_tensor(V)
        if Vt.ndim != 2 or Vt.shape[0] != self.shape[0]:
            raise ValueError(f"expected a ({self.shape[0]}, k) matrix, got {tuple(Vt.shape)}")
        Vt = Vt.to(device=self._ctx.device, dtype=self.dtype)
        with _no_tf32(), torch.no_grad():
            if self.J is not None:
                R = self.J @ (self.J.T @ Vt)
            else:
                with _eval_mode(self._ctx.model):
                    R = self._vjp_jvp(Vt)
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


def flat_top_eigenpairs(
    model: torch.nn.Module,
    x: torch.Tensor,
    k: int,
    *,
    class_weights: torch.Tensor | Iterable[float] | None = None,
    groups: Iterable[str] | str | None = None,
    method: str = "auto",
    dtype: torch.dtype | None = None,
    memory_budget: int | float | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` eigenpairs of the flattened (class-major) eNTK ``(C·N, C·N)``.

    ``method``: ``"auto"`` (see the module docstring), ``"gram"``, ``"dense"`` or
    ``"iterative"`` (scipy ``eigsh`` on :class:`KernelOperator`).

    Returns:
      ``(vals (k,), vecs (C·N, k))`` float64 numpy, descending, signs fixed.
    """
    if method not in ("auto", "gram", "dense", "iterative"):
        raise ValueError(f"unknown method {method!r}; expected 'auto', 'gram', 'dense' or 'iterative'")
    with _no_tf32():
        ctx = _ctx(model, x, class_weights, groups, dtype)
    C, N = ctx.C, ctx.N1
    R = C * N
    P = sum(math.prod(ctx.shapes[n]) for n in ctx.names)
    k = max(1, min(int(k), R))
    s = ctx.dtype.itemsize
    budget = planner.resolve_budget(memory_budget, ctx.device)
    gram_bytes = R * P * s * 2 + P * P * 8 * 2
    dense_bytes = 3 * R * R * s
    iter_bytes, op_mode = _iterative_bytes(ctx, R, P, k, budget)
    if method == "auto":
        if P < R and gram_bytes <= budget:
            method = "gram"
        elif R <= DENSE_MAX and dense_bytes <= budget:
            method = "dense"
        else:
            method = "iterative"
    need = {"gram": gram_bytes, "dense": dense_bytes, "iterative": iter_bytes}[method]
    if need > budget:
        raise MemoryBudgetError(_topk_refusal(ctx, method, R, P, k, need, budget))
    if method == "gram":
        with _no_tf32(), _eval_mode(ctx.model):
            J = _jacobian_from_ctx(ctx, None, memory_budget)
        return gram_eigenpairs(J, k)
    if method == "dense" or k >= R - 1:
        K = empirical_ntk(model, x, reduction="flat", class_weights=class_weights, groups=groups, dtype=dtype,
                          memory_budget=memory_budget)
        return top_eigenpairs(K, k)
    from scipy.sparse.linalg import eigsh

    op = KernelOperator(model, x, class_weights=class_weights, groups=groups, dtype=dtype, mode=op_mode,
                        memory_budget=memory_budget)
    vals, vecs = eigsh(op.as_linear_operator(), k=k, which="LA", ncv=_ncv(k, R))
    order = np.argsort(vals)[::-1]
    vals = np.asarray(vals[order], dtype=np.float64)
    vecs = np.ascontiguousarray(vecs[:, order], dtype=np.float64)
    return vals, fix_signs(vecs)


def _ncv(k: int, R: int) -> int:
    return min(R, max(2 * k + 1, 20))


def _iterative_bytes(ctx: _Ctx, R: int, P: int, k: int, budget: int) -> tuple[int, str]:
    """Bytes of ``eigsh`` on the operator (Lanczos basis in float64 plus the operator) and
    the operator mode that needs them."""
    s = ctx.dtype.itemsize
    lanczos = (_ncv(k, R) + 4) * R * 8
    jac = R * P * s
    vjp = 3 * P * s + min(256, ctx.N1) * (ctx.act + ctx.C) * s * 4
    if jac <= budget // 2:
        return lanczos + jac, "jacobian"
    return lanczos + vjp, "vjp"


def _topk_refusal(ctx: _Ctx, method: str, R: int, P: int, k: int, need: int, budget: int) -> str:
    C, N = ctx.C, ctx.N1
    s = ctx.dtype.itemsize
    tips = []
    # fewer inputs: the iterative path scales linearly with N
    per_input = C * ((_ncv(k, R) + 4) * 8 + (P * s if method != "iterative" else 0))
    fixed = 3 * P * s + min(256, N) * (ctx.act + C) * s * 4
    n_fit = int((budget - fixed) // max(1, per_input))
    if 1 <= n_fit < N:
        tips.append(f"at most {n_fit} inputs")
    k_fit = int(((budget - fixed) // (R * 8) - 4 - 1) // 2)
    if method == "iterative" and 1 <= k_fit < k:
        tips.append(f"top-k with k <= {k_fit}")
    if len(ctx.groups) > 1:
        tips.append("one layer group")
    if N * N * s * 3 <= budget:
        tips.append(f"reduction='trace' (an {N}x{N} kernel, {planner.format_bytes(N * N * s)})")
    return (f"flat_top_eigenpairs(N={N}, C={C}, P={P}, k={k}, method={method!r}) needs about "
            f"{planner.format_bytes(need)} but the memory budget is {planner.format_bytes(budget)}; what would fit: "
            + ("; or ".join(tips) if tips else "nothing at this size; raise the budget"))
