"""Tests of entk_core.families.features: Fourier banks, modular-addition and Transformer families,
key-frequency detection, TMS feature vectors."""
import numpy as np
import pytest
import torch

from entk_core.families.features import (
    concat_families,
    default_freqs,
    detect_key_frequencies,
    digit_bank,
    embedding_fourier_power,
    families_with_rows,
    fourier_bank,
    key_frequencies,
    modadd_families,
    modadd_grid,
    readout_bank,
    tms_feature_vectors,
    transformer_families,
)
from entk_core.families.base import FeatureFamily


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


def test_transformer_families():
    p = 29
    fams = transformer_families(p, [12, 1, 28])  # 28 ≡ -1 -> k=1, de-duplicated
    assert set(fams) >= {"sum", "diff", "axis_sum", "axis_diff"}
    a, b = modadd_grid(p)
    for f in fams.values():
        assert f.bank.shape == (p * p, 2, 2) and f.labels == ("k=1", "k=12")
    np.testing.assert_allclose(fams["axis_sum"].bank, fourier_bank(a, p, [1, 12]) + fourier_bank(b, p, [1, 12]))
    np.testing.assert_allclose(fams["axis_diff"].bank, fourier_bank(a, p, [1, 12]) - fourier_bank(b, p, [1, 12]))
    np.testing.assert_allclose(fams["sum"].bank, fourier_bank(a + b, p, [1, 12]))
    with pytest.raises(ValueError):
        transformer_families(p, [0])


def _planted_embedding(p, freqs, d=64, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(p)[:, None]
    W = noise * rng.standard_normal((p + 1, d))
    for j, k in enumerate(freqs):
        amp = 1.0 + 0.5 * j  # unequal strengths
        W[:p] += amp * (np.cos(2 * np.pi * k * t / p) * rng.standard_normal(d)
                        + np.sin(2 * np.pi * k * t / p) * rng.standard_normal(d))
    W[p] = 100.0  # the '=' token row must be ignored
    return W


def test_embedding_fourier_power_peaks():
    p = 29
    P = embedding_fourier_power(_planted_embedding(p, [3, 11]), p)
    assert P.shape == (14,)
    top = set((np.argsort(P)[-2:] + 1).tolist())
    assert top == {3, 11}
    assert P[2] > 50 * np.median(P)


@pytest.mark.parametrize("plant", [[3, 11], [1, 12], [2, 7, 13], [5]])
def test_key_frequencies_recovers_plant(plant):
    p = 29
    W = _planted_embedding(p, plant, seed=len(plant))
    assert key_frequencies(W, p) == sorted(plant)
    assert key_frequencies(torch.tensor(W), p) == sorted(plant)
    res = detect_key_frequencies(W, p)
    assert res.rule == "gap" and res.ratio > 3


def test_key_frequencies_differ_between_plants():
    p = 29
    assert key_frequencies(_planted_embedding(p, [3, 11]), p) != key_frequencies(_planted_embedding(p, [4, 9]), p)


def test_key_frequencies_fallback_on_flat_spectrum():
    p = 29
    W = np.random.default_rng(1).standard_normal((p + 1, 64))
    res = detect_key_frequencies(W, p)
    assert res.rule in ("outlier", "argmax") and 1 <= len(res.freqs) <= 7
    assert res.rule != "gap"


def test_tms_feature_vectors_layout():
    X = np.arange(12, dtype=float).reshape(4, 3) + 1  # N=4, n=3
    Z = tms_feature_vectors(X)
    assert Z.shape == (12, 3)
    for a in range(3):
        np.testing.assert_array_equal(Z[a * 4 : (a + 1) * 4, a], X[:, a])
        mask = np.ones(12, bool)
        mask[a * 4 : (a + 1) * 4] = False
        assert not Z[mask, a].any()


def test_concat_families_labels():
    fams = modadd_families(7)
    ab = concat_families("ab", [fams["a"], fams["b"]])
    assert ab.bank.shape == (49, 6, 2)
    assert ab.labels[0] == "a k=1" and ab.labels[3] == "b k=1"
    with pytest.raises(ValueError):
        concat_families("bad", [fams["a"], fams["a_digit"]])
