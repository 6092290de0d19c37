"""The bench's own references and peer adapters are right (correctness only, no timing).

* the tutorial Jacobian contraction (``entk_core.bench.reference``) agrees with the float64
  brute-force kernel (one ``autograd.grad`` per example and channel) on tiny models, for
  every reduction, by layer, with class weights and with a second input set;
* the peer adapters of ``bench --peers`` agree with brute force on a tiny model (ASDL is a
  pinned dev dependency and always runs; nngeometry and BackPACK cannot be pinned beside
  torch 2.13.0's CPU build -- see benchmarks/requirements-peers.txt -- and are checked when
  importable, else their reported reason is);
* the bench models build and the peer/method harnesses produce their records on a few inputs.
"""
from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
from torch import nn

from entk_core.bench import methods, models, peers
from entk_core.bench.measure import max_rel_err
from entk_core.bench.reference import (bruteforce_ntk, check_reference, safe_chunk, tutorial_flat_operator,
                                       tutorial_ntk)
from entk_core.engine.kernels import empirical_ntk


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double().eval()


def _cnn():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).double()


def _x(n, *shape, seed=2):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("reduction", ["full", "trace", "mean", "flat"])
def test_tutorial_matches_bruteforce(reduction):
    m, x = _mlp(), _x(6, 5)
    a = tutorial_ntk(m, x, reduction=reduction)
    b = bruteforce_ntk(m, x, reduction=reduction)
    assert a.shape == b.shape
    assert max_rel_err(a, b) < 1e-12
    assert max_rel_err(empirical_ntk(m, x, reduction=reduction), b) < 1e-12   # the same conventions as the engine


def test_tutorial_by_layer_weights_x2_conv():
    m, x, x2 = _cnn(), _x(4, 2, 4, 4), _x(3, 2, 4, 4, seed=3)
    w = torch.tensor([1.0, 0.5, 0.25, 2.0], dtype=torch.float64)
    a = tutorial_ntk(m, x, x2, reduction="full", by_layer=True, weights=w)
    b = bruteforce_ntk(m, x, x2, reduction="full", by_layer=True, weights=w)
    assert list(a) == list(b) == ["0", "3"]
    for k in b:
        assert a[k].shape == (4, 3, 4, 4)
        assert max_rel_err(a[k], b[k]) < 1e-12
    # per_param (one parameter's Jacobian at a time) and vmap chunks give the same kernel
    c = tutorial_ntk(m, x, x2, reduction="full", by_layer=True, weights=w, per_param=True, chunk_size=2)
    assert all(max_rel_err(c[k], b[k]) < 1e-12 for k in b)


def test_bruteforce_catches_a_wrong_kernel():
    m, x = _mlp(), _x(5, 5)
    b = bruteforce_ntk(m, x, reduction="trace")
    other = tutorial_ntk(_mlp(seed=1), x, reduction="trace")   # another model's kernel
    assert max_rel_err(other, b) > 1e-2


def test_check_reference_and_flat_operator():
    m, x = _mlp(), _x(7, 5)
    assert check_reference(m.float(), x.float(), n=5, reduction="flat") < 1e-12
    m = m.double()
    op = tutorial_flat_operator(m, x)
    K = bruteforce_ntk(m, x, reduction="flat")
    v = torch.randn(K.shape[0], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.allclose(torch.as_tensor(op.matvec(v.numpy())), K @ v, rtol=1e-10, atol=1e-12)


def test_safe_chunk_never_equals_outputs():
    assert safe_chunk(5, 5) != 5
    assert safe_chunk(4, 5) == 4
    assert safe_chunk(None, 5) is None


def _available(lib):
    return peers.peer_status()[lib].startswith("ok")


@pytest.mark.parametrize("lib", ["torch.func", "entk_core", "asdl", "nngeometry", "backpack"])
@pytest.mark.parametrize("reduction", ["trace", "full"])
def test_peer_adapters_agree_with_bruteforce(lib, reduction):
    if lib in ("nngeometry", "backpack") and not _available(lib):
        # not pinned (their torchvision dependency breaks transformers here): the bench must say why
        assert peers.peer_status()[lib].startswith("not installed: ")
        assert importlib.util.find_spec(lib) is None or "Error" in peers.peer_status()[lib]
        return
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    torch.manual_seed(0)
    x = _x(6, 6)
    ref = bruteforce_ntk(m, x, reduction=reduction)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a budget of 3 examples' Jacobians: the tiled path (chunk < N) runs for the Jacobian-holding peers
        budget = 2 * 3 * 3 * sum(p.numel() for p in m.parameters()) * 4
        K, _ = peers.ADAPTERS[lib](m, x, reduction, budget)
    assert K.shape == ref.shape
    assert max_rel_err(K, ref) < 1e-10


def test_asdl_is_pinned_and_importable():
    assert _available("asdl"), peers.peer_status()["asdl"]


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_bench_models_build(name):
    m, x = models.build(name, 4)
    with torch.no_grad():
        out = m(x)
    assert out.shape[0] == 4 and torch.isfinite(out).all()
    assert not m.training


def test_peer_harness_record():
    rec = peers.run_case("mlp-paper-trace", libs=("entk_core", "torch.func"), n=8, max_seconds=120)
    assert rec["N"] == 8 and rec["C"] == 29
    for lib in ("entk_core", "torch.func"):
        assert rec["libs"][lib]["max_rel_error"] < 1e-5, rec["libs"][lib]
    assert rec["best_peer"] == "torch.func" and rec["entk_core_speedup_vs_best_peer"] > 0


def test_peer_refusal_by_flops():
    why = peers._refusal("torch.func", 1000, 10, 669_706, "full", rate=1e11, max_s=600)
    assert why and "1.3e+14 flops" in why
    assert peers._refusal("entk_core", 1000, 10, 669_706, "full", rate=1e11, max_s=600) is None


def test_methods_harness_record():
    rec = methods.run_case("attn-mean", repeats=1, n=8, max_seconds=120)
    ms = rec["methods"]
    assert set(ms) == set(methods.METHODS)
    for m in ("auto", "structured", "jacobian"):
        assert ms[m]["seconds"] > 0 and ms[m]["estimated_s"] > 0, ms[m]
    assert rec["auto_over_best_forced"] > 0 and rec["best_forced"] in methods.METHODS[1:]
    assert rec["rates"]["source"] in ("measured", "cached", "default")
    # each measured method's ratio is to its own call's estimate (its setup included)
    assert ms["auto"]["call_estimated_s"] > 0
    assert ms["auto"]["measured_over_estimate"] == pytest.approx(ms["auto"]["seconds"] / ms["auto"]["call_estimated_s"])
