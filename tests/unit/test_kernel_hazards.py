"""The engine at its edges (issue 18.1, 18.2): every model gets the right kernel or a recorded
fallback, never a wrong number or a raw error. Each kernel is compared, in float64, with the
brute force of ``_kernel_models.brute_ntk`` (one autograd call per output per example)."""
import pytest
import torch

from _hazard_models import SHARED_PARAM_ACTS, build
from _kernel_models import brute_ntk
from entk_core.engine import _request
from entk_core.engine._layers import check_layers, find_layers, rule_gradients
from entk_core.engine.checks import KernelCheckError
from entk_core.engine.eigenpairs import top_eigenpairs
from entk_core.engine.kernels import empirical_ntk, estimate_ntk
from entk_core.engine.operators import KernelOperator

METHODS = ("auto", "structured", "jacobian", "ntk_vp")
F64 = torch.float64


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def fallback_reasons(info) -> dict[str, str]:
    return {n: f["reason"] for f in info.fallbacks for n in f["params"]}


# ------------------------------------------------------------- per-example attribution
# (model, N, the layer whose per-example attribution is wrong, a layer that keeps its rule)
ATTRIBUTION = [("seq-first", 4, "mix", "inp"), ("seq-first", 64, "mix", "inp"),   # sequence-first Linear
               ("hyper", 4, "gen", "head"), ("hyper", 7, "gen", "head")]         # a Linear on a parameter


@pytest.mark.parametrize("name, N, bad, kept", ATTRIBUTION)
@pytest.mark.parametrize("method", METHODS)
def test_layers_with_wrong_per_example_attribution(method, name, N, bad, kept):
    m, inputs = build(name)
    x = inputs(N)
    K, info = empirical_ntk(m, x, method=method, return_info=True)
    assert rel(K, brute_ntk(m, x)) <= 1e-10
    if info.method == "structured":
        why = fallback_reasons(info)
        assert "per-example gradients disagree" in why[f"{bad}.weight"] and bad not in info.structured
        assert kept in info.structured                        # the batch-first layers keep their rule


def test_a_layer_that_breaks_on_a_later_chunk_falls_back_and_says_so():
    """FoldRows passes every check on the 4 probe examples, then a chunk of 8 feeds its
    Linear a (4, 2, d) tensor: the layer falls back and the request runs again, for the
    kernels and for the flattened-kernel paths alike."""
    m, inputs = build("fold-rows")
    x = inputs(16)
    ref = brute_ntk(m, x)
    K, info = empirical_ntk(m, x, method="structured", chunk_size=8, return_info=True)
    assert rel(K, ref) <= 1e-10
    why = fallback_reasons(info)["mix.weight"]
    assert "not batch-first" in why and "(4, 2, 3)" in why and "probe" in why
    K, info = empirical_ntk(m, x, return_info=True)
    assert rel(K, ref) <= 1e-10
    flat = ref.permute(2, 0, 3, 1).reshape(2 * 16, 2 * 16)
    vals = torch.linalg.eigvalsh(flat).flip(0)[:3].numpy()
    for method in ("gram", "lanczos"):
        v, _, info = top_eigenpairs(m, 3, x=x, method=method, return_info=True)
        assert abs(v - vals).max() <= 1e-9 * vals[0], method
        if info.method == "structured":  # lanczos's operator follows the machine's rates: ntk_vp has no layer rules
            assert "mix.weight" in fallback_reasons(info), method
    op = KernelOperator(m, x, mode="structured")
    u = torch.randn(32, 2, dtype=F64)
    assert rel(op.matmat(u), flat @ u) <= 1e-10
    assert "mix.weight" in fallback_reasons(op.info)  # the structured operator itself falls back and says so


def _old_check(layers, rec, outf, params, shapes, base, tol=1e-9):
    """The layer check as it was before issue 18: the rule's *summed* gradient of ``⟨r, f⟩``
    against autograd's. Returns the names of the layers it rejects."""
    r = torch.randn(outf.shape, generator=torch.Generator().manual_seed(12345), dtype=F64)
    ys = [y for calls in rec for (_, _, y) in calls]
    pnames = [n for L in layers for n in L.param_names()]
    grads = torch.autograd.grad(outf, ys + [params[n] for n in pnames], r, allow_unused=True, retain_graph=True)
    gy, gp = grads[:len(ys)], dict(zip(pnames, grads[len(ys):]))
    bad, k = set(), 0
    for L, calls in zip(layers, rec):
        recon = {}
        for a, _, _ in calls:
            for n, v in rule_gradients(L, a.detach(), gy[k].detach(), shapes, base).items():
                recon[n] = recon.get(n, 0) + v
            k += 1
        if any(float((recon[n] - gp[n]).norm()) > tol * float(gp[n].norm()) for n in L.param_names()):
            bad.add(L.name)
    return bad


@pytest.mark.parametrize("name", ("seq-first", "hyper"))
def test_weighted_attribution_check_catches_what_the_old_check_passed(name, monkeypatch):
    m, inputs = build(name)
    ctx = _request.Ctx(m, inputs(4), method="structured", plan=False)
    layers, _ = find_layers(ctx.model, ctx.names, ctx.group_of)
    params = ctx.params([n for L in layers for n in L.param_names()])
    with ctx.capture(layers) as rec:
        out = ctx.forward(params, ctx.x1)
    bad_layer = "mix" if name == "seq-first" else "gen"
    assert bad_layer not in _old_check(layers, rec, out, params, ctx.shapes, ctx.base)   # the old check passes it
    new = check_layers(layers, rec, out, params, ctx.shapes, ctx.base, F64)
    assert {L.name for L in layers if id(L) in new} == {bad_layer}                     # the new one catches it
    # with the old check the structured kernel is silently wrong (the 17 % / 0.56)...
    monkeypatch.setattr(_request, "check_layers",
                        lambda layers, rec, outf, params, shapes, base, dtype:
                        {id(L): "old" for L in layers if L.name in _old_check(layers, rec, outf, params, shapes, base)})
    x = inputs(4)
    K = empirical_ntk(m, x, method="structured")
    assert rel(K, brute_ntk(m, x)) > 1e-2
    # ... and the spot check says so, in one line naming the entry and both values
    with pytest.raises(KernelCheckError, match=r"^eNTK spot check failed: K\[[0-9, ]+\] = \S+ but per-example "
                                               r"autograd in float64 gives \S+ \(relative error") as e:
        empirical_ntk(m, x, method="structured", check=4)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ PyTorch hazards
@pytest.mark.parametrize("act", sorted(SHARED_PARAM_ACTS))
def test_shared_parameter_activations_at_chunk_equal_to_outputs(act):
    """vmap(jacrev) gives wrong Jacobians through nn.PReLU when a chunk has as many examples as
    outputs: never such a chunk, whoever chose it (the planner, the caller, the last chunk)."""
    m, inputs = build("shared-param", act=act)
    C = 10
    x = inputs(C)
    ref = brute_ntk(m, x)
    ref_trace = torch.einsum("nmcc->nm", ref) / C
    for method in METHODS:
        for chunk in (None, C):
            K, info = empirical_ntk(m, x, method=method, chunk_size=chunk, return_info=True)
            assert rel(K, ref) <= 1e-10, (method, chunk)
            Kt = empirical_ntk(m, x, method=method, chunk_size=chunk, reduction="trace")
            assert rel(Kt, ref_trace) <= 1e-10, (method, chunk)
            if chunk == C and info.method == "jacobian":
                assert info.chunk_size != C and info.adjustments[0]["by"] == "the caller"
                assert "PReLU" in info.adjustments[0]["reason"]
    # N = 15 with chunk_size = C (10 + 5): lowered to 9 (8 + 7); N = 21 in chunks of 11 is cut
    # 11 + 10: the last chunk, of C, is split in two where it is used
    x = inputs(15, seed=2)
    K = empirical_ntk(m, x, method="jacobian", chunk_size=10)
    assert rel(K, brute_ntk(m, x)) <= 1e-10
    x = inputs(21, seed=3)
    K, info = empirical_ntk(m, x, method="jacobian", chunk_size=11, return_info=True)
    assert rel(K, brute_ntk(m, x)) <= 1e-10
    assert any(a["what"] == "a chunk of 10 examples split into 5 + 5" for a in info.adjustments)
    # the flattened Jacobian (its chunk chosen by its own memory rule) never has a chunk of C either
    x = inputs(C)
    flat = ref.permute(2, 0, 3, 1).reshape(C * C, C * C)
    vals = torch.linalg.eigvalsh(flat).flip(0)[:4].numpy()
    v, _, info = top_eigenpairs(m, 4, x=x, method="gram", return_info=True)
    assert abs(v - vals).max() <= 1e-9 * vals[0]
    if act == "prelu":                                    # no rule: the PReLU slope runs vmap(jacrev)
        assert any(a["what"] == f"chunk_size {C} -> {C - 1}" for a in info.adjustments)


# PyTorch's own notice that vmap loops over scaled_dot_product_attention (no batching rule):
# the Jacobian path is right, only slower
SDPA_LOOP = "ignore:There is a performance drop because we have not yet implemented the batching rule:UserWarning"


@pytest.mark.filterwarnings(SDPA_LOOP)
@pytest.mark.parametrize("batch_first", (True, False))
@pytest.mark.parametrize("method", METHODS)
def test_multihead_attention_under_every_method(method, batch_first):
    m, inputs = build("mha", batch_first=batch_first)
    x = inputs(5)
    K, info = empirical_ntk(m, x, method=method, return_info=True)
    assert rel(K, brute_ntk(m, x)) <= 1e-10
    if method == "ntk_vp":        # forward AD is not implemented for the fused attention kernel
        f = [f for f in info.fallbacks if f.get("instead_of") == "ntk_vp"]
        assert len(f) == 1 and info.method in ("structured", "jacobian") and f[0]["path"] == info.method
        assert "forward" in f[0]["reason"] and "NotImplementedError" in f[0]["reason"]
        p = estimate_ntk(m, x, method=method)                                   # the estimate says so too
        assert (p.method, p.chunk_size) == (info.method, info.chunk_size)


@pytest.mark.filterwarnings(SDPA_LOOP)
def test_multihead_attention_operators_and_spectra():
    m, inputs = build("mha")
    x = inputs(5)
    flat = brute_ntk(m, x).permute(2, 0, 3, 1).reshape(15, 15)
    op = KernelOperator(m, x, mode="vjp")
    assert op.mode == "structured"
    assert any(f.get("instead_of") == "operator:vjp" for f in op.info.fallbacks)
    u = torch.randn(15, 3, dtype=F64)
    assert rel(op.matmat(u), flat @ u) <= 1e-10
    vals = torch.linalg.eigvalsh(flat).flip(0)[:3].numpy()
    for method in ("auto", "gram", "lanczos", "iterative"):
        v, _ = top_eigenpairs(m, 3, x=x, method=method)
        assert abs(v - vals).max() <= 1e-8 * vals[0], method
