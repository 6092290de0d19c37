"""The planner's time model: counts against hand counts, rates re-measured when stale or
contradicted, ``auto`` following the counts. No timing is asserted."""
from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from entk_core.engine import machine
from entk_core.engine._profile import ModelProfile, Pass, profile_model
from entk_core.engine._work import path_work
from entk_core.engine.costs import ChannelShape, Item
from entk_core.engine.kernels import empirical_ntk, estimate_ntk
from entk_core.engine.machine import Rates, machine_rates, observe_call, stale_reason
from entk_core.engine.planner import ParamSpec, estimate


def _profile(model: nn.Module, x: torch.Tensor) -> ModelProfile:
    params = dict(model.named_parameters())

    def run(b):
        ps = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        return torch.func.functional_call(model, ps, (x[:b],)), list(ps.values())

    return profile_model(run, x.shape[0])


# ------------------------------------------------------------------ counts
def test_profile_counts_match_hand_counts():
    torch.manual_seed(0)
    # Linear(3, 4): y = x Wᵀ + b: 2·3·4 flops per example; reads x (3), writes y (4); W and b read once
    p = _profile(nn.Linear(3, 4), torch.randn(5, 3))
    assert p.fwd.flops == 24 and p.fwd.flops_fixed == 0
    assert p.fwd.bytes == (3 + 4) * 4 and p.fwd.bytes_fixed == (12 + 4) * 4
    assert p.bwd.flops == 24                               # ∂W = gᵀ x only (x needs no gradient)
    # 3 -> 4 -> 2 MLP without biases: forward 2·3·4 + 2·4·2; backward ∂W2, ∂h, ∂W1
    mlp = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2, bias=False))
    p = _profile(mlp, torch.randn(5, 3))
    assert p.fwd.flops == 24 + 16 and p.bwd.flops == 16 + 16 + 24
    assert p.fwd.ops == 3 and p.measured
    # Conv2d 2 -> 3, 3×3, padding 1 on 4×4: 16 positions · 3 outputs · 2·(2·9) flops
    p = _profile(nn.Conv2d(2, 3, 3, padding=1, bias=False), torch.randn(5, 2, 4, 4))
    assert p.fwd.flops == 16 * 3 * 2 * 18 and p.bwd.flops == p.fwd.flops


def test_path_work_counts_a_tiny_request_by_hand():
    # one Linear 3 -> 4 (no bias), N = 2, C = 4, full kernel, one chunk; a profile given by hand
    prof = ModelProfile(Pass(1, 24, 28, 0, 48), Pass(2, 24, 44, 0, 48))
    kw = dict(n1=2, n2=2, C=4, ch=ChannelShape(4, 4, 1), B=2, cache=True, symmetric=True, out_bytes=2 * 2 * 16 * 4,
              s=4, act=4, n_params=1)
    # the reference: vmap(jacrev) = forward of 2 examples + backward of 2·4 rows (24 flops each),
    # then per-example Jacobians contracted over every channel pair: 2 · 4² · 2² · 12
    jac = path_work("jacobian", [Item("other", "l", 12)], prof, **kw)
    assert jac.flops == 2 * 24 + 8 * 24 + 2 * 16 * 4 * 12
    # NTK-vector products: one tile, 4·2 basis vectors, each a vjp over 2 examples and a jvp
    # (primal and tangent: 3 forwards) over 2, after one forward for the vjp
    vp = path_work("ntk_vp", [Item("other", "l", 12)], prof, **kw)
    assert vp.flops == 2 * 24 + 8 * (2 * 24 + 3 * 2 * 24)
    # structured, per-example form: forward, batched cotangents (60% of a full backward's
    # flops), Σ_t g_t a_tᵀ per example and channel (2·4·2·4·3), then the Gram of the rows
    it = Item("linear", "l", 12, 3, 4, 1, "perex")
    st = path_work("structured", [it], prof, **kw)
    assert st.flops == pytest.approx(2 * 24 + 0.6 * 8 * 24 + 2 * 4 * 2 * 4 * 3 + 2 * 16 * 4 * 12)
    assert min(jac.ops, vp.ops, st.ops) > 0 and min(jac.bytes, vp.bytes, st.bytes) > 0


def test_seconds_add_launches_flops_and_traffic():
    r = Rates({"float32": 1e10}, {"float32": 1e9}, "measured", bandwidth=1e9, op_seconds=1e-5)
    assert r.seconds(100, 2e10, 3e9) == pytest.approx(100e-5 + 2.0 + 3.0)
    d = r.describe()
    assert d["gemm_gflops"] == {"float32": 10.0} and d["bandwidth_gbs"] == 1.0 and d["op_us"] == 10.0


# ------------------------------------------------------------------- rates
def _fake(calls: list):
    def measure(device, reason="first use"):
        calls.append(reason)
        return Rates({"float32": 5e10, "float64": 2e10}, {"float32": 1e10}, "measured", machine._machine_key(device),
                     bandwidth=4e9, op_seconds=2e-5, measured_at=time.time(), load=machine.load_per_core(),
                     reason=reason)
    return measure


@pytest.fixture
def fresh_rates(monkeypatch, tmp_path):
    """Rates measured by a fake probe into an empty cache folder; returns the probe's calls."""
    monkeypatch.setenv("ENTK_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("ENTK_CALIBRATION", raising=False)
    monkeypatch.setattr(machine, "_RATES", {})
    monkeypatch.setattr(machine, "_CHECKED", {})
    monkeypatch.setattr(machine, "_LAST_UPDATE", {})
    calls: list = []
    monkeypatch.setattr(machine, "_measure_rates", _fake(calls))
    return calls


def test_rates_are_stored_with_time_and_load_and_remeasured_when_stale(fresh_rates, tmp_path, monkeypatch):
    r = machine_rates()
    assert fresh_rates == ["first use"] and r.source == "measured"
    stored = json.loads((tmp_path / machine.RATES_FILE).read_text())[r.key]
    assert stored["measured_at"] == r.measured_at and stored["load"] == r.load and stored["bandwidth"] == 4e9
    # a new process reads them back, fresh
    monkeypatch.setattr(machine, "_RATES", {})
    assert machine_rates().source == "cached" and len(fresh_rates) == 1
    # two days old: measured again, and the reason stored
    stored["measured_at"] = time.time() - 2 * 86400
    (tmp_path / machine.RATES_FILE).write_text(json.dumps({r.key: stored}))
    monkeypatch.setattr(machine, "_RATES", {})
    r2 = machine_rates()
    assert r2.source == "measured" and fresh_rates[-1].startswith("stale (measured 48 h ago)")
    assert json.loads((tmp_path / machine.RATES_FILE).read_text())[r.key]["reason"] == fresh_rates[-1]


def test_stale_reason():
    now = 1e9
    r = Rates({"float32": 1e10}, {"float32": 1e9}, "cached", measured_at=now - 60, load=0.5)
    assert stale_reason(r, now, load=0.6) is None
    assert stale_reason(r, now, load=2.0).startswith("load changed (0.50 per core when measured, 2.00 now)")
    assert stale_reason(r, now + 2 * 86400, load=0.5).startswith("stale")
    assert stale_reason(Rates({}, {}, "cached"), now, 0.5) == "stale (no measurement time)"


def test_a_contradicting_call_remeasures_the_rates(fresh_rates, monkeypatch):
    machine_rates()
    assert observe_call(1.0, 2.5) is None                         # within 3x: kept
    assert observe_call(0.01, 0.2) is None                        # too short to judge
    upd = observe_call(1.0, 4.0)                                  # 4x slower than estimated
    assert upd is not None and upd["reason"].startswith("a call measured 4x its estimate")
    assert upd["before"]["source"] == "measured" and upd["after"]["reason"] == upd["reason"]
    assert fresh_rates[-1] == upd["reason"]
    assert observe_call(1.0, 10.0) is None                        # at most once per interval
    monkeypatch.setattr(machine, "_LAST_UPDATE", {})
    assert observe_call(4.0, 1.0) is not None                     # 4x faster too


def test_a_kernel_call_off_its_estimate_updates_the_rates_in_its_info(fresh_rates, monkeypatch, tmp_path):
    r = machine_rates()
    # rates a million times too slow: every call is far faster than its estimate
    slow = {"gemm": {"float32": 1e3, "float64": 1e3}, "autograd": {"float32": 1e3}, "bandwidth": 1e3,
            "op_seconds": 1.0, "measured_at": time.time(), "load": machine.load_per_core()}
    (tmp_path / machine.RATES_FILE).write_text(json.dumps({r.key: slow}))
    monkeypatch.setattr(machine, "_RATES", {})
    monkeypatch.setattr(machine, "OFF_MIN_SECONDS", 0.0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    x = torch.randn(6, 5)
    K, info = empirical_ntk(model, x, reduction="trace", return_info=True)
    assert info.rates["source"] == "cached" and info.rates["gemm_gflops"]["float32"] == 0.0
    assert info.estimated_seconds > 3 * info.seconds
    upd = info.rates["update"]
    assert "x its estimate" in upd["reason"] and upd["after"]["gemm_gflops"]["float32"] == 50.0
    assert machine_rates().gemm_rate("float32") == 5e10           # the new rates are used from now on
    # the kernel itself is the reference's
    ref = empirical_ntk(model.double(), x.double(), reduction="trace", method="jacobian")
    torch.testing.assert_close(K.double(), ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- choice
def test_auto_takes_the_path_the_counts_make_cheaper(monkeypatch):
    monkeypatch.setenv("ENTK_CALIBRATION", "off")
    # a wide MLP, trace: the per-example Jacobians cost N·C·P and their contraction 2·N²·C·P;
    # the structured path contracts (g·g')(a·a') at a fraction of it
    mlp = {"a": [ParamSpec("a.weight", (2048, 512), "linear_weight")],
           "b": [ParamSpec("b.weight", (10, 2048), "linear_weight")]}
    p = estimate(500, None, 10, mlp, "trace", "float32", memory_budget="8GB")
    assert p.method == "structured"
    assert p.paths["jacobian"]["seconds"] > 5 * p.paths["structured"]["seconds"]
    # a full kernel of 400 channels of a model without structured rules (one raw parameter
    # vector of a million entries), 8 inputs: contracting per-example Jacobians costs
    # 2·C²·N²·P = 2e13 flops; NTK-vector products, one vjp + jvp per channel and input,
    # about C·N·(4 + 3·2)·N·P = 2.6e11
    vec = {"w": [ParamSpec("w", (1_000_000,), "other")]}
    prof = ModelProfile(Pass(4, 2e6, 8e3, 0, 4e6), Pass(6, 4e6, 16e3, 0, 8e6))
    p = estimate(8, None, 400, vec, "full", "float32", memory_budget="8GB", profile=prof, activation_per_example=1e3)
    assert p.paths["ntk_vp"]["flops"] < 3e11 < 2e13 < p.paths["jacobian"]["flops"]
    assert p.paths["ntk_vp"]["seconds"] * 5 < min(p.paths["jacobian"]["seconds"], p.paths["structured"]["seconds"])
    assert p.method == "ntk_vp"


def test_estimate_ntk_uses_the_models_measured_counts(monkeypatch):
    monkeypatch.setenv("ENTK_CALIBRATION", "off")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4)).eval()
    p = estimate_ntk(model, torch.randn(20, 8), reduction="full")
    jac = p.paths["jacobian"]
    # the reference's forward (2·(8·32 + 32·4) flops per example) is in its flops, and the
    # contraction 2·C²·N²·P dominates
    P = 8 * 32 + 32 + 32 * 4 + 4
    assert jac["flops"] >= 2 * 16 * 400 * P
    assert {"ops", "flops", "traffic", "seconds"} <= set(jac)
