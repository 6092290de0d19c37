"""Lanczos with full reorthogonalisation against dense eigh (float64)."""
import pytest
import torch

from entk_core.engine._lanczos import Cancelled, lanczos_topk


def _psd(n: int, seed: int = 0, decay: float = 0.8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    w = decay ** torch.arange(n, dtype=torch.float64) * 10
    return (Q * w) @ Q.T


def test_top_pairs_match_dense_eigh():
    K = _psd(200)
    res = lanczos_topk(lambda v: K @ v, 200, k=10, steps=60, seed=3)
    w, V = torch.linalg.eigh(K)
    w, V = w.flip(0)[:10], V.flip(1)[:, :10]
    assert torch.allclose(res.eigenvalues, w, rtol=1e-10, atol=1e-12)
    overlap = (res.eigenvectors.T @ V).abs().diagonal()
    assert torch.allclose(overlap, torch.ones(10, dtype=torch.float64), atol=1e-8)
    assert (res.residuals < 1e-6).all()
    assert res.steps == 60


def test_full_krylov_space_is_exact_and_deterministic():
    K = _psd(40, seed=1, decay=0.95)
    a = lanczos_topk(lambda v: K @ v, 40, k=40, steps=40, seed=7)
    b = lanczos_topk(lambda v: K @ v, 40, k=40, steps=40, seed=7)
    assert torch.equal(a.eigenvalues, b.eigenvalues)
    assert torch.allclose(a.eigenvalues, torch.linalg.eigvalsh(K).flip(0), rtol=1e-9)
    # orthonormal Ritz vectors (full reorthogonalisation: no ghost copies)
    assert torch.allclose(a.eigenvectors.T @ a.eigenvectors, torch.eye(40, dtype=torch.float64), atol=1e-9)


def test_low_rank_breaks_down_early_with_exact_pairs():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(100, 5, generator=g, dtype=torch.float64)
    K = B @ B.T
    res = lanczos_topk(lambda v: K @ v, 100, k=5, steps=30)
    assert res.steps <= 7
    assert torch.allclose(res.eigenvalues, torch.linalg.eigvalsh(K).flip(0)[:5], rtol=1e-9)


def test_progress_cancel_and_bad_arguments():
    K = _psd(30)
    seen = []
    lanczos_topk(lambda v: K @ v, 30, k=3, steps=5, progress=lambda d, n, m: seen.append((d, n)))
    assert seen == [(i, 5) for i in range(1, 6)]
    calls = []
    with pytest.raises(Cancelled):
        lanczos_topk(lambda v: K @ v, 30, k=3, steps=10, cancel=lambda: (calls.append(1), len(calls) > 2)[1])
    with pytest.raises(ValueError):
        lanczos_topk(lambda v: K @ v, 30, k=6, steps=5)
    with pytest.raises(ValueError, match="non-finite"):
        lanczos_topk(lambda v: v * float("nan"), 30, k=1, steps=2)


# --------------------------------------------------------------- block Lanczos
def test_block_lanczos_matches_dense_eigh_and_shares_the_result_type():
    from entk_core.engine._lanczos import LanczosResult, block_lanczos

    K = _psd(300, seed=2, decay=0.97)
    w, V = torch.linalg.eigh(K)
    w, V = w.flip(0)[:12], V.flip(1)[:, :12]
    res = block_lanczos(lambda X: K @ X, 300, 12, block=8, tol=1e-10, seed=1)
    assert isinstance(res, LanczosResult) and res.converged
    assert torch.allclose(res.eigenvalues, w, rtol=1e-9)
    assert torch.allclose((res.eigenvectors.T @ V).abs().diagonal(), torch.ones(12, dtype=torch.float64), atol=1e-7)
    assert res.steps >= 12 and res.basis >= 12 and res.matvec_seconds <= res.seconds
    # a small basis forces thick restarts; the answer is the same
    r2 = block_lanczos(lambda X: K @ X, 300, 12, block=8, tol=1e-10, max_basis=40, seed=1)
    assert r2.restarts > 0 and r2.converged and torch.allclose(r2.eigenvalues, w, rtol=1e-9)
    with pytest.raises(ValueError):
        block_lanczos(lambda X: K @ X, 300, 0)
