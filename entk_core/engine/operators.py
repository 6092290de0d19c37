"""The flattened eNTK without (or before) forming it: Jacobian, operators, top-k spectrum.

Conventions: for a model with output ``(N, *S)`` (``C = prod(S)`` channels, see
:mod:`entk_core.engine.kernels`) and inputs ``x`` (``N`` examples; a tensor or a tuple /
dict of tensors), the *flattened Jacobian* ``J`` has shape ``(C·N, P)`` with
**class-major** rows (row ``c·N + n`` holds ``w_c ∂f_c(x_n)/∂θ``) and columns running over
the selected parameters in registration order, each flattened row-major. The flattened
kernel is ``K = J Jᵀ`` ``(C·N, C·N)``, equal to ``empirical_ntk(model, x,
reduction="flat")``. Vectors acted on by :class:`KernelOperator` are class-major of length
``C·N``.

Eigenpairs follow :mod:`entk_core.engine.spectra`: eigenvalues descending, float64 ``(k,)``;
eigenvectors float64 ``(C·N, k)``, unit columns, largest-magnitude entry positive.

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

Top-k strategy (:func:`flat_top_eigenpairs`, ``method="auto"``): the planner estimates the
seconds and bytes of each path and runs the fastest that fits (:func:`estimate_top_eigenpairs`):

* ``"gram"`` (``P < C·N``): the nonzero spectrum of ``J Jᵀ`` is that of the ``P × P`` Gram
  matrix ``Jᵀ J``; eigenvectors map back as ``J u / √λ`` (:func:`gram_eigenpairs`).
* ``"dense"``: the kernel, then a dense eigendecomposition (small ``C·N``).
* ``"lanczos"``: block Lanczos with full reorthogonalisation
  (:func:`entk_core.engine.krylov.block_lanczos`) on the cheapest operator that fits: the
  structured one, a formed kernel, or the vjp one; products in float64. Converged to a
  relative residual of ``tol`` (default 1e-6: eigenvalues within ~1e-6 relative).
* ``"iterative"``: scipy's ``eigsh`` (ARPACK) on :class:`KernelOperator` (the previous
  default, kept as a baseline).

Every path reports ``progress(done, total, message)`` (also inside the eigensolver) and
stops when the callback raises.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import jvp, vjp, vmap

from . import planner
from ._ctx import (
    Ctx,
    KernelInfo,
    Layer,
    Side,
    autograd_on,
    elementwise_jacobians,
    eval_mode,
    layer_factors,
    no_tf32,
    per_example_jacobian,
    ranges,
)
from .kernels import empirical_ntk
from .krylov import block_lanczos, to_numpy_pairs
from .planner import MemoryBudgetError, Plan, format_bytes
from .spectra import fix_signs, top_eigenpairs

__all__ = [
    "KernelOperator",
    "TOPK_METHODS",
    "estimate_top_eigenpairs",
    "flat_jacobian",
    "flat_top_eigenpairs",
    "gram_eigenpairs",
]

TOPK_METHODS = ("auto", "gram", "dense", "lanczos", "iterative")
DENSE_MAX = 12_000


def _flat_ctx(model, x, class_weights, groups, dtype, device, check_finite=True, allow_train_mode=True,
              stacklevel=5) -> Ctx:
    with no_tf32(), autograd_on():
        return Ctx(model, x, None, reduction="flat", class_weights=class_weights, groups=groups,
                   method="structured", dtype=dtype, device=device, plan=False, check_finite=check_finite,
                   allow_train_mode=allow_train_mode, warn_stacklevel=stacklevel)


def _all_side(ctx: Ctx) -> Side:
    return Side(tuple(range(ctx.C)), ctx.C, 1)


def _layer_columns(ctx: Ctx, L: Layer, G: torch.Tensor, A: Any) -> dict[str, torch.Tensor]:
    """Explicit per-example Jacobian columns of one structured layer: ``{param: (C, B, numel)}``
    in the parameter's own (row-major) layout."""
    C, B = G.shape[0], G.shape[1]
    out: dict[str, torch.Tensor] = {}
    if L.kind == "elementwise":
        return elementwise_jacobians(L, G, A)
    if L.w_name:
        if L.kind == "embedding":
            Jw = torch.einsum("cbto,btv->cbvo", G, F.one_hot(A, L.n_in).to(G.dtype))
        elif L.transposed:
            Jw = torch.einsum("cbto,bti->cbio", G, A)
        else:
            Jw = torch.einsum("cbto,bti->cboi", G, A)
        out[L.w_name] = Jw.reshape(C, B, -1)
    if L.b_name:
        out[L.b_name] = G.sum(2)
    return out


def _param_offsets(ctx: Ctx) -> tuple[dict[str, tuple[int, int]], int]:
    offs, P = {}, 0
    for n in ctx.names:
        offs[n] = (P, P + math.prod(ctx.shapes[n]))
        P = offs[n][1]
    return offs, P


def _jacobian_from_ctx(ctx: Ctx, chunk_size: int | None, memory_budget, progress=None) -> torch.Tensor:
    C, N = ctx.C, ctx.N1
    offs, P = _param_offsets(ctx)
    budget = planner.resolve_budget(memory_budget, ctx.device)
    need = C * N * P * ctx.dtype.itemsize
    if need > budget:
        raise MemoryBudgetError(
            f"flat_jacobian(N={N}, C={C}, P={P}, {str(ctx.dtype).replace('torch.', '')}) needs about "
            f"{format_bytes(need)} but the memory budget is {format_bytes(budget)}; what would fit: "
            f"at most {max(1, budget // max(1, C * P * ctx.dtype.itemsize))} inputs, one layer group, or the "
            f"matrix-free KernelOperator (mode='vjp')")
    J = torch.empty(C, N, P, dtype=ctx.dtype, device=ctx.device)
    per_ex = max(1, 4 * C * P + 8 * C * int(ctx.act))
    B = int(chunk_size) if chunk_size else max(1, min(N, int((budget - need) // 4 // (per_ex * ctx.dtype.itemsize))))
    side = _all_side(ctx)
    chunks = ranges(N, B)
    ctx.chunk = B
    for ci, (a, b) in enumerate(chunks):
        xs = ctx.x1.slice(a, b)
        for L, G, A in layer_factors(ctx, xs, side):
            for n, Jn in _layer_columns(ctx, L, G, A).items():
                o0, o1 = offs[n]
                J[:, a:b, o0:o1] = Jn
        for n, Jn in per_example_jacobian(ctx, ctx.fallback, xs, side).items():
            o0, o1 = offs[n]
            J[:, a:b, o0:o1] = Jn
        if progress is not None:
            progress(ci + 1, len(chunks), f"Jacobian chunk {ci + 1}/{len(chunks)}")
    return J.reshape(C * N, P)


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
    ctx = _flat_ctx(model, x, class_weights, groups, dtype, device)
    with no_tf32(), autograd_on(), eval_mode(ctx.model):
        return _jacobian_from_ctx(ctx, chunk_size, memory_budget, progress)


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
    float64 ``J`` for more. Eigenvalues at or below ``rtol · λ_max`` are numerical zeros:
    they are returned as 0 and their vectors are not meaningful.

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
    with no_tf32():
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


# ------------------------------------------------------------ structured operator
@dataclass
class _Factored:
    """One factored layer of the structured operator: ``Gn (N, C, T·O)`` and ``A (N·T, I)``
    (features; a constant-1 column when the bias is merged) or token ids ``(N·T,)``."""

    kind: str          # "linear" | "embedding"
    Gn: torch.Tensor
    A: torch.Tensor
    T: int
    O: int
    I: int


def _factored_cost(L: Layer, C: int, N: int) -> tuple[float, float, float, float]:
    """(factored flops/vector, factored elements, explicit flops/vector, explicit elements)."""
    T, O = L.positions, L.n_out
    I = L.merged_in if L.kind in ("linear", "conv") else 1
    fac_el = C * N * T * O + N * T * (I if L.kind != "embedding" else 1)
    P = O * (L.n_in if L.kind != "embedding" else L.n_in) + (O if L.b_name else 0)
    if L.kind == "embedding":
        fac_fl = 4.0 * C * N * T * O + 4.0 * N * T * O
    else:
        fac_fl = 4.0 * N * T * O * (C + I)
    return fac_fl, float(fac_el), 4.0 * C * N * P, float(C * N * P)


class _StructuredOp:
    """``K = J Jᵀ`` from per-layer factors of all inputs (see the module docstring)."""

    def __init__(self, ctx: Ctx, op_dtype: torch.dtype, chunk: int, progress=None):
        C, N = ctx.C, ctx.N1
        self.C, self.N, self.dtype, self.device = C, N, op_dtype, ctx.device
        side = _all_side(ctx)
        self.factored = []
        choice = {}
        for L in ctx.layers:
            if L.kind == "elementwise":
                choice[id(L)] = False
                continue
            ff, fe, ef, ee = _factored_cost(L, C, N)
            choice[id(L)] = ff < ef
        offs_names = [n for L in ctx.layers if not choice[id(L)] for n in ctx.layer_params(L)] + list(ctx.fallback)
        Pexp = sum(math.prod(ctx.shapes[n]) for n in offs_names)
        offs, p = {}, 0
        for n in offs_names:
            offs[n] = (p, p + math.prod(ctx.shapes[n]))
            p = offs[n][1]
        self.Jexp = torch.empty(C, N, Pexp, dtype=op_dtype, device=ctx.device) if Pexp else None
        parts_G: dict[int, list] = {id(L): [] for L in ctx.layers if choice[id(L)]}
        parts_A: dict[int, list] = {id(L): [] for L in ctx.layers if choice[id(L)]}
        chunks = ranges(N, chunk)
        for ci, (a, b) in enumerate(chunks):
            xs = ctx.x1.slice(a, b)
            for L, G, A in layer_factors(ctx, xs, side):
                if choice[id(L)]:
                    parts_G[id(L)].append(G.to(op_dtype))
                    if L.kind in ("linear", "conv") and L.b_name:
                        A = torch.cat([A, torch.ones(A.shape[:-1] + (1,), dtype=A.dtype, device=A.device)], -1)
                    parts_A[id(L)].append(A.to(op_dtype) if A.is_floating_point() else A)
                else:
                    for n, Jn in _layer_columns(ctx, L, G, A).items():
                        o0, o1 = offs[n]
                        self.Jexp[:, a:b, o0:o1] = Jn
            for n, Jn in per_example_jacobian(ctx, ctx.fallback, xs, side).items():
                o0, o1 = offs[n]
                self.Jexp[:, a:b, o0:o1] = Jn
            if progress is not None:
                progress(ci + 1, len(chunks), f"eNTK factors, chunk {ci + 1}/{len(chunks)}")
        for L in ctx.layers:
            if not choice[id(L)]:
                continue
            G = torch.cat(parts_G.pop(id(L)), 1)                   # (C, N, T, O)
            A = torch.cat(parts_A.pop(id(L)), 0)                   # (N, T, I) or (N, T)
            T, O = G.shape[2], G.shape[3]
            Gn = G.permute(1, 0, 2, 3).reshape(N, C, T * O).contiguous()
            del G
            if L.kind == "embedding":
                self.factored.append(_Factored("embedding", Gn, A.reshape(-1), T, O, L.n_in))
            else:
                self.factored.append(_Factored("linear", Gn, A.reshape(N * T, -1).contiguous(), T, O, A.shape[-1]))
        if self.Jexp is not None:
            self.Jexp = self.Jexp.reshape(C * N, Pexp)
        self.flops_per_vector = sum((4.0 * N * f.T * f.O * (C + (f.I if f.kind == "linear" else 1))) for f in self.factored)
        self.flops_per_vector += 4.0 * C * N * Pexp
        self.explicit_params = Pexp

    def nbytes(self) -> int:
        n = sum(f.Gn.numel() * f.Gn.element_size() + f.A.numel() * f.A.element_size() for f in self.factored)
        if self.Jexp is not None:
            n += self.Jexp.numel() * self.Jexp.element_size()
        return int(n)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        C, N = self.C, self.N
        k = V.shape[1]
        V = V.to(self.dtype)
        out = self.Jexp @ (self.Jexp.T @ V) if self.Jexp is not None else torch.zeros_like(V)
        if not self.factored:
            return out
        Vn = V.T.reshape(k, C, N).permute(2, 0, 1).contiguous()          # (N, k, C)
        acc = torch.zeros(N, C, k, dtype=self.dtype, device=V.device)
        for f in self.factored:
            T, O = f.T, f.O
            Gv = torch.bmm(Vn, f.Gn)                                       # (N, k, T·O)
            if f.kind == "linear" and T == 1:
                U = Gv.view(N, k * O).T @ f.A                              # (k·O, I): Jᵀ v as weights
                Y = (f.A @ U.T).view(N, k, O).transpose(1, 2)              # (N, O, k) view
            elif f.kind == "linear":
                Gt = Gv.view(N, k, T, O).permute(1, 3, 0, 2).reshape(k * O, N * T)
                U = Gt @ f.A
                Y = (f.A @ U.T).view(N, T, k, O).permute(0, 1, 3, 2).reshape(N, T * O, k)
            else:
                U = torch.zeros(k, f.I, O, dtype=self.dtype, device=V.device)
                U.index_add_(1, f.A, Gv.view(N, k, T, O).permute(1, 0, 2, 3).reshape(k, N * T, O))
                Y = U[:, f.A].view(k, N, T, O).permute(1, 2, 3, 0).reshape(N, T * O, k)
            acc.baddbmm_(f.Gn, Y)                                          # (N, C, k)
        return out + acc.permute(1, 0, 2).reshape(C * N, k)


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
        self._ctx = ctx = _flat_ctx(model, x, class_weights, groups, dtype, device)
        self.C, self.N = ctx.C, ctx.N1
        self.P = sum(math.prod(ctx.shapes[n]) for n in ctx.names)
        self.shape = (self.C * self.N, self.C * self.N)
        self.dtype = ctx.dtype
        self.op_dtype = op_dtype or ctx.dtype
        budget = planner.resolve_budget(memory_budget, ctx.device)
        if mode == "auto":
            mode = "structured" if _structured_bytes(ctx, self.op_dtype) <= budget // 2 else "vjp"
        self.mode = mode
        self.chunk = int(chunk_size) if chunk_size else max(1, min(self.N, 256))
        self.J = None
        self._op = None
        self.info = ctx.info
        self.info.path = f"operator:{mode}"
        if mode == "jacobian":
            with no_tf32(), autograd_on(), eval_mode(ctx.model):
                self.J = _jacobian_from_ctx(ctx, chunk_size, memory_budget, progress).to(self.op_dtype)
        elif mode == "structured":
            need = _structured_bytes(ctx, self.op_dtype)
            if need > budget:
                raise MemoryBudgetError(
                    f"KernelOperator(mode='structured', N={self.N}, C={self.C}) needs about {format_bytes(need)} "
                    f"but the memory budget is {format_bytes(budget)}; what would fit: mode='vjp'")
            ctx.chunk = self.chunk
            with no_tf32(), autograd_on(), eval_mode(ctx.model):
                self._op = _StructuredOp(ctx, self.op_dtype, self.chunk, progress)
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


def _structured_bytes(ctx: Ctx, op_dtype: torch.dtype) -> int:
    """Bytes of the structured operator's factors (and explicit columns) in ``op_dtype``."""
    C, N = ctx.C, ctx.N1
    el = 0.0
    for L in ctx.layers:
        if L.kind == "elementwise":
            el += C * N * sum(math.prod(ctx.shapes[n]) for n in ctx.layer_params(L))
            continue
        ff, fe, ef, ee = _factored_cost(L, C, N)
        el += fe if ff < ef else ee
    el += C * N * sum(math.prod(ctx.shapes[n]) for n in ctx.fallback)
    return int(el * op_dtype.itemsize)


def _structured_flops(ctx: Ctx) -> float:
    C, N = ctx.C, ctx.N1
    fl = 0.0
    for L in ctx.layers:
        if L.kind == "elementwise":
            fl += 4.0 * C * N * sum(math.prod(ctx.shapes[n]) for n in ctx.layer_params(L))
            continue
        ff, _, ef, _ = _factored_cost(L, C, N)
        fl += min(ff, ef)
    fl += 4.0 * C * N * sum(math.prod(ctx.shapes[n]) for n in ctx.fallback)
    return fl


# ----------------------------------------------------------------- top-k planning
def _lanczos_shape(R: int, k: int) -> tuple[int, int, int]:
    """(block, max basis, expected products) of :func:`block_lanczos` for the top ``k`` of
    an ``R × R`` operator: measured on the modular-addition MLP (k = 200: ~2,300 products,
    block 50) and synthetic spectra; rough."""
    b = max(8, min(64, k // 4))
    basis = int(min(R, max(15 * k, k + 16 * b)))
    products = int(min(R * 1.0, 12 * k + 20 * b)) if R > k + 2 * b else R
    return b, basis, products


def _lanczos_seconds(R: int, k: int, flops_per_vector: float, rates: planner.Rates) -> tuple[float, int]:
    """(seconds, bytes) of the Lanczos iteration itself (products excluded from bytes)."""
    b, basis, products = _lanczos_shape(R, k)
    g64 = rates.gemm_rate("float64")
    orth = 4.0 * R * 0.5 * min(basis, products) * products * 1.5
    m_end = min(basis, products)
    checks = 2.0 * 9.0 * m_end ** 3          # checks every 25% of growth: ~2 eigh of the final size
    t = (products * flops_per_vector + orth + checks) / g64
    mem = R * (basis + b) * 8 + (basis + b) ** 2 * 8 + 4 * R * b * 8
    return t, int(mem)


def _fb_seconds(ctx: Ctx, rates: planner.Rates, sides: int = 1) -> float:
    """Seconds of the forward + per-channel backward passes over all inputs (the factors)."""
    fp = 0.0
    for specs in ctx.group_specs().values():
        for p in specs:
            fp += 2 * p.positions * p.numel if p.kind in ("linear_weight", "other") else p.positions * p.numel
    return sides * ctx.N1 * max(fp, 1.0) * (1 + 2 * ctx.C) / rates.autograd_rate(ctx.dtype)


def _plan_topk(ctx: Ctx, k: int, method: str, memory_budget, tol: float) -> Plan:
    C, N = ctx.C, ctx.N1
    R = C * N
    P = sum(math.prod(ctx.shapes[n]) for n in ctx.names)
    s = ctx.dtype.itemsize
    budget = planner.resolve_budget(memory_budget, ctx.device)
    rates = planner.machine_rates(ctx.device)
    g, g64 = rates.gemm_rate(ctx.dtype), rates.gemm_rate("float64")
    t_fac = _fb_seconds(ctx, rates)
    paths: dict[str, dict] = {}
    out_bytes = (R * k + k) * 8
    # gram: J (R, P), Jᵀ J (P, P) in float64, eigh(P), back-map
    jb = R * P * s
    if P < R:
        paths["gram"] = {"bytes": int(2 * jb + 3 * P * P * 8 + out_bytes), "seconds": t_fac + 2.0 * R * P * P / g
                         + planner.eigh_seconds(P, rates) + 2.0 * R * P * k / g, "operator": "jacobian"}
    else:   # J Jᵀ formed from the explicit J, then a dense eigendecomposition
        paths["gram"] = {"bytes": int(jb + 4 * R * R * 8 + out_bytes), "seconds": t_fac + 2.0 * R * R * P / g
                         + planner.eigh_seconds(R, rates), "operator": "jacobian"}
    # the formed flat kernel (structured path) and its cost
    try:
        kp = planner.estimate(N, None, C, ctx.group_specs(), "flat", ctx.dtype, method="structured",
                              memory_budget=budget, device=ctx.device, activation_per_example=ctx.act)
        t_kernel, b_kernel, kfits = kp.seconds, kp.bytes, kp.fits
    except ValueError:
        t_kernel, b_kernel, kfits = math.inf, math.inf, False
    if R <= DENSE_MAX or method == "dense":
        paths["dense"] = {"bytes": int(max(b_kernel, R * R * s) + 3 * R * R * 8 + out_bytes),
                          "seconds": t_kernel + planner.eigh_seconds(R, rates), "operator": "kernel",
                          "fits_kernel": kfits}
    # Lanczos on each operator
    lan: dict[str, dict] = {}
    sb = _structured_bytes(ctx, torch.float64)
    t_l, b_l = _lanczos_seconds(R, k, _structured_flops(ctx), rates)
    lan["structured"] = {"bytes": int(sb + b_l + out_bytes), "seconds": t_fac + t_l}
    t_l2, b_l2 = _lanczos_seconds(R, k, 2.0 * R * R, rates)
    lan["kernel"] = {"bytes": int(max(b_kernel, R * R * s) + R * R * 8 + b_l2 + out_bytes),
                     "seconds": t_kernel + R * R * 8 / 2e9 + t_l2}
    fp = _fb_seconds(ctx, rates) / max(1, 1 + 2 * C) * 6.0 * g / g64
    t_l3, b_l3 = _lanczos_seconds(R, k, 0.0, rates)
    _, _, products = _lanczos_shape(R, k)
    lan["vjp"] = {"bytes": int(b_l3 + 4 * P * 8 * 64 + min(256, N) * (ctx.act + C) * s * 4 * 64 + out_bytes),
                  "seconds": t_l3 + products * fp}
    fit_ops = {o: v for o, v in lan.items() if v["bytes"] <= budget}
    best_op = min(fit_ops or lan, key=lambda o: (fit_ops or lan)[o]["seconds"])
    paths["lanczos"] = {**lan[best_op], "operator": best_op, "operators": lan}
    # iterative (ARPACK) on the auto operator, for the record
    op_mode = "structured" if _structured_bytes(ctx, ctx.dtype) <= budget // 2 else "vjp"
    flops_it = _structured_flops(ctx) if op_mode == "structured" else products * fp * g64
    ncv = _ncv(k, R)
    it_products = 6 * k + 3 * ncv
    paths["iterative"] = {"bytes": int((ncv + 4) * R * 8 + _structured_bytes(ctx, ctx.dtype) + out_bytes),
                          "seconds": t_fac + it_products * (flops_it / g + 2 * R * 1e-9 * ncv)
                          + 4.0 * R * ncv * ncv / g64 * max(1, it_products // ncv), "operator": op_mode}
    for v in paths.values():
        v["fits"] = v["bytes"] <= budget
        v["seconds"] = float(v["seconds"])
    desc = (f"flat_top_eigenpairs(N={N}, C={C}, P={P}, k={k}, {str(ctx.dtype).replace('torch.', '')}, "
            f"{len(ctx.groups)} group{'s' if len(ctx.groups) != 1 else ''})")
    if method == "auto":
        cands = [m for m in ("gram", "dense", "lanczos") if m in paths and paths[m]["fits"]]
        if k >= R - 1 and "dense" in paths and paths["dense"]["fits"]:
            cands = ["dense"]
        chosen = min(cands, key=lambda m: paths[m]["seconds"]) if cands else None
    else:
        chosen = method if method in paths and paths[method]["fits"] else None
        if method == "dense" and "dense" not in paths:
            chosen = None
    if chosen is None:
        m = method if method != "auto" else min(paths, key=lambda q: paths[q]["bytes"])
        p = paths.get(m, paths["lanczos"])
        plan = Plan(None, N, False, p["bytes"], out_bytes, 0.0, p["seconds"], budget, False, paths, {}, desc,
                    device=str(ctx.device), rates=rates.source)
        plan.suggestion = _topk_refusal(ctx, m, R, P, k, p["bytes"], budget)
        return plan
    p = paths[chosen]
    name = chosen if chosen != "lanczos" else f"lanczos ({p['operator']} operator)"
    return Plan(name, N, False, p["bytes"], out_bytes, 0.0, p["seconds"], budget, True, paths, {}, desc,
                layout=p.get("operator", ""), device=str(ctx.device), rates=rates.source)


def estimate_top_eigenpairs(
    model: torch.nn.Module,
    x: Any,
    k: int,
    *,
    class_weights: torch.Tensor | Iterable[float] | None = None,
    groups: Iterable[str] | str | None = None,
    method: str = "auto",
    dtype: torch.dtype | None = None,
    device: Any = None,
    memory_budget: int | float | str | None = None,
    tol: float = 1e-6,
) -> Plan:
    """The :class:`~entk_core.engine.planner.Plan` of :func:`flat_top_eigenpairs` with the
    same arguments, without computing anything but a forward of 4 inputs:
    ``plan.method`` is the path that would run (e.g. ``"lanczos (structured operator)"``),
    ``plan.seconds`` and ``plan.bytes`` its estimates, ``plan.paths`` every path's,
    ``plan.summary()`` one line. Never raises for budget reasons (see ``plan.fits``)."""
    if method not in TOPK_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {TOPK_METHODS}")
    ctx = _flat_ctx(model, x, class_weights, groups, dtype, device, stacklevel=4)
    return _plan_topk(ctx, max(1, min(int(k), ctx.C * ctx.N1)), method, memory_budget, tol)


def flat_top_eigenpairs(
    model: torch.nn.Module,
    x: Any,
    k: int,
    *,
    class_weights: torch.Tensor | Iterable[float] | None = None,
    groups: Iterable[str] | str | None = None,
    method: str = "auto",
    dtype: torch.dtype | None = None,
    device: Any = None,
    memory_budget: int | float | str | None = None,
    progress=None,
    tol: float = 1e-6,
    seed: int = 0,
    return_info: bool = False,
):
    """Top-``k`` eigenpairs of the flattened (class-major) eNTK ``(C·N, C·N)``.

    ``method``: ``"auto"`` (the fastest path that fits, see the module docstring),
    ``"gram"``, ``"dense"``, ``"lanczos"`` or ``"iterative"`` (scipy ``eigsh`` on
    :class:`KernelOperator`). ``tol``: relative residual of the Lanczos path. ``progress``:
    ``progress(done, total, message)`` during every phase (factors, kernel tiles,
    eigensolver iterations); raising in it cancels. ``device``: where the work runs.

    Returns:
      ``(vals (k,), vecs (C·N, k))`` float64 numpy on the CPU, descending, signs fixed;
      ``(vals, vecs, info)`` with ``return_info=True`` (:class:`KernelInfo`; ``info.path``
      names the path, ``info.estimate`` the planner's line).
    """
    if method not in TOPK_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {TOPK_METHODS}")
    t0 = time.perf_counter()
    ctx = _flat_ctx(model, x, class_weights, groups, dtype, device)
    C, N = ctx.C, ctx.N1
    R = C * N
    k = max(1, min(int(k), R))
    plan = _plan_topk(ctx, k, method, memory_budget, tol)
    if not plan.fits:
        raise MemoryBudgetError(plan.suggestion)
    info: KernelInfo = ctx.info
    info.estimate = plan.summary()
    info.estimated_seconds = float(plan.seconds)
    chosen = plan.method.split(" ")[0]
    info.path = plan.method
    if chosen == "gram":
        with no_tf32(), autograd_on(), eval_mode(ctx.model):
            J = _jacobian_from_ctx(ctx, None, memory_budget, progress)
        vals, vecs = gram_eigenpairs(J, k)
        info.method = "structured"
    elif chosen == "dense" or (chosen == "lanczos" and k >= R - 1):
        K, kinfo = empirical_ntk(model, x, reduction="flat", class_weights=class_weights, groups=groups, dtype=dtype,
                                 device=device, memory_budget=memory_budget, progress=progress, return_info=True,
                                 check_finite=False)
        if progress is not None:
            progress(0, 1, f"eigendecomposition of the {R}x{R} kernel")
        vals, vecs = top_eigenpairs(K.cpu(), k)
        info.method, info.layout, info.chunk_size = kinfo.method, kinfo.layout, kinfo.chunk_size
        info.loops += [x_ for x_ in kinfo.loops if x_ not in info.loops]
    elif chosen == "lanczos":
        vals, vecs = _lanczos(ctx, model, x, k, plan, class_weights, groups, dtype, device, memory_budget, progress,
                              tol, seed, info)
    else:
        from scipy.sparse.linalg import eigsh

        op = KernelOperator(model, x, class_weights=class_weights, groups=groups, dtype=dtype, device=device,
                            mode=plan.paths["iterative"]["operator"], memory_budget=memory_budget, progress=progress)
        count = [0]

        def mv(v):
            count[0] += 1
            if progress is not None:
                progress(count[0], max(count[0] + 1, 6 * k + 3 * _ncv(k, R)), f"eigsh: {count[0]} products")
            return op.matvec(np.asarray(v, dtype=np.float64).reshape(-1))

        from scipy.sparse.linalg import LinearOperator

        lo = LinearOperator(op.shape, matvec=mv, rmatvec=mv, dtype=np.float64)
        vals, vecs = eigsh(lo, k=k, which="LA", ncv=_ncv(k, R))
        order = np.argsort(vals)[::-1]
        vals = np.asarray(vals[order], dtype=np.float64)
        vecs = fix_signs(np.ascontiguousarray(vecs[:, order], dtype=np.float64))
        info.method = op.info.method
        info.loops += [x_ for x_ in op.info.loops if x_ not in info.loops]
    info.seconds = time.perf_counter() - t0
    return (vals, vecs, info) if return_info else (vals, vecs)


def _lanczos(ctx, model, x, k, plan, class_weights, groups, dtype, device, memory_budget, progress, tol, seed,
             info) -> tuple[np.ndarray, np.ndarray]:
    R = ctx.C * ctx.N1
    opname = plan.paths["lanczos"]["operator"]
    info.layout = f"{opname} operator"
    b, basis, products = _lanczos_shape(R, k)
    if opname == "kernel":
        K, kinfo = empirical_ntk(model, x, reduction="flat", class_weights=class_weights, groups=groups, dtype=dtype,
                                 device=device, memory_budget=memory_budget, progress=progress, return_info=True,
                                 check_finite=False)
        Kd = K.to(torch.float64) if R * R * 8 + K.numel() * K.element_size() <= plan.budget else K
        del K
        info.method = kinfo.method

        def matmat(V):
            return Kd @ V.to(Kd.dtype)
    else:
        op = KernelOperator(model, x, class_weights=class_weights, groups=groups, dtype=dtype, device=device,
                            mode=opname, memory_budget=memory_budget, op_dtype=torch.float64 if opname == "structured"
                            else None, progress=progress)
        info.method = op.info.method

        def matmat(V):
            return op.matmat(V)

    def prog(done, total, msg):
        if progress is not None:
            progress(done, total, msg)

    with no_tf32():
        res = block_lanczos(matmat, R, k, block=b, tol=tol, max_basis=basis, max_products=max(4 * products, 40 * k),
                            device=ctx.device, seed=seed, progress=prog)
    info.solver = {"products": res.products, "restarts": res.restarts, "basis": res.basis,
                    "converged": res.converged, "max_rel_residual": float(
                        (res.residuals / res.values.abs().clamp_min(1e-300)).max())}
    if not res.converged:
        info.loops.append({"where": "block Lanczos", "reason": f"not converged to tol={tol:g} after {res.products} "
                                                                f"products; eigenpairs may be inaccurate"})
    vals, vecs = to_numpy_pairs(res)
    return vals, fix_signs(vecs)


def _ncv(k: int, R: int) -> int:
    return min(R, max(2 * k + 1, 20))


def _topk_refusal(ctx: Ctx, method: str, R: int, P: int, k: int, need: int, budget: int) -> str:
    C, N = ctx.C, ctx.N1
    s = ctx.dtype.itemsize
    tips = []
    per_input = C * (((_ncv(k, R) + 4) * 8) + (P * s if method in ("gram", "dense") else 0))
    fixed = 3 * P * s + min(256, N) * (ctx.act + C) * s * 4
    n_fit = int((budget - fixed) // max(1, per_input))
    if 1 <= n_fit < N:
        tips.append(f"at most {n_fit} inputs")
    k_fit = int(((budget - fixed) // (R * 8) - 4 - 1) // 2)
    if method in ("iterative", "lanczos") and 1 <= k_fit < k:
        tips.append(f"top-k with k <= {k_fit}")
    if len(ctx.groups) > 1:
        tips.append("one layer group")
    if N * N * s * 3 <= budget:
        tips.append(f"reduction='trace' (an {N}x{N} kernel, {format_bytes(N * N * s)})")
    return (f"flat_top_eigenpairs(N={N}, C={C}, P={P}, k={k}, method={method!r}) needs about "
            f"{format_bytes(need)} but the memory budget is {format_bytes(budget)}; what would fit: "
            + ("; or ".join(tips) if tips else "nothing at this size; raise the budget"))
