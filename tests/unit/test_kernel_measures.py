"""Kernel distance, centred kernel-target alignment and effective rank (engine.kernel_measures),
in float64 against hand-computed values and against the definitions written out literally."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from entk_core.engine import kernel_measures as km


def _psd(n: int, rank: int, seed: int) -> np.ndarray:
    A = np.random.default_rng(seed).standard_normal((n, rank))
    return A @ A.T


# ------------------------------------------------------------ hand computations
def test_distance_by_hand():
    I2, J2 = np.eye(2), np.ones((2, 2))
    # <I, J> = 2, |I| = sqrt 2, |J| = 2
    assert km.kernel_distance(I2, J2) == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-15)
    assert km.kernel_distance(I2, 3 * I2) == pytest.approx(0.0, abs=1e-15)
    assert km.kernel_distance(I2, -I2) == pytest.approx(2.0, abs=1e-15)
    assert km.kernel_distance(np.diag([1.0, 0.0]), np.diag([0.0, 1.0])) == pytest.approx(1.0, abs=1e-15)
    assert math.isnan(km.kernel_distance(np.zeros((2, 2)), I2))
    assert km.distance_from_products(2.0, math.sqrt(2), 2.0) == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-15)


def test_centred_alignment_by_hand():
    Y = np.eye(2)[[0, 0, 1, 1]]
    # HY = ±1/2, HYYᵀH = ±1/2 (same/other class); K = I: <H, HYYᵀH> = tr(HYYᵀH) = 2,
    # |H|_F = sqrt(tr H) = sqrt 3, |HYYᵀH|_F = sqrt(16/4) = 2  ->  1/sqrt 3
    assert km.centred_alignment(np.eye(4), Y) == pytest.approx(1 / math.sqrt(3), abs=1e-15)
    # the ideal kernel YYᵀ (and any positive multiple, plus any constant) aligns perfectly
    assert km.centred_alignment(5 * Y @ Y.T + 7.0, Y) == pytest.approx(1.0, abs=1e-14)
    # integer labels as a single regression target give the same answer for two classes
    assert km.centred_alignment(np.eye(4), np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx(1 / math.sqrt(3), abs=1e-15)
    # the anti-ideal kernel
    assert km.centred_alignment(-(Y @ Y.T), Y) == pytest.approx(-1.0, abs=1e-14)
    # a constant kernel, or one class only: nothing to align
    assert math.isnan(km.centred_alignment(np.ones((4, 4)), Y))
    assert math.isnan(km.centred_alignment(np.eye(4), np.eye(2)[[1, 1, 1, 1]]))


def test_effective_rank_by_hand():
    assert km.effective_rank([1.0, 1.0, 1.0, 1.0]) == pytest.approx(4.0, abs=1e-14)
    assert km.effective_rank([3.0, 0.0, 0.0]) == pytest.approx(1.0, abs=1e-15)
    # p = (1/2, 1/4, 1/4): entropy 1.5 log 2 -> 2**1.5
    assert km.effective_rank([2.0, 1.0, 1.0]) == pytest.approx(2 ** 1.5, abs=1e-14)
    assert km.effective_rank([2.0, 1.0, 1.0, -1e-12]) == pytest.approx(2 ** 1.5, abs=1e-12)  # rounding below 0
    assert math.isnan(km.effective_rank([0.0, 0.0]))
    assert km.effective_rank([1.0, 1.0, 1e-320]) == pytest.approx(2.0, abs=1e-14)  # p underflows to 0
    with pytest.raises(ValueError, match="NaN"):
        km.effective_rank([1.0, float("nan")])


# ------------------------------------------------- the definitions, literally
def _alignment_literal(K: np.ndarray, Y: np.ndarray) -> float:
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    A, B = H @ K @ H, H @ Y @ Y.T @ H
    return float(np.sum(A * B) / (np.linalg.norm(A) * np.linalg.norm(B)))


@pytest.mark.parametrize("block", [3, 1024])
def test_measures_match_the_definitions(monkeypatch, block):
    monkeypatch.setattr(km, "_BLOCK", block)  # 3: many row blocks, a ragged last one
    K1, K2 = _psd(11, 4, 0), _psd(11, 6, 1)
    labels = np.random.default_rng(2).integers(0, 3, 11)
    Y = np.eye(3)[labels]
    R = np.random.default_rng(3).standard_normal((11, 2))  # regression targets
    assert km.frobenius_inner(K1, K2) == pytest.approx(float(np.trace(K1.T @ K2)), rel=1e-13)
    assert km.kernel_distance(K1, K2) == pytest.approx(
        1 - np.trace(K1 @ K2) / (np.linalg.norm(K1) * np.linalg.norm(K2)), rel=1e-13)
    assert km.centred_alignment(K1, Y) == pytest.approx(_alignment_literal(K1, Y), rel=1e-12)
    assert km.centred_alignment(K2, R) == pytest.approx(_alignment_literal(K2, R), rel=1e-12)
    # a non-symmetric input is read as its symmetric part
    S = K1 + np.triu(np.ones((11, 11)), 1)
    assert km.centred_alignment(S, Y) == pytest.approx(_alignment_literal((S + S.T) / 2, Y), rel=1e-12)
    lam = np.linalg.eigvalsh(K2)
    p = np.clip(lam, 0, None) / np.clip(lam, 0, None).sum()
    p = p[p > 0]
    assert km.effective_rank(lam) == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-13)
    assert 1.0 <= km.effective_rank(lam) <= 6.0 + 1e-9


def test_float32_and_torch_inputs_accumulate_in_float64():
    K = _psd(50, 50, 4)
    Y = np.eye(2)[np.arange(50) % 2]
    K32 = K.astype(np.float32)
    ref = _alignment_literal(K32.astype(np.float64), Y)
    assert km.centred_alignment(torch.from_numpy(K32), Y) == pytest.approx(ref, rel=1e-10)
    assert km.frobenius_inner(K32, K32) == pytest.approx(float(np.sum(K32.astype(np.float64) ** 2)), rel=1e-12)


def test_shape_errors_are_one_line():
    with pytest.raises(ValueError, match="square"):
        km.frobenius_inner(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="different shapes"):
        km.kernel_distance(np.eye(2), np.eye(3))
    with pytest.raises(ValueError, match=r"targets must have shape \(3,\) or \(3, r\)"):
        km.centred_alignment(np.eye(3), np.ones((4, 2)))


def test_gram_factor_gives_the_dense_kernels_measures(monkeypatch):
    """K = J Jᵀ from its factor (P < N: a flattened eNTK with few parameters) equals the dense
    computation, for every measure, mixed with dense kernels too."""
    monkeypatch.setattr(km, "_BLOCK", 4)
    rng = np.random.default_rng(5)
    J1, J2 = rng.standard_normal((13, 3)), rng.standard_normal((13, 5))
    G1, G2 = km.Gram(J1), km.Gram(J2)
    K1, K2 = J1 @ J1.T, J2 @ J2.T
    assert G1.shape == (13, 13)
    np.testing.assert_allclose(G1.dense(), K1)
    assert km.frobenius_inner(G1, G2) == pytest.approx(float(np.sum(K1 * K2)), rel=1e-12)
    assert km.frobenius_inner(K1, G2) == pytest.approx(float(np.sum(K1 * K2)), rel=1e-12)
    assert km.frobenius_inner(G1, K2) == pytest.approx(float(np.sum(K1 * K2)), rel=1e-12)
    assert km.frobenius_norm(G1) == pytest.approx(float(np.linalg.norm(K1)), rel=1e-12)
    assert km.kernel_distance(G1, G2) == pytest.approx(km.kernel_distance(K1, K2), rel=1e-12)
    Y = np.eye(3)[rng.integers(0, 3, 13)]
    assert km.centred_alignment(G2, Y) == pytest.approx(_alignment_literal(K2, Y), rel=1e-12)
    assert km.effective_rank(np.linalg.eigvalsh(G1.small())) == pytest.approx(
        km.effective_rank(np.linalg.eigvalsh(K1)), rel=1e-9)  # the zero eigenvalues add nothing
    with pytest.raises(ValueError, match="different shapes"):
        km.frobenius_inner(G1, km.Gram(np.ones((4, 2))))
