"""``auto``'s timed pilot (issue 18.4, :mod:`entk_core.engine._pilot`): when the estimates
leave the structured path, their pick and the structured path are timed on the first inputs,
and the path with the smallest estimate × (measured / estimated) runs. The kernel stays right (float64 brute force), what was
timed is in ``KernelInfo.pilot``, and a repeated request reuses the ratios."""
import pytest
import torch
from torch import nn

from _kernel_models import brute_ntk
from entk_core.engine import _pilot, planner
from entk_core.engine.kernels import empirical_ntk, estimate_ntk

F64 = torch.float64


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture
def pilot_always(monkeypatch):
    """Pilot every auto call whose paths fit: no minimum duration, cost or spread, and the
    first plan of an ``auto`` request rates the structured path 100x slower, so the estimates
    leave it (what triggers a pilot). Forced paths (the pilots) and the plan after the pilot,
    with its measured corrections, are not touched."""
    monkeypatch.setattr(_pilot, "MIN_SECONDS", 0.0)
    monkeypatch.setattr(_pilot, "SPREAD", 1e12)
    monkeypatch.setattr(_pilot, "MAX_COST", 1e12)
    monkeypatch.setattr(_pilot, "_SEEN", _pilot.OrderedDict())
    real = planner._estimate
    inject = {"structured": 100.0}

    def first_plan_leaves_structured(*a, **kw):
        if kw.get("method") == "auto" and not kw.get("corrections"):
            kw["corrections"] = dict(inject)
        return real(*a, **kw)

    monkeypatch.setattr(planner, "_estimate", first_plan_leaves_structured)
    return inject


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 5)).to(F64)


def test_corrections_scale_each_path_and_decide():
    """The planner multiplies a path's seconds by its measured ratio and takes the fastest
    corrected path, without its preference for structured."""
    groups = {"net": [("w1", (64, 32), "linear_weight"), ("w2", (10, 64), "linear_weight")]}
    base = planner.estimate(200, None, 10, groups, "full", "float64")
    assert base.method == "structured"
    slow = planner.estimate(200, None, 10, groups, "full", "float64", corrections={"structured": 1e4})
    assert slow.method != "structured"
    assert slow.paths["structured"]["seconds"] == pytest.approx(1e4 * base.paths["structured"]["seconds"])
    assert slow.paths["structured"]["correction"] == 1e4
    assert slow.seconds == pytest.approx(min(p["seconds"] for p in slow.paths.values() if p["fits"]))


def test_pilot_times_the_contenders_and_runs_the_fastest_corrected(pilot_always):
    m = mlp()
    x = torch.randn(40, 6, dtype=F64)
    K, info = empirical_ntk(m, x, return_info=True)
    assert rel(K, brute_ntk(m, x)) <= 1e-10
    p = info.pilot
    timed = {k: t for k, t in p["paths"].items() if "ratio" in t}
    assert not p["reused"] and p["inputs"] == 5 and len(timed) == 2 and "structured" in timed
    for t in timed.values():
        assert t["measured_s"] > 0 and t["estimated_s"] > 0 and t["ratio"] == pytest.approx(
            t["measured_s"] / t["estimated_s"])
    # the choice is the smallest corrected estimate of the full request (a path not timed is
    # scaled by the largest measured ratio)
    worst = max(t["ratio"] for t in timed.values())
    corrected = {k: estimate_ntk(m, x, method=k).paths[k]["seconds"] * (timed[k]["ratio"] if k in timed else worst)
                 for k in ("structured", "jacobian", "ntk_vp")}
    assert p["chose"] == info.method == min(corrected, key=corrected.get), corrected
    # a repeated request reuses the measured ratios: no second pilot
    K2, info2 = empirical_ntk(m, x, return_info=True)
    assert info2.pilot["reused"] and info2.pilot["seconds"] == 0.0 and info2.method == info.method
    assert torch.equal(K, K2)
    # another size is another request
    _, info3 = empirical_ntk(m, x[:32], return_info=True)
    assert not info3.pilot["reused"]


def test_a_path_whose_pilot_fails_is_not_chosen(pilot_always, monkeypatch):
    """A path that raises in its pilot is recorded with the reason and never chosen."""
    from entk_core.engine import _kernel_paths

    def broken(*a, **k):
        raise RuntimeError("this path is broken on purpose")

    pilot_always["jacobian"] = 100.0   # the first plan picks ntk_vp, which then fails its pilot
    monkeypatch.setattr(_kernel_paths, "_ntkvp_tile", broken)
    m = mlp(1)
    x = torch.randn(40, 6, dtype=F64)
    K, info = empirical_ntk(m, x, return_info=True)
    assert rel(K, brute_ntk(m, x)) <= 1e-10
    assert info.method != "ntk_vp"
    assert "broken on purpose" in info.pilot["paths"]["ntk_vp"]["error"]
    assert {k for k, t in info.pilot["paths"].items() if "ratio" in t} == {"structured"}


def test_no_pilot_for_small_calls_forced_methods_or_a_structured_pick(monkeypatch):
    m = mlp()
    x = torch.randn(40, 6, dtype=F64)
    _, info = empirical_ntk(m, x, return_info=True)             # estimated far below MIN_SECONDS
    assert info.pilot == {}
    monkeypatch.setattr(_pilot, "MIN_SECONDS", 0.0)
    monkeypatch.setattr(_pilot, "SPREAD", 1e12)
    monkeypatch.setattr(_pilot, "MAX_COST", 1e12)
    _, info = empirical_ntk(m, x, method="structured", return_info=True)
    assert info.pilot == {}
    _, info = empirical_ntk(m, x, return_info=True)             # the estimates keep the structured path
    assert info.method == "structured" and info.pilot == {}


def test_no_pilot_when_it_would_cost_too_much(pilot_always, monkeypatch):
    monkeypatch.setattr(_pilot, "MAX_COST", 1e-12)
    _, info = empirical_ntk(mlp(), torch.randn(40, 6, dtype=F64), return_info=True)
    assert info.pilot == {}
