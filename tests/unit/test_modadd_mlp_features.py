"""The modular-addition MLP family's features (entk_core.families.modadd_mlp): Fourier banks on
the p x p torus, the feature families, the torus Laplacians and the cliff rotation."""
import numpy as np
import pytest
import torch

from entk_core.engine.measures import best_phase_corr, max_corr_summary, subspace_overlap, two_stage_rotation
from entk_core.families.base import FeatureFamily
from entk_core.families.features import concat_families, families_with_rows
from entk_core.families.modadd_mlp.features import digit_bank, modadd_families, readout_bank
from entk_core.families.modadd_mlp.fourier import (axis_laplacians, cycle_laplacian, default_freqs, fourier_bank,
                                                    modadd_grid, rotate_cliff, sum_diff_laplacians)


def _random_orthogonal(n, seed):
    Q, R = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return Q * np.sign(np.diag(R))


# ------------------------------------------------------------ Fourier banks
@pytest.mark.parametrize("p", [11, 29])
def test_fourier_banks_orthogonal_on_grid(p):
    fams = modadd_families(p)
    N, K = p * p, p // 2
    M = np.concatenate([fams[n].matrix for n in ("a", "b", "sum", "diff")], axis=1)
    assert M.shape == (N, 8 * K)
    # every column has zero mean and squared norm N/2; all 8K columns mutually orthogonal
    np.testing.assert_allclose(M.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(M.T @ M, (N / 2) * np.eye(8 * K), atol=1e-9)


def test_fourier_bank_values_and_layout():
    v = np.array([0, 1, 5])
    B = fourier_bank(v, 7)
    assert B.shape == (3, 3, 2)
    np.testing.assert_allclose(B[2, 1, 0], np.cos(2 * np.pi * 2 * 5 / 7))
    np.testing.assert_allclose(B[2, 1, 1], np.sin(2 * np.pi * 2 * 5 / 7))
    assert default_freqs(29) == list(range(1, 15))
    assert fourier_bank(torch.arange(4), 4, freqs=[1]).shape == (4, 1, 2)
    with pytest.raises(ValueError):
        fourier_bank(v, 7, freqs=[7])


def test_modadd_family_rows_follow_a_times_p_plus_b():
    p = 11
    a, b = modadd_grid(p)
    i = 3 * p + 8  # (a, b) = (3, 8)
    assert (a[i], b[i]) == (3, 8)
    fams = modadd_families(p)
    np.testing.assert_allclose(fams["sum"].bank[i, 0, 0], np.cos(2 * np.pi * ((3 + 8) % p) / p))
    np.testing.assert_allclose(fams["diff"].bank[i, 2, 1], np.sin(2 * np.pi * 3 * ((3 - 8) % p) / p))
    assert fams["a_digit"].bank[i].argmax() == 3 and fams["b_digit"].bank[i].argmax() == 8
    assert fams["sum_digit"].bank[i].argmax() == 0  # 11 mod 11
    assert fams["sum_digit"].bank.shape == (p * p, p) and fams["sum_digit"].bank.sum() == p * p


def test_modadd_families_contents():
    p = 29
    fams = modadd_families(p, seed=3)
    for name in ("a", "b", "sum", "diff", "readout", "a_digit", "b_digit", "sum_digit", "random"):
        assert isinstance(fams[name], FeatureFamily) and fams[name].name == name and fams[name].description
    assert fams["sum"].labels == tuple(f"k={k}" for k in range(1, 15))
    assert fams["random"].bank.shape == fams["sum"].bank.shape
    # the control is seeded: same seed same bank, different seed different bank
    np.testing.assert_array_equal(fams["random"].bank, modadd_families(p, seed=3)["random"].bank)
    assert not np.allclose(fams["random"].bank, modadd_families(p, seed=4)["random"].bank)
    assert set(families_with_rows(fams, p * p)) == set(fams) - {"readout"}
    assert modadd_families(p, freqs=[2, 5])["a"].bank.shape == (p * p, 2, 2)


def test_readout_bank_is_class_major():
    p = 7
    N = p * p
    R = readout_bank(p)
    assert R.shape == (p * N, p // 2, 2)
    a, b = modadd_grid(p)
    for q in (0, 3, 6):
        block = R[q * N : (q + 1) * N]
        np.testing.assert_allclose(block, fourier_bank(a + b - q, p), atol=1e-12)
    # the block of the correct class q = (a+b) mod p is the constant cos=1 vector
    rows = ((a + b) % p) * N + np.arange(N)
    np.testing.assert_allclose(R[rows, :, 0], 1.0, atol=1e-12)


def test_digit_bank():
    D = digit_bank(np.array([0, 4, 9]), 5)
    np.testing.assert_array_equal(D, np.eye(5)[[0, 4, 4]])


# --------------------------------------------------------------- Laplacians
def test_laplacians_structure():
    p = 7
    L1 = cycle_laplacian(p)
    np.testing.assert_allclose(L1.sum(axis=1), 0.0)
    assert L1[0, 0] == 2 and L1[0, 1] == -1 and L1[0, p - 1] == -1
    La, Lb = axis_laplacians(p, dense=True)
    a, b = modadd_grid(p)
    fa = np.cos(2 * np.pi * 2 * a / p)
    fb = np.cos(2 * np.pi * 3 * b / p)
    np.testing.assert_allclose(La @ fb, 0.0, atol=1e-12)  # L_a kills functions of b
    np.testing.assert_allclose(Lb @ fa, 0.0, atol=1e-12)
    np.testing.assert_allclose(La @ fa, (2 - 2 * np.cos(2 * np.pi * 2 / p)) * fa, atol=1e-12)
    Ls, Ld = sum_diff_laplacians(p, dense=True)
    fs, fd = np.cos(2 * np.pi * (a + b) / p), np.sin(2 * np.pi * 2 * (a - b) / p)
    np.testing.assert_allclose(Ls @ fd, 0.0, atol=1e-12)  # L_s is invariant along (1,1): kills diff
    np.testing.assert_allclose(Ld @ fs, 0.0, atol=1e-12)
    np.testing.assert_allclose(Ls @ fs, (2 - 2 * np.cos(2 * np.pi * 2 / p)) * fs, atol=1e-12)
    for L in (La, Lb, Ls, Ld):
        np.testing.assert_allclose(L, L.T)


# --------------------------------------------------------- planted cliffs
def _planted_cliff(p, names, seed):
    fams = modadd_families(p)
    bank = concat_families("+".join(names), [fams[n] for n in names])
    F = bank.matrix / np.sqrt(p * p / 2)  # orthonormal columns
    R = _random_orthogonal(F.shape[1], seed)
    return F @ R, bank


@pytest.mark.parametrize("p", [11, 29])
def test_two_stage_axis_rotation_unmixes_first_cliff(p):
    K = p // 2
    block, bank = _planted_cliff(p, ["a", "b"], seed=p)
    assert block.shape == (p * p, 4 * K)
    raw = best_phase_corr(block, bank)[0]
    assert raw.mean() < (0.5 if p == 29 else 0.7)  # the random rotation mixes frequencies
    U = two_stage_rotation(block, *axis_laplacians(p))
    np.testing.assert_allclose(U.T @ U, np.eye(4 * K), atol=1e-10)
    assert subspace_overlap(U, bank)[0] == pytest.approx(4 * K / 2 * 2, abs=1e-8)
    best, idx = best_phase_corr(U, bank)
    assert best.min() > 0.99
    # first half: functions of b sorted by frequency (pairs), second half: functions of a
    np.testing.assert_array_equal(idx[: 2 * K], K + np.repeat(np.arange(K), 2))
    np.testing.assert_array_equal(idx[2 * K :], np.repeat(np.arange(K), 2))
    # each frequency of a and b is hit by exactly two (cos/sin) directions
    np.testing.assert_array_equal(np.bincount(idx, minlength=2 * K), 2)
    np.testing.assert_allclose(rotate_cliff(block, p, "axis"), U, atol=1e-10)


@pytest.mark.parametrize("p", [11, 29])
def test_two_stage_sumdiff_rotation_unmixes_second_cliff(p):
    K = p // 2
    block, bank = _planted_cliff(p, ["sum", "diff"], seed=p + 1)
    assert max_corr_summary(block, bank) < (0.5 if p == 29 else 0.7)
    U = rotate_cliff(block, p, "sumdiff")
    best, idx = best_phase_corr(U, bank)
    assert best.min() > 0.99
    assert max_corr_summary(U, bank) > 0.99
    assert np.all(idx[: 2 * K] >= K)  # first half: diff modes (kernel of L_s)
    assert np.all(idx[2 * K :] < K)  # second half: sum modes
    np.testing.assert_array_equal(np.bincount(idx, minlength=2 * K), 2)


def test_wrong_laplacians_do_not_unmix():
    p = 29
    block, bank = _planted_cliff(p, ["sum", "diff"], seed=5)
    U = rotate_cliff(block, p, "axis")  # axis Laplacians are the wrong symmetry for sum/diff
    best = best_phase_corr(U, bank)[0]
    assert (best > 0.99).sum() < 10  # sum_k and diff_k stay mixed (degenerate under L_a, L_b)
    assert best.min() < 0.8
    with pytest.raises(ValueError):
        rotate_cliff(block, p, "nope")
    with pytest.raises(ValueError):
        rotate_cliff(block[:-1], p, "axis")


def test_noisy_planted_cliff_still_unmixes():
    p = 29
    block, bank = _planted_cliff(p, ["a", "b"], seed=9)
    noisy = block + 0.003 * np.random.default_rng(9).standard_normal(block.shape)
    U = rotate_cliff(noisy, p, "axis")
    assert max_corr_summary(noisy, bank) < 0.5
    assert max_corr_summary(U, bank) > 0.9
