"""Tests of entk_core.engine.measures: overlaps, phase-insensitive correlation, heatmaps,
the generic two-stage rotation, derivatives, grokking onset and the linearised predictor."""
import numpy as np
import pytest
import torch

from entk_core.engine.measures import (
    best_feature,
    best_phase_corr,
    cosine_heatmap,
    derivative_peak_epoch,
    family_dimension,
    flatten_outputs,
    grokking_onset,
    kernel_regression,
    linearised_check,
    local_first_derivative,
    max_corr_summary,
    orthonormal_basis,
    overlap_percent,
    phase_insensitive_corr,
    subspace_overlap,
    two_stage_rotation,
    unflatten_outputs,
)
from entk_core.families.modadd_mlp.features import modadd_families
from entk_core.families.modadd_mlp.fourier import fourier_bank, modadd_grid


def _random_orthogonal(n, seed):
    Q, R = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return Q * np.sign(np.diag(R))


# ------------------------------------------------------------------ overlap
def test_orthonormal_basis_drops_zero_directions():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((50, 3))
    M = np.hstack([A, A @ rng.standard_normal((3, 2)), np.zeros((50, 1))])
    Q = orthonormal_basis(M)
    assert Q.shape == (50, 3)
    np.testing.assert_allclose(Q.T @ Q, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(Q @ (Q.T @ A), A, atol=1e-10)


@pytest.mark.parametrize("name", ["a", "b", "sum", "diff", "a_digit"])
def test_overlap_with_itself_is_its_dimension(name):
    p = 29
    fam = modadd_families(p)[name]
    ov, s = subspace_overlap(fam.matrix, fam)
    assert family_dimension(fam) == 28  # centring drops the digit family's constant mode
    assert ov == pytest.approx(28.0, abs=1e-8)
    np.testing.assert_allclose(s, 1.0, atol=1e-8)
    assert overlap_percent(fam.matrix, fam) == pytest.approx(100.0, abs=1e-6)


def test_families_mutually_orthogonal_after_centring():
    fams = modadd_families(29)
    names = ["a", "b", "sum", "diff"]
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            assert subspace_overlap(fams[x].matrix, fams[y])[0] < 1e-10, (x, y)
    # the digit indicators span the same centred space as the Fourier family
    assert subspace_overlap(fams["a_digit"].matrix, fams["a"])[0] == pytest.approx(28.0, abs=1e-8)
    assert subspace_overlap(fams["sum_digit"].matrix, fams["a"])[0] < 1e-10


def test_centring_matters_for_uncentred_families():
    p = 11
    fams = modadd_families(p)
    const = np.ones((p * p, 1))
    # the one-hot digits contain the constant vector before centring, not after
    assert subspace_overlap(const, fams["a_digit"], center=False)[0] == pytest.approx(1.0)
    assert subspace_overlap(const, fams["a_digit"], center=True)[0] == pytest.approx(0.0, abs=1e-12)


def test_overlap_with_random_vectors_matches_expectation():
    p, d = 29, 56
    N = p * p
    fam = modadd_families(p)["sum"]
    ovs = [subspace_overlap(np.random.default_rng(s).standard_normal((N, d)), fam)[0] for s in range(6)]
    expected = d * 28 / N  # ≈ 1.86
    assert np.mean(ovs) == pytest.approx(expected, rel=0.2)
    assert max(ovs) < 4.0


def test_overlap_row_mismatch_is_an_error():
    fams = modadd_families(7)
    with pytest.raises(ValueError, match="rows"):
        subspace_overlap(np.ones((49, 2)), fams["readout"])


# ------------------------------------------------- phase-insensitive corr
def test_phase_insensitive_corr_rotated_pair():
    p = 29
    a, _ = modadd_grid(p)
    bank = fourier_bank(a, p)
    phi = 0.7
    v = np.cos(phi) * bank[:, 4, 0] + np.sin(phi) * bank[:, 4, 1]  # a phase-shifted k=5 mode
    H = phase_insensitive_corr(3.0 * v, bank)
    assert H.shape == (14, 1)
    assert H[4, 0] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(np.delete(H[:, 0], 4), 0.0, atol=1e-12)
    # a mixture of two frequencies: corr sqrt(1/2) with each
    w = bank[:, 1, 0] + bank[:, 6, 1]
    H2 = phase_insensitive_corr(np.stack([v, w], 1), bank)
    assert H2.shape == (14, 2)
    assert H2[1, 1] == pytest.approx(np.sqrt(0.5)) and H2[6, 1] == pytest.approx(np.sqrt(0.5))
    assert max_corr_summary(np.stack([v, w], 1), bank) == pytest.approx((1 + np.sqrt(0.5)) / 2)


# ----------------------------------------------------------- cosine heatmap
def test_cosine_heatmap_column_normalisation():
    Z = np.eye(4)[:, :3] * np.array([2.0, 1.0, 5.0])  # 3 features in R^4, unnormalised
    E = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])  # e0 mixes f0,f1; e1 = off-feature
    H_raw = cosine_heatmap(E, Z, column_normalize=False)
    assert H_raw.shape == (3, 2)
    np.testing.assert_allclose(H_raw[:, 0], [np.sqrt(0.5), np.sqrt(0.5), 0.0])
    np.testing.assert_allclose(H_raw[:, 1], 0.0)
    H = cosine_heatmap(-E, Z)
    np.testing.assert_allclose(np.linalg.norm(H[:, 0]), 1.0)
    np.testing.assert_allclose(H[:, 0], [np.sqrt(0.5), np.sqrt(0.5), 0.0])
    np.testing.assert_allclose(H[:, 1], 0.0)  # zero column stays zero
    E2 = np.array([[0.1, 0.0], [0.0, 0.0], [0.99, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(best_feature(cosine_heatmap(E2, Z)), [2, 2])


# ---------------------------------------------------------------- rotation
def _grid_laplacians(n):
    """Cycle Laplacians along each axis of an n x n grid (row ``u*n + v``), built here: the
    engine takes them from the caller."""
    C = 2 * np.eye(n) - np.roll(np.eye(n), 1, axis=1) - np.roll(np.eye(n), -1, axis=1)
    return np.kron(C, np.eye(n)), np.kron(np.eye(n), C)


def test_two_stage_rotation_separates_the_modes_of_two_directions():
    """A random rotation of cos/sin modes along both axes of a grid is unmixed into single
    modes by the caller's Laplacians: the modes invariant along L1 first, by L2 frequency."""
    n, K = 9, 4
    u, v = np.divmod(np.arange(n * n), n)

    def bank(w):
        ang = 2 * np.pi * np.outer(w, np.arange(1, K + 1)) / n
        return np.stack([np.cos(ang), np.sin(ang)], -1)          # (N, K, 2)

    B = np.concatenate([bank(u), bank(v)], axis=1)             # modes of u, then modes of v
    block = (B.reshape(n * n, -1) / np.sqrt(n * n / 2)) @ _random_orthogonal(4 * K, 3)
    assert max_corr_summary(block, B) < 0.7
    L1, L2 = _grid_laplacians(n)                               # L1 penalises variation along u
    U, info = two_stage_rotation(block, L1, L2, return_info=True)
    np.testing.assert_allclose(U.T @ U, np.eye(4 * K), atol=1e-10)
    best, idx = best_phase_corr(U, B)
    assert best.min() > 0.99
    np.testing.assert_array_equal(idx[: 2 * K], K + np.repeat(np.arange(K), 2))   # functions of v
    np.testing.assert_array_equal(idx[2 * K:], np.repeat(np.arange(K), 2))        # functions of u
    np.testing.assert_allclose(info["stage1"][: 2 * K], 0.0, atol=1e-10)
    with pytest.raises(ValueError):
        two_stage_rotation(block[:-1], L1, L2)


# --------------------------------------------------------- time evolution
def test_local_first_derivative_on_polynomial():
    t = np.arange(7.0)
    y = t**2 - 3 * t + 1
    d = local_first_derivative(y)
    np.testing.assert_allclose(d[1:-1], 2 * t[1:-1] - 3)  # central differences exact on quadratics
    assert d[0] == pytest.approx(y[1] - y[0]) and d[0] == pytest.approx(-2.0)
    assert d[-1] == pytest.approx(y[-1] - y[-2]) and d[-1] == pytest.approx(8.0)
    np.testing.assert_allclose(local_first_derivative(torch.tensor([1.0, 4.0])), [3.0, 3.0])
    np.testing.assert_allclose(local_first_derivative([5.0]), [0.0])
    # cubic: central difference has error h^2 y'''/6 = 1 for y = t^3
    np.testing.assert_allclose(local_first_derivative(t**3)[1:-1], 3 * t[1:-1] ** 2 + 1)


def test_grokking_onset_on_sigmoid():
    epochs = np.arange(0, 501, 10)
    chance = 1 / 29
    acc = chance + (1 - chance) / (1 + np.exp(-(epochs - 120) / 8.0))
    onset = grokking_onset(epochs, acc, chance=chance)
    # tau = chance + 10% of the rise: the sigmoid crosses it at 120 - 8 ln 9 ≈ 102.4
    assert onset == 105.0
    assert grokking_onset(epochs, acc, chance=chance, where="linear") == pytest.approx(102.4, abs=1.0)
    shifted = chance + (1 - chance) / (1 + np.exp(-(epochs - 300) / 8.0))
    assert grokking_onset(epochs, shifted, chance=chance) == 285.0


def test_grokking_onset_on_paper_curves():
    chance = 1 / 29
    # MLP, seed 0 (v4 notebook): the paper marks 75
    ep = np.arange(0, 200, 10)
    acc = np.array([0, 0.01, 0.02, 0.01, 0.0, 0.004, 0.008, 0.095, 0.522, 0.854, 0.937,
                    0.97, 0.99, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert grokking_onset(ep, acc, chance=chance) == 75.0
    # Transformer, seed 2: 9.0% at 140, 15.0% at 160; the paper marks 150
    ept = np.array([0, 20, 40, 60, 80, 100, 120, 140, 160, 200, 300, 500, 1000, 1200, 1500, 1820, 1900, 2000, 3000, 4000])
    acct = np.array([3.8, 0.5, 0.6, 0.7, 0.6, 1.9, 4.3, 9.0, 15.0, 22.3, 27.6, 33.5, 59.1, 74.1,
                     91.0, 99.0, 100, 100, 100, 100]) / 100
    assert grokking_onset(ept, acct, chance=chance) == 150.0


def test_grokking_onset_ignores_transient_spike_and_no_grokking():
    ep = np.arange(0, 200, 10)
    acc = np.r_[0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.05, 0.6, 0.9, np.ones(10)]
    assert grokking_onset(ep, acc, chance=0.0) == 75.0
    assert grokking_onset(ep, np.full(20, 0.05), chance=0.03) is None  # never generalises
    assert grokking_onset(ep, np.ones(20)) is None  # generalises from the start
    with pytest.raises(ValueError):
        grokking_onset(ep, 100 * acc)  # percentages are rejected


def test_derivative_peak_epoch():
    ep = np.arange(0, 300, 10)
    overlap = 2 + 24 / (1 + np.exp(-(ep - 72) / 10.0))
    assert derivative_peak_epoch(ep, overlap) == 70.0
    assert derivative_peak_epoch(ep, -overlap) != 70.0


# ---------------------------------------------------- linearised predictor
def test_kernel_regression_matches_linear_model():
    rng = np.random.default_rng(0)
    n, m, P = 20, 7, 50
    Phi, Phi_t = rng.standard_normal((n, P)), rng.standard_normal((m, P))
    y = rng.standard_normal(n)
    theta = np.linalg.pinv(Phi) @ y  # min-norm interpolant = gradient flow from 0
    pred = kernel_regression(Phi @ Phi.T, Phi_t @ Phi.T, y, ridge=1e-10)
    np.testing.assert_allclose(pred, Phi_t @ theta, atol=1e-6)
    # expansion around a model that already interpolates returns its outputs
    f_t = rng.standard_normal(m)
    out = kernel_regression(Phi @ Phi.T, Phi_t @ Phi.T, y, f_train=y, f_test=f_t, ridge=1e-6, mode="expand")
    np.testing.assert_allclose(out, f_t, atol=1e-9)
    with pytest.raises(ValueError):
        kernel_regression(Phi @ Phi.T, Phi_t @ Phi.T, y, mode="expand")


def test_flatten_outputs_roundtrip():
    Y = np.arange(6.0).reshape(3, 2)  # N=3, C=2
    np.testing.assert_array_equal(flatten_outputs(Y, "class"), [0, 2, 4, 1, 3, 5])
    np.testing.assert_array_equal(flatten_outputs(Y, "sample"), [0, 1, 2, 3, 4, 5])
    for lay in ("class", "sample", "shared"):
        np.testing.assert_array_equal(unflatten_outputs(flatten_outputs(Y, lay), 2, lay), Y)


@pytest.mark.parametrize("layout", ["class", "shared"])
def test_linearised_check_on_a_linear_model(layout):
    rng = np.random.default_rng(1)
    N, M, C, P = 30, 12, 3, 200
    Phi, Phi_t = rng.standard_normal((N, P)), rng.standard_normal((M, P))
    labels = rng.integers(0, C, N)
    Y = np.eye(C)[labels]
    Theta = np.linalg.pinv(Phi) @ Y  # a linear model trained to interpolate from 0
    F_tr, F_te = Phi @ Theta, Phi_t @ Theta
    Kn, Kt = Phi @ Phi.T, Phi_t @ Phi.T
    if layout == "class":  # per-class independent parameters: block-diagonal flattened kernel
        Kn, Kt = np.kron(np.eye(C), Kn), np.kron(np.eye(C), Kt)
    y_te = F_te.argmax(1)
    for mode in ("pure", "expand"):
        r = linearised_check(Kn, Kt, Y, y_te, F_tr, F_te, ridge=1e-9, mode=mode, layout=layout)
        assert r["r2"] == pytest.approx(1.0, abs=1e-6)
        assert r["acc_gap"] == 0.0 and r["acc_model"] == 1.0
        assert r["loss_ratio"] == pytest.approx(1.0, abs=1e-6)
    # a perturbed "model" is not reproduced by the pure predictor
    r = linearised_check(Kn, Kt, Y, y_te, F_tr, F_te + 0.5 * rng.standard_normal(F_te.shape),
                         ridge=1e-9, mode="pure", layout=layout)
    assert r["r2"] < 0.9
