"""The modular-addition Transformer family's features (entk_core.families.modadd_transformer):
feature families at the key frequencies and key-frequency detection from the embedding."""
import numpy as np
import pytest
import torch

from entk_core.families.modadd_transformer.features import (detect_key_frequencies, embedding_fourier_power,
                                                             key_frequencies, transformer_families)
from entk_core.families.modadd_mlp.fourier import fourier_bank, modadd_grid


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
