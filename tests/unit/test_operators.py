"""Flattened Jacobian, matrix-free kernel operator, Gram-trick and iterative top-k."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _kernel_models import ARCHS, brute_jacobian, make
from entk_core.engine.kernels import empirical_ntk
from entk_core.engine.eigenpairs import top_eigenpairs
from entk_core.engine.operators import KernelOperator, flat_jacobian
from entk_core.engine.planner import MemoryBudgetError

F64 = torch.float64


def flat_ref(model, x, w=None):
    J = brute_jacobian(model, x)                      # (N, C, P)
    N, C, P = J.shape
    if w is not None:
        J = J * torch.as_tensor(w, dtype=F64)[None, :, None]
    return J.permute(1, 0, 2).reshape(C * N, P)       # class-major rows


@pytest.mark.parametrize("arch", ARCHS)
def test_flat_jacobian_matches_brute_force(arch):
    m, x, _ = make(arch)
    C = m(x[:1]).shape[-1]
    w = np.linspace(0.5, 1.5, C)
    J = flat_jacobian(m, x, class_weights=w, dtype=F64)
    ref = flat_ref(m, x, w)
    assert J.shape == ref.shape
    assert float((J - ref).abs().max()) <= 1e-12 * float(ref.abs().max())
    K = empirical_ntk(m, x, reduction="flat", class_weights=w, dtype=F64)
    assert torch.allclose(J @ J.T, K, rtol=0, atol=1e-10 * float(K.abs().max()))


def test_flat_jacobian_groups_and_column_order():
    m, x, _ = make("mlp")
    J = flat_jacobian(m, x, groups=["l2"], dtype=F64)
    full = flat_ref(m, x)
    # parameters in registration order: l1.weight (35), l1.bias (7), l2.weight (49), l2.bias (7), out.weight
    assert torch.allclose(J, full[:, 42:42 + 56], atol=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ("jacobian", "vjp"))
def test_operator_matvec_equals_dense_kernel(arch, mode):
    m, x, _ = make(arch)
    C = m(x[:1]).shape[-1]
    w = torch.linspace(0.3, 1.2, C, dtype=F64)
    K = empirical_ntk(m, x, reduction="flat", class_weights=w, dtype=F64)
    op = KernelOperator(m, x, class_weights=w, dtype=F64, mode=mode, chunk_size=3)
    assert op.mode == mode and op.shape == tuple(K.shape)
    g = torch.Generator().manual_seed(0)
    V = torch.randn(K.shape[0], 4, generator=g, dtype=F64)
    assert float((op.matmat(V) - K @ V).abs().max()) <= 1e-10 * float((K @ V).abs().max())
    v = V[:, 0].numpy()
    r = op.matvec(v)
    assert isinstance(r, np.ndarray) and r.shape == v.shape
    assert np.abs(r - (K @ V[:, 0]).numpy()).max() <= 1e-10 * float((K @ V).abs().max())
    lo = op.as_linear_operator()
    assert np.allclose(lo @ v, r, rtol=0, atol=1e-12 * np.abs(r).max())


def test_gram_trick_equals_dense_eigendecomposition():
    m, x, _ = make("tms")                      # P = 24 < N·C = 42
    C = 6
    w = torch.tensor([0.8 ** (c / 2) for c in range(C)], dtype=F64)
    J = flat_ref(m, x)
    K = flat_ref(m, x, w) @ flat_ref(m, x, w).T
    vr, Vr = top_eigenpairs(K, 10)
    v, V = top_eigenpairs(J, 10, factor=True, class_weights=w)       # unweighted J + row weights
    assert np.abs(v - vr).max() <= 1e-10 * vr[0]
    assert np.abs(V - Vr).max() <= 1e-8
    assert np.allclose(np.linalg.norm(V, axis=0), 1.0)
    v2, V2 = top_eigenpairs(flat_ref(m, x, w), 10, factor=True)
    assert np.abs(v2 - vr).max() <= 1e-10 * vr[0]
    # rank bound: asking for more than P eigenpairs pads with zeros
    v3, V3 = top_eigenpairs(J, 30, factor=True)
    assert v3.shape == (30,) and V3.shape == (42, 30) and np.all(v3[24:] == 0)


@pytest.mark.parametrize("method", ("gram", "dense", "iterative", "lanczos", "auto"))
@pytest.mark.parametrize("arch", ("tms", "mlp"))
def test_model_top_eigenpairs_all_methods(method, arch):
    m, x, _ = make(arch)
    C = m(x[:1]).shape[-1]
    w = [0.8 ** (c / 2) for c in range(C)]
    K = empirical_ntk(m, x, reduction="flat", class_weights=w, dtype=F64)
    vr, Vr = top_eigenpairs(K, 5)
    v, V = top_eigenpairs(m, 5, x=x, class_weights=w, method=method, dtype=F64)
    assert v.dtype == np.float64 and V.shape == (K.shape[0], 5)
    assert np.all(np.diff(v) <= 0)
    assert np.abs(v - vr).max() <= 1e-9 * vr[0]
    assert np.abs(np.abs(np.sum(V * Vr, 0)) - 1).max() <= 1e-6   # same vectors (up to sign)
    assert np.all(V[np.abs(V).argmax(0), np.arange(5)] > 0)      # sign convention


def test_float32_gram_agrees_with_float64():
    m, x, _ = make("tms")
    v32, _ = top_eigenpairs(m, 5, x=x, method="gram")
    v64, _ = top_eigenpairs(m, 5, x=x, method="gram", dtype=F64)
    assert np.abs(v32 - v64).max() <= 1e-5 * v64[0]


def test_flat_jacobian_budget():
    m, x, _ = make("mlp")
    with pytest.raises(MemoryBudgetError) as ei:
        flat_jacobian(m, torch.randn(200, 5), memory_budget=10_000)
    assert "\n" not in str(ei.value)


def test_top_eigenpairs_refuse_over_budget_with_one_line():
    m, x, _ = make("mlp")
    xs = torch.randn(3000, 5)
    for method in ("auto", "iterative", "gram"):
        with pytest.raises(MemoryBudgetError) as ei:
            top_eigenpairs(m, 50, x=xs, method=method, memory_budget="200kB")
        msg = str(ei.value)
        assert "\n" not in msg and "memory budget is 200 kB" in msg and "what would fit" in msg


# ------------------------------------------------- one top-k entry point
def _subspace_gap(U, V) -> float:
    """1 − the smallest cosine of the principal angles between two column spans."""
    s = np.linalg.svd(np.linalg.qr(U)[0].T @ np.linalg.qr(V)[0], compute_uv=False)
    return float(1 - s.min())


def test_top_eigenpairs_of_an_operator_matches_the_dense_kernel():
    """An operator (KernelOperator, anything with matmat, or a callable with n=) takes the
    Lanczos path: block Lanczos to tol, or plain Lanczos for exactly `steps` products."""
    m, x, _ = make("mlp")
    xs = torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    K = empirical_ntk(m, xs, reduction="flat", dtype=F64)                      # (120, 120)
    vr, Vr = top_eigenpairs(K, 6)
    op = KernelOperator(m, xs, dtype=F64, mode="jacobian")
    v, V, info = top_eigenpairs(op, 6, tol=1e-10, return_info=True)
    assert info.path == "lanczos (block)" and info.solver["converged"] and info.solver["products"] > 0
    np.testing.assert_allclose(v, vr, rtol=1e-8)
    assert _subspace_gap(V, Vr) < 1e-8 and np.allclose(np.linalg.norm(V, axis=0), 1)
    Kn = K.numpy()
    v2, _ = top_eigenpairs(lambda u: torch.as_tensor(Kn) @ u, 6, n=120, steps=60, seed=1)
    np.testing.assert_allclose(v2, vr, rtol=1e-8)
    _, _, info2 = top_eigenpairs(op, 6, steps=60, return_info=True)
    assert info2.path == "lanczos (60 steps)" and info2.solver["products"] == 60


def test_top_eigenpairs_refuses_options_that_do_not_apply():
    m, x, _ = make("mlp")
    K = empirical_ntk(m, x, reduction="flat", dtype=F64)
    with pytest.raises(ValueError, match="does not take x"):
        top_eigenpairs(K, 3, x=x)
    with pytest.raises(ValueError, match="does not take steps"):
        top_eigenpairs(m, 3, x=x, steps=10)
    with pytest.raises(ValueError, match="needs its inputs"):
        top_eigenpairs(m, 3)
    with pytest.raises(ValueError, match="needs its size"):
        top_eigenpairs(lambda v: v, 3)
    with pytest.raises(ValueError, match="method"):
        top_eigenpairs(K, 3, method="lanczos")
    with pytest.raises(TypeError, match="takes a kernel matrix"):
        top_eigenpairs("K", 3)


def test_kernel_info_is_public_and_returned():
    import entk_core
    from entk_core.engine.info import KernelInfo

    assert entk_core.KernelInfo is KernelInfo and "KernelInfo" in entk_core.__all__
    assert KernelInfo.__module__ == "entk_core.engine.info"
    m, x, _ = make("mlp")
    _, info = empirical_ntk(m, x, return_info=True)
    assert isinstance(info, KernelInfo) and info.method in ("structured", "jacobian", "ntk_vp")
    assert set(info.to_dict()) >= {"method", "layout", "fallbacks", "loops", "estimate", "seconds"}
