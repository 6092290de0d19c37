"""The LM baselines beside PCA (ICA, random directions, a TopK SAE), the direction
readouts (logit effects, tag concentration) and the layer-list parser, on small arrays."""
import time

import numpy as np
import pytest
import torch

from entk_core.families.causal_lm.baselines import ica_scores, random_scores
from entk_core.families.causal_lm.readouts import logit_effects, tag_concentration
from entk_core.families.causal_lm.sae import SAEOptions, sae_scores, train_sae
from entk_core.workflows.lm import parse_layers


def test_ica_recovers_independent_sources_and_reports_convergence():
    rng = np.random.default_rng(0)
    S = rng.laplace(size=(2000, 3))                       # non-Gaussian sources
    H = S @ rng.normal(size=(3, 10)) + 0.01 * rng.normal(size=(2000, 10))
    r = ica_scores(H, 3, seed=0)
    assert r["scores"].shape == (3, 2000) and r["converged"] is True
    corr = np.abs(np.corrcoef(np.vstack([r["scores"], S.T]))[:3, 3:])
    assert np.all(corr.max(1) > 0.99)                     # each component is one source (up to sign/scale)
    again = ica_scores(H, 3, seed=0)["scores"]
    assert np.array_equal(again, r["scores"])
    capped = ica_scores(H, 3, seed=0, max_iter=1, tol=1e-12)
    assert capped["converged"] is False and capped["n_iter"] == 1   # kept, flagged, not hidden


def test_random_directions_are_seeded_unit_projections():
    rng = np.random.default_rng(1)
    H = rng.normal(size=(50, 8))
    a, b = random_scores(H, 4, draws=3, seed=0), random_scores(H, 4, draws=3, seed=0)
    assert a.shape == (3, 4, 50) and np.array_equal(a, b)
    assert not np.array_equal(a, random_scores(H, 4, draws=3, seed=1))
    Hc = H - H.mean(0)
    D = np.linalg.lstsq(Hc, a[0].T, rcond=None)[0]        # the directions behind the scores
    assert np.allclose(np.linalg.norm(D, axis=0), 1.0)


def _sparse_data(n=6000, d=16, atoms=24, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    Dict = torch.randn(atoms, d, generator=g)
    Dict /= Dict.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(atoms, generator=g)[:k] for _ in range(n)])
    val = torch.rand(n, k, generator=g) + 0.5
    return torch.einsum("nk,nkd->nd", val, Dict[idx]), Dict


def test_topk_sae_learns_a_sparse_dictionary_and_is_seeded():
    X, Dict = _sparse_data(n=2000)
    opts = SAEOptions(latents=48, k=2, epochs=40, batch=256, lr=1e-2, tol=0.005, seed=0, budget_s=None)
    r = train_sae(X, opts)
    m = r["meta"]
    assert m["fvu"] < 0.15 and m["converged"] is True and m["stopped"] == "plateau"
    assert m["tokens"] == 2000 and len(m["history"]) == m["epochs"]
    W = r["model"].W_dec.detach()
    assert torch.allclose(W.norm(dim=1), torch.ones(48), atol=1e-5)
    cos = (Dict @ W.T).abs().max(1).values       # most true atoms have a close dictionary row
    assert float((cos > 0.9).double().mean()) > 0.6
    sc = sae_scores(r, X[:10].numpy())
    assert sc.shape == (48, 10)
    r2 = train_sae(X, opts)
    assert r2["meta"]["history"] == m["history"] and np.array_equal(sae_scores(r2, X[:10].numpy()), sc)


def test_an_sae_that_does_not_converge_is_reported_with_its_error():
    X, _ = _sparse_data(n=2000)
    r = train_sae(X, SAEOptions(latents=48, k=2, epochs=1, batch=256, lr=1e-5, seed=0, budget_s=None))
    m = r["meta"]
    assert m["converged"] is False and m["stopped"] == "epochs" and m["epochs"] == 1
    assert 0.2 < m["fvu"] < 10
    with pytest.raises(ValueError, match="k .* <= latents"):
        train_sae(X, SAEOptions(latents=4, k=8))
    with pytest.raises(ValueError, match="too few"):
        train_sae(X[:3], SAEOptions(latents=4, k=2))


def test_logit_effects_are_the_top_entries_of_U_inverse_A_v():
    g = torch.Generator().manual_seed(0)
    U = torch.randn(500, 6, generator=g, dtype=torch.float64)
    A = torch.linalg.cholesky(U.T @ U)  # any invertible matrix stands in for (UᵀU)^{1/2} here
    A = (A @ A.T)  # symmetric positive definite
    V = np.random.default_rng(0).normal(size=(3, 6))
    r = logit_effects(U, A, V, top=5, rows=64)     # blockwise over the vocabulary
    full = (U @ torch.linalg.inv(A) @ torch.as_tensor(V).T).T.numpy()
    for i in range(3):
        assert list(r["promoted_ids"][i]) == list(np.argsort(-full[i])[:5])
        assert list(r["suppressed_ids"][i]) == list(np.argsort(full[i])[:5])
        assert np.allclose(r["promoted_effect"][i], np.sort(full[i])[::-1][:5])


def test_tag_concentration_counts_one_tag_at_each_end():
    tags = ["VERB"] * 4 + ["NOUN"] * 4 + ["DET"] * 4
    s = np.array([[9, 8, 7, 6, 0, 0, 1, 0, -9, -8, -7, 5]], float)
    [c] = tag_concentration(s, tags)
    assert c["n"] == 4 and c["positive"] == {"tag": "VERB", "share": 1.0}
    assert c["negative"]["tag"] == "DET" and c["negative"]["share"] == 0.75
    assert (c["tag"], c["share"], c["side"]) == ("VERB", 1.0, "positive") and c["chance"] == pytest.approx(1 / 3)


def test_layer_lists_are_checked_before_they_are_expanded():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("0, 2-3,2", 4) == [0, 2, 3]
    t = time.perf_counter()
    for spec in ("0-999999999", "5-30000000", "999999999"):
        with pytest.raises(ValueError, match="out of range: the model has 4 blocks") as e:
            parse_layers(spec, 4)
        assert "\n" not in str(e.value)
    assert time.perf_counter() - t < 1.0   # nothing was built (it was 1.8 GB and minutes)
    with pytest.raises(ValueError, match="range '3-1' is empty"):
        parse_layers("3-1", 4)
    with pytest.raises(ValueError, match="'x' is not a layer"):
        parse_layers("x", 4)
