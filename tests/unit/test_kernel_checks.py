"""``check=k``: k seeded random kernel entries recomputed by per-example autograd in float64
(issue 18.3), from the library. The CLI and the cached workflows: tests/integration/test_check_cli.py."""
import pytest
import torch
from torch import nn

from _kernel_models import make
from entk_core.engine import _request
from entk_core.engine.checks import TOLERANCE, KernelCheckError, pick_entries
from entk_core.engine.eigenpairs import top_eigenpairs
from entk_core.engine.kernels import empirical_ntk, empirical_ntk_by_layer

F64 = torch.float64
FIELDS = {"entries", "max_rel_error", "tolerance", "dtype", "seed", "seconds", "worst"}


@pytest.mark.parametrize("arch", ("mlp", "embed", "attn", "tms"))
@pytest.mark.parametrize("reduction", ("full", "trace", "mean", "flat", "block"))
def test_check_passes_on_right_kernels_float32_and_float64(arch, reduction):
    m, x1, x2 = make(arch)
    for xx2, dtype in ((None, torch.float32), (None, F64), (x2, F64)):
        _, info = empirical_ntk(m, x1, xx2, reduction=reduction, block=(0, 1), dtype=dtype, check=4,
                                return_info=True)
        c = info.check
        assert set(c) == FIELDS and c["entries"] == 4 and c["dtype"] == "float64"
        assert c["tolerance"] == TOLERANCE[dtype]
        assert c["max_rel_error"] <= (1e-5 if dtype == torch.float32 else 1e-12), (xx2 is None, dtype)


class MixPositions(nn.Module):
    """``h + mean_t h``: positions interact within an example (no parameters)."""

    def forward(self, h):
        return h + h.mean(1, keepdim=True)


@pytest.mark.parametrize("axes", [((), ()), ((-1,), ()), ((1,), ()), ((-1,), (1,)), ((1, 2), ()), ((0,), ()),
                                  ((), (0,)), ((-1,), (0,)), ((0, -1), ())])
def test_check_covers_neural_tangents_axes(axes):
    torch.manual_seed(0)      # (N, T, 2) -> (N, T, 3): every output axis for trace_axes / diagonal_axes
    m = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), MixPositions(), nn.Linear(4, 3)).double()
    x = torch.randn(5, 3, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    K, info = empirical_ntk(m, x, trace_axes=axes[0], diagonal_axes=axes[1], check=6, return_info=True)
    assert info.check["entries"] == min(6, K.numel()) and info.check["max_rel_error"] <= 1e-12
    assert len(info.check["worst"]["index"]) == K.ndim


def test_check_is_seeded_and_off_by_default():
    m, x1, _ = make("mlp")
    _, a = empirical_ntk(m, x1, check=4, return_info=True)
    _, b = empirical_ntk(m, x1, check=4, return_info=True)
    assert a.check["worst"] == b.check["worst"] and a.check["max_rel_error"] == b.check["max_rel_error"]
    ctx = _request.Ctx(m, x1, reduction="trace", plan=False)
    e1, e2 = pick_entries(ctx, 4, seed=0), pick_entries(ctx, 4, seed=1)
    assert [e.index for e in e1] == [e.index for e in pick_entries(ctx, 4, seed=0)]
    assert [e.index for e in e1] != [e.index for e in e2]
    assert any(e.index[0] == e.index[1] for e in e1)           # some on the batch diagonal
    _, info = empirical_ntk(m, x1, return_info=True)
    assert info.check == {}
    for bad in (-1, 2.5, "4"):
        with pytest.raises(ValueError, match="check must be a number of kernel entries"):
            empirical_ntk(m, x1, check=bad)


def test_check_by_layer_and_a_tight_tolerance_fails_in_one_line():
    m, x1, x2 = make("attn")
    by, info = empirical_ntk_by_layer(m, x1, x2, reduction="trace", check=4, return_info=True)
    assert info.check["max_rel_error"] <= 1e-5 and info.check["worst"]["kernel"] in by
    with pytest.raises(KernelCheckError) as e:
        empirical_ntk(m, x1, dtype=torch.float32, check=4, check_tolerance=1e-15)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("eNTK spot check failed: K[") and "tolerance 1e-15" in msg
    assert isinstance(e.value, ValueError)                      # the CLI's one-line bad-input error


def test_a_wrong_kernel_is_caught(monkeypatch):
    """A kernel the engine gets wrong (simulated: every entry 1 % too large) fails the check."""
    from entk_core.engine import _kernel_paths

    m, x1, _ = make("mlp")
    real = _kernel_paths._finish

    def broken(ctx, outs):
        outs = real(ctx, outs)
        for K in outs.values():
            K.mul_(1.01)
        return outs

    monkeypatch.setattr(_kernel_paths, "_finish", broken)
    with pytest.raises(KernelCheckError, match=r"relative error 1\.0\de-02 > tolerance 1e-03"):
        empirical_ntk(m, x1, check=4)


@pytest.mark.parametrize("method", ("gram", "dense", "lanczos", "iterative"))
def test_check_on_spectra_of_a_model(method):
    m, x1, _ = make("tms")
    w = torch.linspace(1.0, 0.3, 6)
    _, _, info = top_eigenpairs(m, 3, x=x1, class_weights=w, method=method, check=4, return_info=True)
    assert info.check["entries"] == 4 and info.check["max_rel_error"] <= 1e-5, info.path
    with pytest.raises(ValueError, match="does not take check"):
        top_eigenpairs(torch.eye(4), 2, check=4)
