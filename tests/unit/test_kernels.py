"""eNTK kernels: every method against an independent brute force (float64), reductions,
layer groups, class weights, rectangular kernels, chunking, symmetry, the MLP closed form."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from _kernel_models import ARCHS, brute_ntk, make
from entk_core.engine import planner
from entk_core.engine.kernels import (
    MemoryBudgetError,
    empirical_ntk,
    empirical_ntk_by_layer,
    layer_groups,
    param_group,
)

F64 = torch.float64
METHODS = ("structured", "jacobian", "ntk_vp", "auto")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def reduce(K: torch.Tensor, reduction: str, block=(0, 0)) -> torch.Tensor:
    """Reference reductions of a full (N1, N2, C, C) kernel (the ARCHITECTURE.md table)."""
    N1, N2, C, _ = K.shape
    if reduction == "full":
        return K
    if reduction == "trace":
        return K.diagonal(dim1=2, dim2=3).mean(-1)
    if reduction == "mean":
        return K.mean(dim=(2, 3))
    if reduction == "flat":
        return K.permute(2, 0, 3, 1).reshape(C * N1, C * N2)
    return K[:, :, block[0], block[1]]


_BRUTE: dict = {}


def brute(arch, x2=False, weights=None):
    key = (arch, x2, None if weights is None else tuple(weights))
    if key not in _BRUTE:
        m, x1, xb = make(arch)
        _BRUTE[key] = brute_ntk(m, x1, xb if x2 else None, class_weights=weights)
    return _BRUTE[key]


# ------------------------------------------------------------------ groups API
def test_param_group_and_layer_groups():
    assert param_group("net.0.weight") == "net.0"
    assert param_group("W") == "W"
    assert param_group("a.b.c.bias") == "a.b.c"
    m, _, _ = make("attn")
    g = layer_groups(m)
    assert list(g)[:3] == ["pos", "embed", "ln"]   # named_parameters order: own first
    assert g["ln"] == ["ln.weight", "ln.bias"]
    assert g["pos"] == ["pos"]
    assert sum(len(v) for v in g.values()) == len(list(m.parameters()))


# ------------------------------------------------------- methods vs brute force
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_full_kernel_matches_brute_force_float64(arch, method):
    m, x1, _ = make(arch)
    K = empirical_ntk(m, x1, method=method, dtype=F64)
    ref = brute(arch)
    assert K.dtype == F64 and K.shape == ref.shape
    assert rel(K, ref) <= 1e-10


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ("structured", "jacobian", "ntk_vp"))
def test_rectangular_x2_matches_brute_force(arch, method):
    m, x1, x2 = make(arch)
    K = empirical_ntk(m, x1, x2, method=method, dtype=F64)
    assert K.shape[:2] == (x1.shape[0], x2.shape[0])
    assert rel(K, brute(arch, x2=True)) <= 1e-10


@pytest.mark.parametrize("arch", ("mlp", "attn"))
def test_float32_agrees_with_float64_reference(arch):
    m, x1, _ = make(arch)
    for method in METHODS:
        K = empirical_ntk(m, x1, method=method)
        assert K.dtype == torch.float32
        assert rel(K, brute(arch)) <= 1e-5, method


def fallback_params(info) -> set[str]:
    return {n for f in info.fallbacks for n in f["params"]}


def test_structured_path_uses_rules_and_falls_back_per_parameter():
    m, x1, _ = make("attn")
    K, info = empirical_ntk(m, x1, method="structured", dtype=F64, return_info=True)
    rules = {name: d["rule"] for name, d in info.structured.items()}
    assert rules["embed"] == "Embedding" and rules["W_Q"] == "Linear" and rules["unembed"] == "Linear"
    assert rules["ln"].startswith("elementwise")          # LayerNorm gain and bias have a rule now
    assert fallback_params(info) == {"pos"}
    assert all(f["path"] == "jacobian" and f["reason"] for f in info.fallbacks)
    assert info.structured["W_Q"]["positions"] == 3
    assert info.method == "structured" and info.model_copy == "cast copy"     # float32 model, float64 work
    assert rel(K, brute("attn")) <= 1e-10
    m, x1, _ = make("tms")
    _, info = empirical_ntk(m, x1, method="structured", return_info=True)
    assert fallback_params(info) == {"W", "b"} and not info.structured


@pytest.mark.parametrize("arch", ("tied", "inplace"))
def test_weight_used_outside_its_module_and_inplace_ops(arch):
    m, x1, x2 = make(arch)
    _, info = empirical_ntk(m, x1, method="structured", dtype=F64, return_info=True)
    if arch == "tied":   # enc.weight is also used in a matmul: its layer must fall back
        assert "enc.weight" in fallback_params(info)
    else:                # ReLU(inplace=True) after a Linear: the rule still applies
        assert not info.fallbacks
    for method in ("structured", "auto"):
        assert rel(empirical_ntk(m, x1, x2, method=method, dtype=F64), brute_ntk(m, x1, x2)) <= 1e-10


def test_non_batch_first_linear_falls_back():
    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):                     # x (N, T, 3); Linear applied on (T, N, 3)
            h = torch.tanh(self.lin(x.transpose(0, 1)))
            return self.head(h.sum(0))

    torch.manual_seed(0)
    m, x = SeqFirst(), torch.randn(5, 3, 3)
    _, info = empirical_ntk(m, x, method="structured", return_info=True)
    assert "lin.weight" in fallback_params(info) and "head.weight" not in fallback_params(info)
    assert rel(empirical_ntk(m, x, method="structured", dtype=F64), brute_ntk(m, x)) <= 1e-10


# ------------------------------------------------------------------ reductions
@pytest.mark.parametrize("arch", ("mlp", "embed", "attn", "tms"))
@pytest.mark.parametrize("reduction", ("full", "trace", "mean", "flat", "block"))
@pytest.mark.parametrize("method", ("structured", "jacobian", "ntk_vp"))
def test_reductions_consistent_with_full_kernel(arch, reduction, method):
    m, x1, x2 = make(arch)
    C = brute(arch).shape[-1]
    blk = (1, C - 1)
    for xx2, key in ((None, False), (x2, True)):
        K = empirical_ntk(m, x1, xx2, reduction=reduction, block=blk, method=method, dtype=F64)
        ref = reduce(brute(arch, x2=key), reduction, blk)
        assert K.shape == ref.shape
        assert rel(K, ref) <= 1e-10, (xx2 is None, reduction)


def test_flat_is_class_major():
    m, x1, _ = make("mlp")
    K = empirical_ntk(m, x1, reduction="flat", dtype=F64)
    full = brute("mlp")
    N = x1.shape[0]
    c, n, d, mm = 2, 4, 1, 3
    assert abs(float(K[c * N + n, d * N + mm] - full[n, mm, c, d])) < 1e-12
    assert abs(float(K[c * N + n, d * N + mm])) > 1e-6


def test_trace_mean_block_never_build_the_4d_tensor(monkeypatch):
    """The structured trace/mean/block paths allocate nothing of size N1·N2·C·C."""
    m, x1, _ = make("mlp", seed=3)
    x1 = torch.randn(40, 5)
    N, C = 40, 3
    seen = []
    orig = torch.Tensor.__matmul__

    def spy(a, b):
        r = orig(a, b)
        seen.append(r.numel())
        return r

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    for red in ("trace", "mean", "block"):
        seen.clear()
        empirical_ntk(m, x1, reduction=red, block=(0, 1), method="structured")
        assert seen and max(seen) < N * N * C * C, red


# --------------------------------------------------------- symmetry and PSD
@pytest.mark.parametrize("reduction", ("full", "flat", "trace", "mean", "block"))
def test_symmetric_exactly_and_psd(reduction):
    m, x1, _ = make("attn")
    x = torch.randint(0, 5, (11, 3), generator=torch.Generator().manual_seed(5))
    for method in ("structured", "jacobian", "ntk_vp"):
        K = empirical_ntk(m, x, reduction=reduction, block=(2, 2), method=method, chunk_size=4)
        if reduction == "full":
            assert torch.equal(K, K.permute(1, 0, 3, 2)), method
            K2 = K.permute(2, 0, 3, 1).reshape(5 * 11, 5 * 11)
        else:
            assert torch.equal(K, K.T), method
            K2 = K
        ev = torch.linalg.eigvalsh(K2.double())
        assert ev.min() >= -1e-5 * ev.max(), method


def test_block_off_diagonal_is_not_symmetrised():
    m, x1, _ = make("mlp")
    K = empirical_ntk(m, x1, reduction="block", block=(0, 2), dtype=F64)
    assert rel(K, brute("mlp")[:, :, 0, 2]) <= 1e-10
    assert not torch.allclose(K, K.T)


# ---------------------------------------------------------------- layer groups
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ("structured", "jacobian", "ntk_vp"))
def test_layer_groups_sum_to_full_kernel(arch, method):
    m, x1, _ = make(arch)
    by = empirical_ntk_by_layer(m, x1, reduction="trace", method=method, dtype=F64)
    assert list(by) == list(layer_groups(m))
    total = sum(by.values())
    assert rel(total, empirical_ntk(m, x1, reduction="trace", method=method, dtype=F64)) <= 1e-12
    assert rel(total, reduce(brute(arch), "trace")) <= 1e-10


@pytest.mark.parametrize("method", ("structured", "jacobian", "ntk_vp"))
def test_group_selection_matches_restricted_brute_force(method):
    m, x1, x2 = make("attn")
    names = ["W_V.weight", "W_O.weight", "W_O.bias", "pos"]
    K = empirical_ntk(m, x1, x2, groups=["W_V", "W_O", "pos"], method=method, dtype=F64)
    assert rel(K, brute_ntk(m, x1, x2, names=names)) <= 1e-10
    by = empirical_ntk_by_layer(m, x1, groups="ln", reduction="flat", method=method, dtype=F64)
    assert list(by) == ["ln"]
    assert rel(by["ln"], reduce(brute_ntk(m, x1, names=["ln.weight", "ln.bias"]), "flat")) <= 1e-10


def test_unknown_group_and_bad_arguments():
    m, x1, _ = make("mlp")
    with pytest.raises(ValueError, match="unknown layer group"):
        empirical_ntk(m, x1, groups=["nope"])
    with pytest.raises(ValueError, match="reduction"):
        empirical_ntk(m, x1, reduction="diag")
    with pytest.raises(ValueError, match="block"):
        empirical_ntk(m, x1, reduction="block")
    with pytest.raises(ValueError, match="class_weights"):
        empirical_ntk(m, x1, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="method"):
        empirical_ntk(m, x1, method="fast")


# ------------------------------------------------------------- class weights
@pytest.mark.parametrize("arch", ("mlp", "tms", "embed"))
@pytest.mark.parametrize("method", METHODS)
def test_class_weights(arch, method):
    m, x1, x2 = make(arch)
    C = brute(arch).shape[-1]
    w = [0.8 ** (c / 2) for c in range(C)]
    w[1] = -1.5
    for red in ("full", "mean", "trace"):
        K = empirical_ntk(m, x1, x2, reduction=red, class_weights=w, method=method, dtype=F64)
        assert rel(K, reduce(brute(arch, x2=True, weights=w), red)) <= 1e-10, red
    # weights matter
    K1 = empirical_ntk(m, x1, reduction="mean", method=method, dtype=F64)
    K2 = empirical_ntk(m, x1, reduction="mean", class_weights=w, method=method, dtype=F64)
    assert rel(K1, K2) > 1e-3


# ---------------------------------------------------------------- chunking
@pytest.mark.parametrize("arch", ("mlp", "embed", pytest.param("attn", marks=pytest.mark.slow), "tms"))
def test_chunking_invariance(arch):
    m, x1, x2 = make(arch)
    for method in ("structured", "jacobian", "ntk_vp"):
        ref = empirical_ntk(m, x1, reduction="flat", method=method, dtype=F64, chunk_size=100)
        for cs in (1, 4) if method == "structured" else (2,):
            K = empirical_ntk(m, x1, reduction="flat", method=method, dtype=F64, chunk_size=cs)
            assert rel(K, ref) <= 1e-12, (method, cs)
            K = empirical_ntk(m, x1, x2, reduction="trace", method=method, dtype=F64, chunk_size=cs)
            assert rel(K, reduce(brute(arch, x2=True), "trace")) <= 1e-10, (method, cs)


def test_progress_and_inputs_untouched():
    m, x1, _ = make("embed")
    calls = []
    x_before = x1.clone()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    # the structured path mirrors tiles (the reference computes all 9); "auto" may pick
    # either, depending on this machine's measured rates
    K = empirical_ntk(m, x1, chunk_size=2, dtype=F64, method="structured",
                      progress=lambda d, t, msg: calls.append((d, t, msg)))
    assert calls and calls[-1][0] == calls[-1][1] == 6       # 3 chunks -> 6 tiles (symmetric)
    assert all(isinstance(msg, str) for _, _, msg in calls)
    assert torch.equal(x1, x_before) and m.training
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
    assert next(m.parameters()).dtype == torch.float32      # float64 ran on a copy
    assert rel(K, brute("embed")) <= 1e-10


def test_model_with_frozen_parameters_and_1d_output():
    class Scalar(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(4, 1)

        def forward(self, x):
            return self.b(torch.sin(self.a(x))).squeeze(-1)

    torch.manual_seed(1)
    m = Scalar()
    for p in m.parameters():
        p.requires_grad_(False)
    x = torch.randn(6, 3)
    K = empirical_ntk(m, x, reduction="trace", dtype=F64)
    assert K.shape == (6, 6)
    assert rel(K, brute_ntk(m, x)[:, :, 0, 0]) <= 1e-10


# ------------------------------------------------------------- closed form
def test_modadd_mlp_closed_form():
    """paper-spec §4.5: K_net.3 = a·a'/width², K_net.0 = 4 (x·x') Σ_j v_j h_j h'_j / (2p·width²)."""
    from entk_core.families.base import get_family

    fam = get_family("modadd-mlp")
    cfg = fam.Config(p=7, width=16, seed=3)
    m = fam.build_model(cfg)
    x = fam.make_data(cfg).kernel_x.double()
    p, width = cfg.p, cfg.width
    W1, W2 = m.net[0].weight.detach().double(), m.net[3].weight.detach().double()
    h = x @ W1.T / math.sqrt(2 * p)
    a = h * h
    v = (W2 ** 2).mean(0)
    K3 = a @ a.T / width ** 2
    K0 = 4 * (x @ x.T) * ((h * v) @ h.T) / (2 * p * width ** 2)
    for method in METHODS:
        by = empirical_ntk_by_layer(m, x, reduction="trace", method=method, dtype=F64)
        assert list(by) == ["net.0", "net.3"]
        assert rel(by["net.3"], K3) <= 1e-10, method
        assert rel(by["net.0"], K0) <= 1e-10, method
    by32 = empirical_ntk_by_layer(m, fam.make_data(cfg).kernel_x, reduction="trace")
    assert rel(by32["net.0"], K0) <= 1e-5 and rel(by32["net.3"], K3) <= 1e-5


# ---------------------------------------------------------------- budget
def test_memory_budget_refusal_is_one_line():
    m, x1, _ = make("mlp")
    x = torch.randn(300, 5)
    with pytest.raises(MemoryBudgetError) as ei:
        empirical_ntk(m, x, reduction="full", memory_budget=1_000_000)
    msg = str(ei.value)
    assert "\n" not in msg and "budget" in msg and "trace" in msg
    assert isinstance(ei.value, ValueError)
    K = empirical_ntk(m, x, reduction="trace", memory_budget=2_000_000)
    assert K.shape == (300, 300)


def test_env_budget(monkeypatch):
    m, x1, _ = make("mlp")
    monkeypatch.setenv("ENTK_MEMORY_BUDGET", "10kB")
    with pytest.raises(MemoryBudgetError):
        empirical_ntk(m, torch.randn(100, 5))
    monkeypatch.setenv("ENTK_MEMORY_BUDGET", "1GB")
    assert empirical_ntk(m, torch.randn(10, 5)).shape == (10, 10, 3, 3)


# ------------------------------------------------------------------ layouts
def _force_layout(monkeypatch, layout, class_block):
    real = planner.choose

    def forced(*a, **k):
        p = real(*a, **k)
        p.layout, p.class_block = layout, class_block
        return p

    monkeypatch.setattr(planner, "choose", forced)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rect", (False, True))
def test_class_streaming_layout(arch, rect, monkeypatch):
    """The class-streamed trace (used when chunks do not fit) equals the brute force."""
    m, x1, x2 = make(arch)
    _force_layout(monkeypatch, "stream", 2)
    by, info = empirical_ntk_by_layer(m, x1, x2 if rect else None, reduction="trace", method="structured",
                                      dtype=F64, return_info=True)
    assert info.method == "structured" and info.layout == "stream" and (bool(info.structured) or arch == "tms")
    assert list(by) == list(layer_groups(m))
    ref = reduce(brute(arch, x2=rect), "trace")
    assert rel(sum(by.values()), ref) <= 1e-10
    if not rect:
        assert all(torch.equal(K, K.T) for K in by.values())


@pytest.mark.parametrize("reduction", ("flat", "full"))
def test_panel_layout_is_used_and_exact(reduction, monkeypatch):
    m, x1, x2 = make("embed")
    _, info = empirical_ntk(m, x1, reduction=reduction, method="structured", return_info=True)
    assert info.layout == "panels"
    _force_layout(monkeypatch, "panels", 1)      # several panels
    K, info = empirical_ntk(m, x1, reduction=reduction, method="structured", return_info=True)
    assert info.layout == "panels"
    assert rel(K, reduce(brute("embed"), reduction)) <= 1e-5
    if reduction == "flat":
        assert torch.equal(K, K.T)
    else:
        assert torch.equal(K, K.permute(1, 0, 3, 2))


def test_shared_model_across_threads():
    """A dashboard shares one module between sessions: concurrent kernels on it are correct
    and leave it untouched (parameters stay nn.Parameter, no hooks left behind)."""
    import threading

    m, x1, x2 = make("embed")
    ref = brute("embed", x2=True)
    params = dict(m.named_parameters())
    errors, results = [], []

    def work(red):
        try:
            for _ in range(3):
                results.append((red, empirical_ntk(m, x1, x2, reduction=red, dtype=F64)))
                m(x1)   # plain forwards of the shared module in between
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(r,)) for r in ("full", "trace", "mean", "full")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for red, K in results:
        assert rel(K, reduce(ref, red)) <= 1e-10
    assert dict(m.named_parameters()) == params
    assert all(isinstance(p, nn.Parameter) for p in m.parameters())
    assert not any(mod._forward_hooks for mod in m.modules())
