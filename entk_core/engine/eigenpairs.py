"""Top-k eigenpairs of an eNTK, however it is given: :func:`top_eigenpairs`.

One entry point for every spectrum in the library. Conventions (as in
:mod:`entk_core.engine.spectra`): eigenvalues descending, float64 numpy ``(k,)``;
eigenvectors float64 numpy ``(n, k)`` on the CPU, unit columns, signs fixed so that each
column's largest-magnitude entry is positive (repeated runs give identical vectors).

Which path runs
---------------
=========================================  ====================================================
``kernel``                                  path
=========================================  ====================================================
a formed kernel, ``(n, n)`` tensor/array    ``"dense"``: ``eigh`` of ``(K + Kᵀ)/2`` (LAPACK divide and
                                            conquer), optional ridge
a factor ``J (R, P)`` with ``factor=True``  ``"gram"``: ``K = J Jᵀ`` from the ``P × P`` Gram matrix
                                            ``Jᵀ J`` when ``P < R`` (vectors ``J u / ‖J u‖``), else
                                            ``J Jᵀ`` densely; ``class_weights`` scale row blocks
an ``nn.Module`` with ``x=``                the flattened eNTK ``(C·N, C·N)`` (class-major, see
                                            :mod:`entk_core.engine.operators`) without forming it
                                            unless that is cheapest: ``method="auto"`` runs the
                                            fastest path that fits the memory budget among
                                            ``"gram"`` (explicit ``J``, ``P < C·N``), ``"dense"``
                                            (the formed kernel) and ``"lanczos"`` (block Lanczos on
                                            the cheapest operator: structured factors, the formed
                                            kernel, or vjp/jvp products); ``"iterative"`` (scipy's
                                            ``eigsh``) on request
an operator: a :class:`KernelOperator`,     ``"lanczos"``: block Lanczos with full reorthogonalisation
anything with ``matmat`` and ``shape``, or  to a relative residual ``tol``; with ``steps=m``: plain
a callable ``v -> K v`` with ``n=``         Lanczos for exactly ``m`` products (the paper's method:
                                            50 steps for the top 25)
=========================================  ====================================================

:func:`estimate_top_eigenpairs` costs the model path without computing it. Every path
reports ``progress(done, total, message)`` (also inside the eigensolver) and stops when
the callback raises.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ._flat import flat_ctx, jacobian_from_ctx
from ._guards import autograd_on, eval_mode, no_tf32
from ._lanczos import block_lanczos, lanczos_topk, to_numpy_pairs
from ._topk_plan import TOPK_METHODS, lanczos_shape, ncv, plan_topk
from .info import KernelInfo
from .kernels import empirical_ntk
from .operators import KernelOperator
from .planner import MemoryBudgetError, Plan
from .spectra import fix_signs

__all__ = ["TOPK_METHODS", "estimate_top_eigenpairs", "top_eigenpairs"]

_MODEL_ONLY = ("x", "groups", "dtype", "memory_budget")
_DENSE_ONLY = ("ridge", "vectors")


def top_eigenpairs(
    kernel: Any,
    k: int | None = None,
    *,
    x: Any = None,
    factor: bool = False,
    class_weights: torch.Tensor | np.ndarray | Iterable[float] | None = None,
    groups: Iterable[str] | str | None = None,
    method: str = "auto",
    dtype: torch.dtype | None = None,
    device: Any = None,
    memory_budget: int | float | str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    tol: float = 1e-6,
    seed: int = 0,
    steps: int | None = None,
    n: int | None = None,
    ridge: float = 0.0,
    vectors: bool = True,
    return_info: bool = False,
):
    """Top-``k`` eigenpairs of a symmetric PSD kernel, however it is given (see the module
    docstring for which path runs when).

    Args:
      kernel: a formed kernel ``(n, n)`` (tensor or array); a factor ``J (R, P)`` of
        ``K = J Jᵀ`` with ``factor=True``; a model (``nn.Module``, with ``x``); or an
        operator (:class:`~entk_core.engine.operators.KernelOperator`, an object with
        ``matmat(V (n, b)) -> (n, b)`` and ``shape``, or a callable ``v (n,) -> K v`` with ``n``).
      k: eigenpairs returned (default: all ``n`` for a formed kernel; required otherwise);
        clipped to the kernel's size.
      x: the model's inputs (``N`` examples, a tensor or a tuple / dict of tensors; model only).
      factor: ``kernel`` is ``J`` of ``K = J Jᵀ``.
      class_weights: ``(C,)``: rows of class ``c`` (class-major) are scaled by ``w_c``
        (model and factor only).
      groups: layer groups of the model to include (default all).
      method: model: ``"auto"``, ``"gram"``, ``"dense"``, ``"lanczos"`` or ``"iterative"``;
        other kernels: ``"auto"`` or their own path's name.
      dtype, device, memory_budget: the model's compute dtype, where the work runs, and the
        budget (bytes or ``"4GB"``; :class:`~entk_core.engine.planner.MemoryBudgetError`,
        one line, when no path fits).
      progress: ``progress(done, total, message)``; raising in it cancels.
      tol: relative residual of the block Lanczos path; seed: its start block.
      steps: operator only: plain Lanczos with exactly this many products.
      n: the size of a callable operator.
      ridge: formed kernel only: adds ``ridge · mean(diag K)`` to the diagonal.
      vectors: formed kernel only: ``False`` returns ``(vals, None)``.
      return_info: also return a :class:`~entk_core.engine.info.KernelInfo` (``info.path``
        names the path; ``info.estimate`` the planner's line; ``info.solver`` the Lanczos
        statistics).

    Returns:
      ``(vals (k,), vecs (n, k))`` float64 numpy on the CPU, descending, signs fixed
      (``n = C·N`` for a model, ``R`` for a factor); ``(vals, vecs, info)`` with
      ``return_info=True``.
    """
    given = {"x": x is not None, "groups": groups is not None, "dtype": dtype is not None,
             "memory_budget": memory_budget is not None, "ridge": bool(ridge), "vectors": not vectors,
             "class_weights": class_weights is not None, "steps": steps is not None, "n": n is not None}
    t0 = time.perf_counter()
    if isinstance(kernel, nn.Module):
        _refuse(given, "a model", _DENSE_ONLY + ("steps", "n"))
        if x is None:
            raise ValueError("top_eigenpairs of a model needs its inputs: top_eigenpairs(model, k, x=x)")
        if k is None:
            raise ValueError("top_eigenpairs of a model needs k, the number of eigenpairs")
        return _model_top_eigenpairs(kernel, x, k, class_weights=class_weights, groups=groups, method=method,
                                     dtype=dtype, device=device, memory_budget=memory_budget, progress=progress,
                                     tol=tol, seed=seed, return_info=return_info)
    if isinstance(kernel, (torch.Tensor, np.ndarray)):
        if factor:
            _refuse(given, "a factor J", _MODEL_ONLY + _DENSE_ONLY + ("steps", "n"))
            _check_method(method, "gram")
            if k is None:
                raise ValueError("top_eigenpairs of a factor J needs k, the number of eigenpairs")
            vals, vecs = _gram_eigenpairs(kernel, k, class_weights=class_weights)
            path = "gram"
        else:
            _refuse(given, "a formed kernel", _MODEL_ONLY + ("class_weights", "steps", "n"))
            _check_method(method, "dense")
            vals, vecs = _dense_eigenpairs(kernel, k, ridge=ridge, vectors=vectors)
            path = "dense"
        info = KernelInfo(path=path)
    elif hasattr(kernel, "matmat") or callable(kernel):
        _refuse(given, "an operator", _MODEL_ONLY + _DENSE_ONLY + ("class_weights",))
        _check_method(method, "lanczos")
        vals, vecs, info = _operator_top_eigenpairs(kernel, k, n=n, steps=steps, tol=tol, seed=seed,
                                                    device=device, progress=progress)
    else:
        raise TypeError(f"top_eigenpairs takes a kernel matrix, a factor J (factor=True), a model (with x=) "
                        f"or an operator; got {type(kernel).__name__}")
    info.seconds = time.perf_counter() - t0
    return (vals, vecs, info) if return_info else (vals, vecs)


def _refuse(given: dict[str, bool], what: str, names: tuple[str, ...]) -> None:
    bad = [nm for nm in names if given.get(nm)]
    if bad:
        raise ValueError(f"top_eigenpairs of {what} does not take {', '.join(bad)}")


def _check_method(method: str, path: str) -> None:
    if method not in ("auto", path):
        raise ValueError(f"unknown method {method!r} for this kernel; it takes 'auto' or {path!r}")


# ------------------------------------------------------------------- operators
def _operator_size(op: Any, n: int | None) -> int:
    if n is not None:
        return int(n)
    shape = getattr(op, "shape", None)
    if shape is not None:
        return int(shape[0])
    if isinstance(getattr(op, "n", None), int):
        return int(op.n)
    raise ValueError("top_eigenpairs of a callable operator needs its size: n=")


def _operator_top_eigenpairs(op: Any, k: int | None, *, n: int | None, steps: int | None, tol: float, seed: int,
                             device: Any, progress) -> tuple[np.ndarray, np.ndarray, KernelInfo]:
    size = _operator_size(op, n)
    if k is None:
        raise ValueError("top_eigenpairs of an operator needs k, the number of eigenpairs")
    k = max(1, min(int(k), size))
    info = copy.deepcopy(op.info) if isinstance(op, KernelOperator) else KernelInfo()
    dev = torch.device(device) if device is not None else (op.device if isinstance(op, KernelOperator)
                                                          else torch.device("cpu"))

    def matmat(V: torch.Tensor) -> torch.Tensor:
        if hasattr(op, "matmat"):
            out = op.matmat(V)
        else:
            out = torch.stack([torch.as_tensor(op(V[:, j])) for j in range(V.shape[1])], 1)
        return out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))

    if steps is None:
        info.path = "lanczos (block)"
        vals, vecs = _block_lanczos(matmat, size, k, tol=tol, seed=seed, device=dev, progress=progress, info=info)
        return vals, vecs, info
    with no_tf32():
        res = lanczos_topk(lambda v: matmat(v[:, None])[:, 0], size, k=k, steps=int(steps), seed=seed, device=dev,
                           progress=progress)
    info.path = f"lanczos ({res.steps} steps)"
    info.solver = {"products": res.steps, "residuals": res.residuals.cpu().tolist(),
                   "matvec_seconds": res.matvec_seconds}
    vals, vecs = to_numpy_pairs(res)
    return vals, fix_signs(vecs), info


# ---------------------------------------------------------------- dense, gram
def _dense_eigenpairs(
    K: torch.Tensor | np.ndarray, k: int | None = None, *, ridge: float = 0.0, vectors: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Top-``k`` eigenpairs of a dense symmetric PSD matrix ``K`` of shape ``(n, n)``.

    Uses LAPACK's divide-and-conquer driver through ``torch.linalg.eigh`` (scipy's
    default ``evr`` driver can stall on the rank-deficient matrices eNTKs are). The
    input is symmetrised as ``(K + K^T) / 2`` and not modified. ``ridge`` adds
    ``ridge * mean(diag K)`` to the diagonal, as the paper's code does (default 0).

    Returns:
      ``(eigenvalues (k,), eigenvectors (n, k))`` in descending order, float64 numpy
      (eigenvectors ``None`` when ``vectors=False``).
    """
    T = torch.as_tensor(K)
    if T.ndim != 2 or T.shape[0] != T.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {tuple(T.shape)}")
    if not torch.isfinite(T).all():
        raise ValueError("the kernel contains NaN or infinite entries")
    n = T.shape[0]
    k = n if k is None else max(1, min(int(k), n))
    S = (T + T.T) / 2
    if ridge:
        S = S + ridge * torch.diagonal(S).mean() * torch.eye(n, dtype=S.dtype)
    if vectors:
        vals, vecs = torch.linalg.eigh(S)
        vals = vals.flip(0)[:k].double().numpy()
        vecs = np.ascontiguousarray(vecs.flip(1)[:, :k].double().numpy())
        return vals, fix_signs(vecs)
    vals = torch.linalg.eigvalsh(S).flip(0)[:k].double().numpy()
    return vals, None


def _gram_eigenpairs(
    J: torch.Tensor | np.ndarray,
    k: int,
    *,
    class_weights: torch.Tensor | np.ndarray | Iterable[float] | None = None,
    rtol: float = 1e-12,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` eigenpairs of ``K = J Jᵀ`` from an explicit ``J`` of shape ``(R, P)``.

    With ``class_weights`` (``(C,)``, ``R = C·N`` class-major rows), row block ``c`` is
    scaled by ``w_c`` first, so a caller can cache an unweighted ``J`` and sweep weights
    (e.g. importance exponents β) cheaply. When ``P < R`` the ``P × P`` Gram matrix
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
        return _dense_eigenpairs((Jw @ Jw.T).double().cpu(), k)
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


# ----------------------------------------------------------------------- models
def estimate_top_eigenpairs(
    model: torch.nn.Module,
    k: int,
    *,
    x: Any,
    class_weights: torch.Tensor | Iterable[float] | None = None,
    groups: Iterable[str] | str | None = None,
    method: str = "auto",
    dtype: torch.dtype | None = None,
    device: Any = None,
    memory_budget: int | float | str | None = None,
    tol: float = 1e-6,
) -> Plan:
    """The :class:`~entk_core.engine.planner.Plan` of ``top_eigenpairs(model, k, x=x, ...)``
    with the same arguments, without computing anything but a forward of 4 inputs:
    ``plan.method`` is the path that would run (e.g. ``"lanczos (structured operator)"``),
    ``plan.seconds`` and ``plan.bytes`` its estimates, ``plan.paths`` every path's,
    ``plan.summary()`` one line. Never raises for budget reasons (see ``plan.fits``)."""
    if method not in TOPK_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {TOPK_METHODS}")
    ctx = flat_ctx(model, x, class_weights, groups, dtype, device, stacklevel=4)
    return plan_topk(ctx, max(1, min(int(k), ctx.C * ctx.N1)), method, memory_budget, tol)


def _model_top_eigenpairs(model, x, k, *, class_weights, groups, method, dtype, device, memory_budget, progress, tol,
                          seed, return_info):
    """The model path of :func:`top_eigenpairs` (see there; every option is passed)."""
    if method not in TOPK_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {TOPK_METHODS}")
    t0 = time.perf_counter()
    ctx = flat_ctx(model, x, class_weights, groups, dtype, device, stacklevel=5)
    C, N = ctx.C, ctx.N1
    R = C * N
    k = max(1, min(int(k), R))
    plan = plan_topk(ctx, k, method, memory_budget, tol)
    if not plan.fits:
        raise MemoryBudgetError(plan.suggestion)
    info: KernelInfo = ctx.info
    info.estimate = plan.summary()
    info.estimated_seconds = float(plan.seconds)
    chosen = plan.method.split(" ")[0]
    info.path = plan.method
    if chosen == "gram":
        with no_tf32(), autograd_on(), eval_mode(ctx.model):
            J = jacobian_from_ctx(ctx, None, memory_budget, progress)
        vals, vecs = _gram_eigenpairs(J, k)
        info.method = "structured"
    elif chosen == "dense" or (chosen == "lanczos" and k >= R - 1):
        K, kinfo = empirical_ntk(model, x, reduction="flat", class_weights=class_weights, groups=groups, dtype=dtype,
                                 device=device, memory_budget=memory_budget, progress=progress, return_info=True,
                                 check_finite=False)
        if progress is not None:
            progress(0, 1, f"eigendecomposition of the {R}x{R} kernel")
        vals, vecs = _dense_eigenpairs(K.cpu(), k)
        info.method, info.layout, info.chunk_size = kinfo.method, kinfo.layout, kinfo.chunk_size
        info.loops += [x_ for x_ in kinfo.loops if x_ not in info.loops]
    elif chosen == "lanczos":
        vals, vecs = _model_lanczos(ctx, model, x, k, plan, class_weights, groups, dtype, device, memory_budget,
                                    progress, tol, seed, info)
    else:
        from scipy.sparse.linalg import eigsh

        op = KernelOperator(model, x, class_weights=class_weights, groups=groups, dtype=dtype, device=device,
                            mode=plan.paths["iterative"]["operator"], memory_budget=memory_budget, progress=progress)
        count = [0]

        def mv(v):
            count[0] += 1
            if progress is not None:
                progress(count[0], max(count[0] + 1, 6 * k + 3 * ncv(k, R)), f"eigsh: {count[0]} products")
            return op.matvec(np.asarray(v, dtype=np.float64).reshape(-1))

        from scipy.sparse.linalg import LinearOperator

        lo = LinearOperator(op.shape, matvec=mv, rmatvec=mv, dtype=np.float64)
        vals, vecs = eigsh(lo, k=k, which="LA", ncv=ncv(k, R))
        order = np.argsort(vals)[::-1]
        vals = np.asarray(vals[order], dtype=np.float64)
        vecs = fix_signs(np.ascontiguousarray(vecs[:, order], dtype=np.float64))
        info.method = op.info.method
        info.loops += [x_ for x_ in op.info.loops if x_ not in info.loops]
    info.seconds = time.perf_counter() - t0
    return (vals, vecs, info) if return_info else (vals, vecs)


def _model_lanczos(ctx, model, x, k, plan, class_weights, groups, dtype, device, memory_budget, progress, tol, seed,
                   info) -> tuple[np.ndarray, np.ndarray]:
    """Block Lanczos on the operator the planner chose (the formed kernel or a
    :class:`~entk_core.engine.operators.KernelOperator`)."""
    R = ctx.C * ctx.N1
    opname = plan.paths["lanczos"]["operator"]
    info.layout = f"{opname} operator"
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

    return _block_lanczos(matmat, R, k, tol=tol, seed=seed, device=ctx.device, progress=progress, info=info)


def _block_lanczos(matmat, R: int, k: int, *, tol: float, seed: int, device, progress,
                   info: KernelInfo) -> tuple[np.ndarray, np.ndarray]:
    """Block Lanczos on ``matmat`` with the planner's block and basis sizes; records the
    solver's statistics (and a non-converged run) in ``info``."""
    b, basis, products = lanczos_shape(R, k)

    def prog(done, total, msg):
        if progress is not None:
            progress(done, total, msg)

    with no_tf32():
        res = block_lanczos(matmat, R, k, block=b, tol=tol, max_basis=basis, max_products=max(4 * products, 40 * k),
                            device=device, seed=seed, progress=prog)
    info.solver = {"products": res.steps, "restarts": res.restarts, "basis": res.basis, "converged": res.converged,
                   "max_rel_residual": float((res.residuals / res.eigenvalues.abs().clamp_min(1e-300)).max())}
    if not res.converged:
        info.loops.append({"where": "block Lanczos", "reason": f"not converged to tol={tol:g} after {res.steps} "
                                                                f"products; eigenpairs may be inaccurate"})
    vals, vecs = to_numpy_pairs(res)
    return vals, fix_signs(vecs)
