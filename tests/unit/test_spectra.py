import numpy as np
import pytest
import torch

from entk_core.engine.eigenpairs import top_eigenpairs
from entk_core.engine.spectra import detect_cliffs, fix_signs


def _psd_with_spectrum(vals, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(len(vals), len(vals))))
    return (Q * vals) @ Q.T


def test_top_eigenpairs_descending_and_exact():
    vals = np.linspace(10, 1, 30)
    K = _psd_with_spectrum(vals)
    ev, vec = top_eigenpairs(K, 5)
    np.testing.assert_allclose(ev, vals[:5], rtol=1e-10)
    np.testing.assert_allclose(K @ vec, vec * ev, atol=1e-9)
    assert vec.shape == (30, 5)
    # sign convention: the largest-magnitude entry of each column is positive
    assert all(vec[np.abs(vec[:, j]).argmax(), j] > 0 for j in range(5))


def test_top_eigenpairs_does_not_modify_input_and_rejects_bad():
    K = torch.eye(4)
    top_eigenpairs(K, 2, ridge=1.0)
    assert torch.equal(K, torch.eye(4))
    with pytest.raises(ValueError, match="square"):
        top_eigenpairs(torch.ones(3, 4), 2)
    bad = torch.eye(3)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        top_eigenpairs(bad, 2)


def test_detect_cliffs_planted_structure():
    rng = np.random.default_rng(1)
    # 1 isolated mode, a degenerate block of 56, a drop of 2x, another block of 56, then a smooth tail
    lam = np.concatenate([[300.0], 10 * (1 + 0.01 * rng.random(56)), 4 * (1 + 0.01 * rng.random(56)),
                          2.5 * 0.97 ** np.arange(88)])
    lam = np.sort(lam)[::-1]
    cliffs = detect_cliffs(lam)
    assert [(c.start, c.size) for c in cliffs] == [(0, 1), (1, 56), (57, 56)]
    assert cliffs[0].ratio > 25 and cliffs[1].ratio > 2
    assert cliffs[2].end == 112


def test_detect_cliffs_smooth_spectrum_has_none():
    assert detect_cliffs(0.95 ** np.arange(200)) == []
    assert detect_cliffs(np.array([1.0])) == []
    # numerical zeros after a rank cut are ignored, the cut itself is a cliff
    lam = np.concatenate([np.linspace(2, 1, 10), np.full(20, 1e-14)])
    assert [(c.start, c.size) for c in detect_cliffs(lam)] == []


def test_fix_signs():
    v = np.array([[1.0, -3.0], [-2.0, 1.0]])
    fix_signs(v)
    assert v[1, 0] == 2.0 and v[0, 1] == 3.0
