"""Memory planner: byte parsing, estimates, choice of path, one-line refusals."""
from __future__ import annotations

import pytest

from entk_core.engine.costs import choose_form
from entk_core.engine.machine import available_memory, resolve_budget
from entk_core.engine.planner import MemoryBudgetError, ParamSpec, choose, estimate
from entk_core.engine.units import format_bytes, parse_bytes

MLP = {  # modular-addition MLP, p=29, width 512
    "net.0": [ParamSpec("net.0.weight", (512, 58), "linear_weight")],
    "net.3": [ParamSpec("net.3.weight", (29, 512), "linear_weight")],
}


def test_parse_bytes():
    assert parse_bytes("4GB") == 4 * 10**9
    assert parse_bytes("4 GiB") == 4 * 2**30
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1e9") == 10**9
    assert parse_bytes(12345) == 12345
    assert parse_bytes("1.5k") == 1500
    for bad in ("lots", "-1GB", 0, "4 XB", "1e400", float("inf")):
        with pytest.raises(ValueError):
            parse_bytes(bad)


def test_budget_resolution(monkeypatch):
    monkeypatch.setenv("ENTK_MEMORY_BUDGET", "3GB")
    assert resolve_budget() == 3 * 10**9
    assert resolve_budget("1GB") == 10**9
    monkeypatch.delenv("ENTK_MEMORY_BUDGET")
    avail = available_memory()
    assert avail > 0
    assert 0.3 * avail <= resolve_budget() <= 0.7 * avail + 2**30
    for bad in ("1e400", "lots"):                         # one line naming the variable
        monkeypatch.setenv("ENTK_MEMORY_BUDGET", bad)
        with pytest.raises(ValueError, match="^ENTK_MEMORY_BUDGET: "):
            resolve_budget()


def test_estimate_picks_structured_and_reports_every_path():
    p = estimate(841, None, 29, MLP, "trace", "float32", by_layer=True, memory_budget="8GB")
    assert p.fits and p.method == "structured"
    assert set(p.paths) == {"structured", "jacobian", "ntk_vp"}
    assert p.output_bytes == 2 * 841 * 841 * 4
    assert p.paths["jacobian"]["flops"] > 10 * p.paths["structured"]["flops"]
    assert p.bytes <= p.budget
    d = p.to_dict()
    assert d["method"] == "structured" and "summary" not in d
    assert "structured" in p.summary() and "\n" not in p.summary()


def test_flat_output_size_and_chunking():
    p = estimate(841, None, 29, MLP, "flat", "float32", memory_budget="8GB")
    assert p.output_bytes == (29 * 841) ** 2 * 4
    assert p.chunk_size < 841          # the (C·B)² tiles are capped
    p64 = estimate(841, None, 29, MLP, "flat", "float64", memory_budget="16GB")
    assert p64.output_bytes == 2 * p.output_bytes


def test_refusal_is_one_line_with_suggestions():
    with pytest.raises(MemoryBudgetError) as ei:
        choose(841, None, 29, MLP, "flat", "float32", memory_budget="1GB")
    msg = str(ei.value)
    assert "\n" not in msg
    assert "reduction='flat'" in msg and "1 GB" in msg and f"output {format_bytes((29 * 841) ** 2 * 4)}" in msg
    assert "at most" in msg and "reduction='trace'" in msg and "top_eigenpairs(model, k, x=x)" in msg
    # the suggested input count really fits
    n = int(msg.split("at most ")[1].split()[0])
    assert estimate(n, None, 29, MLP, "flat", "float32", memory_budget="1GB").fits
    assert not estimate(n + 1, None, 29, MLP, "flat", "float32", memory_budget="1GB").fits


def test_refusal_suggests_a_single_group():
    groups = {"big": [("big.w", (4000, 4000), "other")], "small": [("small.w", (10, 10), "other")]}
    with pytest.raises(MemoryBudgetError, match="one layer group \\('small'\\)"):
        choose(50, None, 10, groups, "trace", "float32", method="jacobian", memory_budget="100MB")


def test_choose_form():
    # an MLP layer (one position): pairwise beats per-example gradients
    assert choose_form("linear", 58, 512, 1, 29, 29) == "pair"
    # long sequences with a small layer: per-example gradients win
    assert choose_form("linear", 16, 16, 128, 1, 1) == "perex"
    # a convolution (many output positions): per-example gradients
    assert choose_form("linear", 27 + 1, 16, 1024, 1, 1, 10) == "perex"
    assert choose_form("elementwise", 1, 64, 8, 3, 3) == "perex"


def test_bad_requests():
    with pytest.raises(ValueError, match="reduction"):
        estimate(10, None, 2, MLP, "diag")
    with pytest.raises(ValueError, match="kind"):
        estimate(10, None, 2, {"g": [("w", (2, 2), "conv")]})
    with pytest.raises(ValueError, match="method"):
        estimate(10, None, 2, MLP, method="magic")


def test_estimate_ntk_matches_what_runs():
    import torch

    from _kernel_models import make
    from entk_core.engine.kernels import empirical_ntk, estimate_ntk

    m, x1, _ = make("attn")
    p = estimate_ntk(m, x1, reduction="flat", memory_budget="1GB")
    assert p.fits and p.method in ("structured", "jacobian", "ntk_vp") and p.seconds > 0
    _, info = empirical_ntk(m, x1, reduction="flat", memory_budget="1GB", return_info=True)
    assert info.method == p.method and info.chunk_size == p.chunk_size
    # the same plan (the seconds include each call's own measured setup, so they may differ)
    import re

    def strip(s):
        return re.sub(r"~[0-9.e+-]+ (s|min|h),", "~T,", s)

    assert strip(info.estimate) == strip(p.summary()) and "~T," in strip(p.summary())
    small = estimate_ntk(m, torch.randint(0, 5, (400, 3)), reduction="full", memory_budget="1MB")
    assert not small.fits and small.method is None and "what would fit" in small.suggestion


# A request that fits nowhere, with many layer groups: the refusal's search for what would
# fit used to recurse (estimate -> _suggest -> _fits -> estimate -> _suggest ...), every
# smaller request it tried searching again, so a flat 841 x 29 request over nine groups
# ran for minutes (hours for larger ones) instead of refusing.
NINE_GROUPS = {f"block{i}": [ParamSpec(f"block{i}.weight", (16, 16), "linear_weight", 3)] for i in range(9)}


@pytest.mark.timeout(30)
def test_a_request_that_fits_nowhere_is_refused_at_once():
    p = estimate(841, None, 29, NINE_GROUPS, "flat", "float32", memory_budget="100KB")
    assert not p.fits
    assert p.suggestion.startswith("what would fit: ") and "\n" not in p.suggestion
    with pytest.raises(MemoryBudgetError) as ei:
        choose(841, None, 29, NINE_GROUPS, "flat", "float32", memory_budget="100KB")
    msg = str(ei.value)
    assert "\n" not in msg and "memory budget is 100 kB" in msg and "what would fit" in msg


@pytest.mark.timeout(30)
def test_the_refusal_says_what_fits_or_that_nothing_does():
    # a trace kernel of 841 inputs cannot fit 100 kB in any form: nothing does
    p = estimate(841, None, 29, NINE_GROUPS, "trace", "float32", memory_budget="100KB")
    assert p.suggestion == "what would fit: nothing at this size; raise the budget"
    # 2,000 inputs of a mean kernel do not fit 1 MB, fewer do: the suggested count fits, one more does not
    p = estimate(2000, None, 29, NINE_GROUPS, "mean", "float32", memory_budget="1MB")
    n = int(p.suggestion.split("at most ")[1].split()[0])
    assert 1 <= n < 2000
    assert estimate(n, None, 29, NINE_GROUPS, "mean", "float32", memory_budget="1MB").fits
    assert not estimate(n + 1, None, 29, NINE_GROUPS, "mean", "float32", memory_budget="1MB").fits
