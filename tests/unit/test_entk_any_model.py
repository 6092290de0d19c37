"""The eNTK of any model (issue 11): structured inputs, (N, *S) outputs with neural-tangents'
trace_axes / diagonal_axes, convolution / norm rules, clear semantics (train mode, NaN,
no_grad, deepcopy), recorded fallbacks, cancellation, devices. Every kernel is compared with
the independent float64 brute force of ``tests/_brute.py`` at 1e-10."""
from __future__ import annotations

import itertools
import logging
import threading

import pytest
import torch
from torch import nn

from _brute import jacobian, nt_kernel
from entk_core.engine.devices import resolve_device
from entk_core.engine.kernels import TrainModeWarning, empirical_ntk, empirical_ntk_by_layer, estimate_ntk
from entk_core.engine.eigenpairs import top_eigenpairs

F64 = torch.float64
METHODS = ("structured", "jacobian", "ntk_vp")


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max())


# ----------------------------------------------------------------- models
class SeqModel(nn.Module):
    """(x (N, T, 3) float, mask (N, T) bool) -> (N, T, C): embedding-free sequence model with
    a LayerNorm, a Linear mixing positions through a masked mean, and a per-position head."""

    def __init__(self, d=3, h=5, C=4):
        super().__init__()
        self.inp = nn.Linear(d, h)
        self.ln = nn.LayerNorm(h)
        self.mix = nn.Linear(h, h, bias=False)
        self.head = nn.Linear(h, C)

    def forward(self, x, mask):
        z = self.ln(torch.tanh(self.inp(x)))                                 # (N, T, h)
        m = mask.to(z.dtype)[..., None]
        ctx = (z * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
        return self.head(torch.tanh(z + self.mix(ctx)))                      # (N, T, C)


class DictModel(nn.Module):
    """model(**{"tokens": (N, T) int, "weights": (N, T) float}) -> (N, C)."""

    def __init__(self, V=7, d=4, C=3):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        self.norm = nn.RMSNorm(d)
        self.out = nn.Linear(d, C)

    def forward(self, tokens, weights):
        e = self.norm(self.emb(tokens)) * weights[..., None]
        return self.out(torch.sin(e.sum(1)))


def seq_data(N=4, T=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, T, 3, generator=g)
    mask = torch.rand(N, T, generator=g) > 0.3
    mask[:, 0] = True
    return x, mask


# ---------------------------------------------------------- pytree inputs
@pytest.mark.parametrize("method", METHODS + ("auto",))
def test_tuple_inputs_passed_positionally(method):
    torch.manual_seed(0)
    m = SeqModel()
    x1, x2 = seq_data(4, seed=1), seq_data(3, seed=2)
    J1, J2 = jacobian(m, x1), jacobian(m, x2)
    K = empirical_ntk(m, x1, x2, trace_axes=(), diagonal_axes=(), method=method, dtype=F64)
    assert K.shape == (4, 3, 3, 3, 4, 4)
    assert rel(K, nt_kernel(J1, J2)) <= 1e-10


@pytest.mark.parametrize("method", METHODS)
def test_dict_inputs_passed_by_keyword(method):
    torch.manual_seed(0)
    m = DictModel()
    g = torch.Generator().manual_seed(3)
    x1 = {"tokens": torch.randint(0, 7, (5, 4), generator=g), "weights": torch.rand(5, 4, generator=g)}
    x2 = {"tokens": torch.randint(0, 7, (3, 4), generator=g), "weights": torch.rand(3, 4, generator=g)}
    J1 = jacobian(m, x1)
    for xx2, J2 in ((None, J1), (x2, jacobian(m, x2))):
        for red in ("full", "trace", "flat"):
            K = empirical_ntk(m, x1, xx2, reduction=red, method=method, dtype=F64)
            ref = nt_kernel(J1, J2)                       # (N1, N2, C, C)
            ref = {"full": ref, "trace": ref.diagonal(dim1=2, dim2=3).mean(-1),
                   "flat": ref.permute(2, 0, 3, 1).reshape(3 * ref.shape[0], 3 * ref.shape[1])}[red]
            assert rel(K, ref) <= 1e-10, (red, xx2 is None)


def test_structure_and_shape_mismatch_are_one_line_errors_naming_both():
    m = SeqModel()
    x1, mask1 = seq_data(4)
    x2, mask2 = seq_data(3, T=5)
    with pytest.raises(ValueError) as ei:
        empirical_ntk(m, (x1, mask1), (x2, mask2))
    msg = str(ei.value)
    assert "\n" not in msg and "(4, 3, 3)" in msg and "(3, 5, 3)" in msg
    with pytest.raises(ValueError, match="x1 is tuple .* x2 is dict"):
        empirical_ntk(m, (x1, mask1), {"x": x1, "mask": mask1})
    with pytest.raises(ValueError, match="batch size"):
        empirical_ntk(m, (x1, mask1[:2]))
    with pytest.raises(TypeError, match="unsupported type"):
        empirical_ntk(m, (x1, object()))
    mlp = nn.Linear(3, 2)
    with pytest.raises(ValueError) as ei:
        empirical_ntk(mlp, torch.randn(4, 3), torch.randn(2, 5))
    assert "(4, 3)" in str(ei.value) and "(2, 5)" in str(ei.value) and "\n" not in str(ei.value)


# ------------------------------------------------ neural-tangents output axes
AXES = list(itertools.product(("keep", "trace", "diag"), repeat=3))


@pytest.mark.parametrize("roles", AXES, ids=lambda r: "-".join(r))
def test_trace_and_diagonal_axes_match_neural_tangents_semantics(roles):
    """Every combination of roles for the axes (N, T, C) of a (N, T, C) output, against
    the brute force reduced by neural-tangents' rules, for every method."""
    torch.manual_seed(0)
    m = SeqModel()
    x1, x2 = seq_data(4, seed=1), seq_data(3, seed=2)
    tr = tuple(i - 3 if i == 2 else i for i, r in enumerate(roles) if r == "trace")   # a negative axis too
    dg = tuple(i for i, r in enumerate(roles) if r == "diag")
    J1 = jacobian(m, x1)
    sides = [(None, J1)] if roles[0] != "keep" else [(None, J1), (x2, jacobian(m, x2))]
    for xx2, J2 in sides:
        ref = nt_kernel(J1, J2, tr, dg)
        for method in METHODS:
            K = empirical_ntk(m, x1, xx2, trace_axes=tr, diagonal_axes=dg, method=method, dtype=F64)
            assert K.shape == ref.shape, (method, K.shape, ref.shape)
            assert rel(K, ref) <= 1e-10, (method, xx2 is None)


def test_reduction_shorthands_are_neural_tangents_cases():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 4))
    x = torch.randn(5, 3)
    K = empirical_ntk(m, x, dtype=F64)
    assert torch.allclose(K, empirical_ntk(m, x, trace_axes=(), diagonal_axes=(), dtype=F64), atol=1e-14)
    assert torch.allclose(empirical_ntk(m, x, reduction="trace", dtype=F64),
                          empirical_ntk(m, x, trace_axes=(-1,), dtype=F64), atol=1e-14)
    with pytest.raises(ValueError, match="either reduction"):
        empirical_ntk(m, x, reduction="trace", trace_axes=(-1,))
    with pytest.raises(ValueError, match="out of range"):
        empirical_ntk(m, x, trace_axes=(2,))
    with pytest.raises(ValueError, match="both"):
        empirical_ntk(m, x, trace_axes=(1,), diagonal_axes=(1,))
    with pytest.raises(ValueError, match="x2 = None"):
        empirical_ntk(m, x, x[:2], diagonal_axes=(0,))


def test_sequence_output_by_layer_sums_and_flat_spectrum():
    torch.manual_seed(0)
    m = SeqModel()
    x = seq_data(4, seed=1)
    by = empirical_ntk_by_layer(m, x, trace_axes=(-1,), dtype=F64)
    assert list(by) == ["inp", "ln", "mix", "head"]
    ref = nt_kernel(jacobian(m, x), jacobian(m, x), (-1,), ())
    assert rel(sum(by.values()), ref) <= 1e-10
    # the flattened kernel of an (N, T, C) output: C = T·C channels, class-major
    vals, vecs = top_eigenpairs(m, 6, x=x, dtype=F64, method="lanczos")
    Kf = empirical_ntk(m, x, reduction="flat", dtype=F64)
    ev = torch.linalg.eigvalsh(Kf).flip(0)[:6].numpy()
    assert abs(vals - ev).max() <= 1e-9 * ev[0]


# ------------------------------------------------------------ structured rules
class ConvNet(nn.Module):
    def __init__(self, dims=2, bias=True, stride=1, dilation=1, padding=1, groups=1):
        super().__init__()
        Conv = nn.Conv2d if dims == 2 else nn.Conv1d
        self.c1 = Conv(2, 4, 3, stride=stride, dilation=dilation, padding=padding, bias=bias, groups=groups)
        same = dims == 1 and stride == 1
        self.c2 = Conv(4, 3, 3 if same else 2, padding="same" if same else 0)
        self.dims = dims

    def forward(self, x):
        h = torch.tanh(self.c1(x))
        h = self.c2(h)
        return h.flatten(1)[:, :6] * 2 + h.mean(dim=tuple(range(2, 2 + self.dims)))[:, :1]


@pytest.mark.parametrize("cfg", [
    dict(dims=2), dict(dims=2, bias=False, stride=2), dict(dims=2, dilation=2, padding=2),
    dict(dims=1), dict(dims=1, stride=2, padding=0), dict(dims=2, groups=2),
], ids=["2d", "2d-stride-nobias", "2d-dilation", "1d-same", "1d-stride", "2d-groups-fallback"])
def test_convolution_rule_matches_brute_force(cfg):
    torch.manual_seed(0)
    m = ConvNet(**cfg)
    shape = (5, 2, 7, 6) if cfg["dims"] == 2 else (5, 2, 9)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    J = jacobian(m, x)
    for red, ref in (("full", nt_kernel(J, J)), ("trace", nt_kernel(J, J, (-1,)))):
        K, info = empirical_ntk(m, x, reduction=red, method="structured", dtype=F64, return_info=True)
        assert rel(K, ref) <= 1e-10, red
    if cfg.get("groups", 1) == 1:
        assert info.structured["c1"]["rule"] == f"Conv{cfg['dims']}d" and info.structured["c1"]["form"] == "perex"
        assert not info.fallbacks
    else:
        fb = {n for f in info.fallbacks for n in f["params"]}
        assert {"c1.weight", "c1.bias"} <= fb and "c2.weight" not in fb
        assert any("groups" in f["reason"] for f in info.fallbacks)


class GemmaStyleRMSNorm(nn.Module):
    """Like transformers' Gemma3RMSNorm: ``n(x) · (1 + w)``, normalised in float32."""

    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        xf = x.float() if x.dtype != torch.float64 else x
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * (1.0 + self.weight)).type_as(x)


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.ln2d = nn.LayerNorm((2, 4))                  # normalised over the last two axes
        self.rms = nn.RMSNorm(4)
        self.gemma = GemmaStyleRMSNorm(4)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            for p in (self.ln2d.weight, self.ln2d.bias, self.rms.weight, self.gemma.weight):
                p.normal_(0.5, 0.3)

    def forward(self, x):                                 # x (N, 2, 3)
        h = self.ln2d(torch.tanh(self.lin(x)))
        h = self.gemma(self.rms(h) + h)
        return self.head(h).sum(1)


def test_norm_gain_rules_match_brute_force():
    torch.manual_seed(0)
    m = Norms()
    x = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(5))
    x2 = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(6))
    J, J2 = jacobian(m, x), jacobian(m, x2)
    for method in ("auto", "structured"):
        K, info = empirical_ntk(m, x, x2, method=method, dtype=F64, return_info=True)
        assert rel(K, nt_kernel(J, J2)) <= 1e-10
    assert {info.structured[n]["rule"] for n in ("ln2d", "rms", "gemma")} == {"elementwise (norm)"}
    assert not info.fallbacks
    by = empirical_ntk_by_layer(m, x, groups=["gemma", "rms"], reduction="trace", dtype=F64)
    names = ["rms.weight", "gemma.weight"]
    Jg = jacobian(m, x, names)
    assert rel(by["gemma"] + by["rms"], nt_kernel(Jg, Jg, (-1,))) <= 1e-10


def test_a_norm_that_is_not_elementwise_falls_back():
    class Odd(nn.Module):                                 # named like a norm, but mixes features
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4))

        def forward(self, x):
            return x * self.weight.roll(1)

    Odd.__name__ = "OddLayerNorm"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), Odd(), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    K, info = empirical_ntk(m, x, method="structured", dtype=F64, return_info=True)
    assert "1.weight" in {n for f in info.fallbacks for n in f["params"]}
    J = jacobian(m, x)
    assert rel(K, nt_kernel(J, J)) <= 1e-10


# --------------------------------------------------------------- semantics
def test_works_under_no_grad_and_inference_mode():
    torch.manual_seed(0)
    m = SeqModel()
    x = seq_data(4, seed=1)
    ref = nt_kernel(jacobian(m, x), jacobian(m, x), (-1,))
    for ctxm in (torch.no_grad, torch.inference_mode):
        with ctxm():
            for method in ("auto", "structured", "jacobian", "ntk_vp"):
                K = empirical_ntk(m, x, trace_axes=(-1,), method=method, dtype=F64)
                assert rel(K, ref) <= 1e-10, (ctxm.__name__, method)
            v, _ = top_eigenpairs(m, 3, x=x, dtype=F64)
            assert v[0] > 0
    with torch.inference_mode():                          # inputs and model made in inference mode
        mi = SeqModel()
        xi = seq_data(3, seed=2)
        Ki = empirical_ntk(mi, xi, trace_axes=(-1,), dtype=F64)
    Ji = jacobian(mi, (xi[0].clone(), xi[1].clone()))
    assert rel(Ki, nt_kernel(Ji, Ji, (-1,))) <= 1e-10


def test_train_mode_batchnorm_and_dropout_warn_or_refuse():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Tanh(), nn.Linear(6, 2))
    with torch.no_grad():
        m[1].running_mean.normal_()
        m[1].running_var.uniform_(0.5, 2)
    x = torch.randn(5, 3)
    m.train()
    with pytest.warns(TrainModeWarning) as rec:
        K = empirical_ntk(m, x, dtype=F64)
    msg = str(rec[0].message)
    assert "\n" not in msg and "eval mode" in msg and "BatchNorm1d" in msg and "Dropout" in msg
    assert rec[0].filename == __file__                    # the warning points at the caller's line
    assert m.training and m[1].training                   # the caller's modes are untouched
    with pytest.raises(ValueError, match="training mode"):
        empirical_ntk(m, x, allow_train_mode=False)
    m.eval()
    J = jacobian(m, x)
    assert rel(K, nt_kernel(J, J)) <= 1e-10               # computed in eval mode
    empirical_ntk(m, x, allow_train_mode=False)           # eval mode: no warning, no refusal


def test_nan_and_inf_are_errors_naming_where():
    torch.manual_seed(0)
    m = DictModel()
    x = {"tokens": torch.randint(0, 7, (4, 3)), "weights": torch.rand(4, 3)}
    x["weights"][2, 1] = float("nan")
    with pytest.raises(ValueError) as ei:
        empirical_ntk(m, x)
    msg = str(ei.value)
    assert "\n" not in msg and "x1['weights']" in msg and "NaN" in msg and "(2, 1)" in msg
    x["weights"][2, 1] = 0.5
    with torch.no_grad():
        m.out.weight[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"parameter 'out.weight' contains inf at index \(1, 2\)"):
        empirical_ntk(m, x)
    with pytest.raises(ValueError, match="out.weight"):
        top_eigenpairs(m, 2, x=x)
    K = empirical_ntk(m, x, check_finite=False, method="jacobian")
    assert not torch.isfinite(K).all()


class Uncopyable(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.lock = threading.Lock()                      # deepcopy fails on a lock

    def forward(self, x):
        return self.lin(x) ** 2


def test_deepcopy_failure_never_mutates_a_training_module():
    torch.manual_seed(0)
    m = Uncopyable()
    x = torch.randn(4, 3)
    m.train()
    with pytest.raises(ValueError, match="deepcopy failed.*model.eval"):
        empirical_ntk(m, x)
    assert m.training
    m.eval()
    K, info = empirical_ntk(m, x, dtype=torch.float32, return_info=True)
    assert info.model_copy.startswith("shared (deepcopy failed")
    assert not any(mod._forward_hooks for mod in m.modules()) and not m.training

    class Same(nn.Module):                                # the same function, copyable
        def __init__(self, lin):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(x) ** 2

    J = jacobian(Same(m.lin), x)
    assert rel(K, nt_kernel(J, J)) <= 1e-5
    with pytest.raises(ValueError, match="deepcopy failed"):   # a cast needs a copy
        empirical_ntk(m, x, dtype=F64)


def test_fallbacks_are_recorded_and_logged_once(caplog):
    class RawParam(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.randn(3, 4))
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.tanh(x @ self.W))

    torch.manual_seed(0)
    m = RawParam()
    x = torch.randn(5, 3)
    with caplog.at_level(logging.INFO, logger="entk_core.engine"):
        _, info = empirical_ntk(m, x, method="structured", return_info=True)
        empirical_ntk(m, x, method="structured")
    assert info.fallbacks == [{"params": ["W"], "path": "jacobian", "reason": "no structured rule for this parameter"}]
    assert info.structured == {"head": {"rule": "Linear", "form": "pair", "positions": 1}}
    msgs = [r.getMessage() for r in caplog.records if "per-parameter Jacobian" in r.getMessage()]
    assert len(msgs) == 1 and "W" in msgs[0]
    d = info.to_dict()
    assert d["method"] == "structured" and d["fallbacks"][0]["params"] == ["W"] and d["estimate"]


@pytest.mark.parametrize("kind", ("GRU", "LSTM"))
def test_recurrent_models_loop_per_example_recorded(kind, caplog):
    class Rec(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(nn, kind)(3, 4, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    Rec.__name__ = f"Rec{kind}"                         # the log registry is per model class
    torch.manual_seed(0)
    m = Rec()
    x = torch.randn(4, 5, 3)
    J = jacobian(m, x)
    with caplog.at_level(logging.INFO, logger="entk_core.engine"):
        for method in ("auto", "jacobian", "ntk_vp"):
            K, info = empirical_ntk(m, x, method=method, dtype=F64, return_info=True)
            assert rel(K, nt_kernel(J, J)) <= 1e-10, method
            assert any("recurrent" in lp["reason"] for lp in info.loops), method
    assert any("loop" in r.getMessage() for r in caplog.records)


class Stop(Exception):
    pass


def test_progress_raising_cancels_kernels_and_spectra():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4))
    x = torch.randn(40, 3)
    seen = []

    def cancel(done, total, msg):
        seen.append(msg)
        raise Stop()

    with pytest.raises(Stop):
        empirical_ntk(m, x, chunk_size=8, progress=cancel)
    for method in ("lanczos", "dense", "iterative"):
        with pytest.raises(Stop):
            top_eigenpairs(m, 5, x=x, method=method, progress=cancel)
    assert seen and not any(mod._forward_hooks for mod in m.modules())
    calls = []
    v, _ = top_eigenpairs(m, 5, x=x, method="lanczos", dtype=F64,
                               progress=lambda d, t, msg: calls.append((d, t, msg)))
    assert any("Lanczos" in msg for _, _, msg in calls) and all(d <= t for d, t, _ in calls)
    K = empirical_ntk(m, x, reduction="flat", dtype=F64)
    ev = torch.linalg.eigvalsh(K).flip(0)[:5].numpy()
    assert abs(v - ev).max() <= 1e-9 * ev[0]


def test_tf32_state_restored_after_cancel():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    m = nn.Linear(3, 2)
    with pytest.raises(Stop):
        empirical_ntk(m, torch.randn(10, 3), chunk_size=2, progress=lambda *a: (_ for _ in ()).throw(Stop()))
    assert (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()) == before


# -------------------------------------------------------------- estimates
def test_estimates_name_the_path_and_time():
    from entk_core.engine.eigenpairs import estimate_top_eigenpairs

    torch.manual_seed(0)
    m = SeqModel()
    x = seq_data(6, seed=1)
    p = estimate_ntk(m, x, trace_axes=(-1,), memory_budget="1GB")
    assert p.fits and p.method in METHODS and p.seconds > 0 and p.bytes > 0 and "\n" not in p.summary()
    # a fixed budget: the default (half the available memory) moves between two calls
    q = estimate_top_eigenpairs(m, 5, x=x, memory_budget="1GB")
    assert q.fits and q.method.split(" ")[0] in ("gram", "dense", "lanczos") and q.seconds > 0
    _, _, info = top_eigenpairs(m, 5, x=x, memory_budget="1GB", return_info=True)
    assert info.path == q.method and info.estimate == q.summary()


# ------------------------------------------------------------------ devices
def test_device_resolution(monkeypatch):
    monkeypatch.delenv("ENTK_DEVICE", raising=False)
    assert resolve_device(None).type == "cpu"
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="not a device"):
        resolve_device("gpu7")
    monkeypatch.setenv("ENTK_DEVICE", "cpu")
    assert resolve_device(None, default="cpu").type == "cpu"
    monkeypatch.setenv("ENTK_DEVICE", "nonsense")
    with pytest.raises(ValueError, match=r"\$ENTK_DEVICE"):
        resolve_device(None)
    monkeypatch.delenv("ENTK_DEVICE")
    m = nn.Linear(3, 2)
    K, info = empirical_ntk(m, torch.randn(4, 3), device="cpu", return_info=True)
    assert K.device.type == "cpu" and info.device == "cpu"
    v, V = top_eigenpairs(m, 2, x=torch.randn(4, 3), device="cpu")
    assert v.dtype.name == "float64" and V.shape == (8, 2)


def test_a_model_returning_a_mapping_with_logits():
    class HFLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)

        def forward(self, input_ids=None, scale=None):
            return {"logits": torch.tanh(self.lin(input_ids)) * scale, "hidden": None}

    torch.manual_seed(0)
    m = HFLike()
    x = {"input_ids": torch.randn(5, 3), "scale": 2.0}   # a non-tensor leaf passed unchanged
    K = empirical_ntk(m, x, dtype=F64)
    J = jacobian(m, x)
    assert rel(K, nt_kernel(J, J)) <= 1e-10
    with pytest.raises(ValueError, match="must return a tensor"):
        empirical_ntk(nn.GRU(3, 2), torch.randn(2, 4, 3))
