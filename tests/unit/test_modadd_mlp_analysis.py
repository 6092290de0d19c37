"""The modular-addition MLP's alignment helpers without a run (moved from
tests/integration/test_modadd_alignment.py): the rotation that makes each direction of a
mixed cliff one Fourier mode, and the p x p eigenvector image with its Fourier power."""
import numpy as np
import pytest

from entk_core.families.modadd_mlp import analysis as ma
from entk_core.families.modadd_mlp.features import modadd_families


def _families(p):
    return {k: f for k, f in modadd_families(p).items() if k in ma.REPORT_FAMILIES}


def _mixed_block(fams, names, p, seed=0):
    """Orthonormal basis of the (centred) span of the named families, randomly rotated
    (what eigh returns inside a degenerate cliff)."""
    F = np.hstack([fams[n].matrix for n in names])
    F = F - F.mean(0)
    Q, _ = np.linalg.qr(F)
    R, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((Q.shape[1], Q.shape[1])))
    return Q @ R


@pytest.mark.parametrize("names, kind", [(("a", "b"), "axis"), (("sum", "diff"), "sumdiff")])
def test_rotation_makes_each_direction_one_fourier_mode(names, kind):
    p = 11
    fams = _families(p)
    block = _mixed_block(fams, names, p)
    info = ma.analyse_cliff(block, fams, p)
    assert info["rotation"] == kind
    K = 2 * (p // 2)
    for n in names:
        assert info["overlap"][n] == pytest.approx(K, abs=1e-6)
        assert info["overlap_after"][n] == pytest.approx(info["overlap"][n], abs=1e-6)  # rotation-invariant
    assert info["mean_best_corr"]["before"] < 0.7
    assert info["mean_best_corr"]["after"] > 0.99 and info["frac_above_0.9"]["after"] == 1.0
    fam_of = [lab.split()[0] for lab in info["best_after"]]
    assert sorted(set(fam_of)) == sorted(names) and fam_of.count(names[0]) == K
    U = info["rotated"]
    np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), atol=1e-10)


def test_eigenvector_image_and_power():
    p, k = 7, 2
    a, b = np.divmod(np.arange(p * p), p)
    img, power, freqs = ma.eigenvector_image(np.cos(2 * np.pi * k * a / p), p)
    assert img.shape == power.shape == (p, p) and list(freqs) == [-3, -2, -1, 0, 1, 2, 3]
    peaks = {(int(freqs[i]), int(freqs[j])) for i, j in zip(*np.nonzero(power > 0.1))}
    assert peaks == {(k, 0), (-k, 0)} and power.sum() == pytest.approx(1.0)
    _, power, _ = ma.eigenvector_image(np.sin(2 * np.pi * k * (a + b) / p), p)
    assert {(int(freqs[i]), int(freqs[j])) for i, j in zip(*np.nonzero(power > 0.1))} == {(k, k), (-k, -k)}
    with pytest.raises(ValueError, match="expected p"):
        ma.eigenvector_image(np.zeros(10), p)
