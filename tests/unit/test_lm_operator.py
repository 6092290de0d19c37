"""The LM eNTK operator on tiny random models of every architecture in
``_lm_models.KINDS`` (float64): the tail-only products against the full model's.

RMSNorms compute in float32 even inside a float64 model (Gemma, Llama-style), so those
references agree to ~1e-7 relative; LayerNorm models (GPT-2, GPT-NeoX, OPT, Falcon...)
agree to round-off."""
import pytest
import torch
from torch.func import jacrev

import _lm_models as M
from entk_core.families.causal_lm.operator import KTildeOperator, LMTail, sqrt_gram

KINDS = list(M.KINDS)
LAYERNORM = {"gpt2", "gpt_neox", "opt", "falcon", "phi", "gptj"}
"""Norms computed in the model's dtype; the others (RMSNorm, OLMo's and StableLM's LayerNorm) in float32."""
TOL = {k: (1e-8 if k in LAYERNORM else 1e-5) for k in KINDS}
OTHER = {"gpt2": "attn.c_attn", "gpt_neox": "attention.dense", "falcon": "self_attention.dense",
         "phi": "self_attn.dense", "gptj": "attn.out_proj", "opt": "self_attn.out_proj"}


def _lm(kind, vocab=40, layers=3, d=16, seed=0):
    return M.in_memory(M.build_model(kind, vocab, layers, d, seed, dtype=torch.float64))


def _ids(N, T, vocab, seed=0):
    return torch.randint(0, vocab, (N, T), generator=torch.Generator().manual_seed(seed))


def _dense_J(tail):
    """Jacobian of r (N·d, context-major) w.r.t. the selected parameters, through the full model."""
    def f(th):
        return tail._full(slice(0, tail.N), th).reshape(-1)
    J = jacrev(f)(tail.theta)
    return torch.cat([J[k].reshape(J[k].shape[0], -1) for k in tail.param_names], 1)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("kind", KINDS)
def test_tail_equals_full_model_on_every_layer_and_mode(kind):
    lm = _lm(kind)
    ids = _ids(3, 7, 40)
    other = OTHER.get(kind, "self_attn.o_proj")
    mlp = lm.arch.mlp_out.rsplit(".", 1)[0] if "." in lm.arch.mlp_out else "fc1"
    for layer, params in ((1, None), (2, None), (0, other), (1, mlp)):
        if True:
            tail = LMTail(lm, ids, layer, params, chunk=2)
            assert tail.mode == ("linear" if params is None else "block")
            full = lm.model.base_model(input_ids=ids, use_cache=False).last_hidden_state[:, -1]
            assert _rel(tail.r0, full) < 1e-12
            for c, sl in enumerate(tail.slices):  # the tail itself reproduces r at the primal point
                assert _rel(tail.tail(c, tail.theta), tail.r0[sl]) < TOL[kind]
            z = torch.randn(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(layer))
            u_tail, u_full = tail.vjp(z), tail.full_vjp(z)
            for k in u_full:
                assert _rel(u_tail[k], u_full[k]) < TOL[kind], (layer, params, k)
            assert _rel(tail.jvp(u_full), tail.full_jvp(u_full)) < TOL[kind]


@pytest.mark.parametrize("kind", ["gpt2", "gemma3", "falcon", "opt", "granite"])
def test_products_match_dense_jacobian(kind):
    """The full-model reference itself against a dense Jacobian (jacrev), for one model of
    each kind of layout: fused attention, post-MLP norm, parallel block, flattened MLP,
    block re-run."""
    lm = _lm(kind, seed=1)
    ids = _ids(4, 7, 40, seed=1)
    for layer in (0, 2):
        tail = LMTail(lm, ids, layer, chunk=3)
        J = _dense_J(tail)
        assert J.shape == (4 * 16, tail.n_params)
        z = torch.randn(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        assert _rel(tail.product(z), (J @ (J.T @ z.reshape(-1))).reshape(4, 16)) < TOL[kind]
        op = KTildeOperator(tail)
        A = op.A
        Kt = torch.kron(torch.eye(4, dtype=torch.float64), A) @ J @ J.T @ torch.kron(torch.eye(4, dtype=torch.float64), A)
        w = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        assert _rel(op(w), Kt @ w) < TOL[kind]


def test_sqrt_gram_squares_to_the_gram():
    U = torch.randn(300, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    A = sqrt_gram(U, rows=64)
    assert torch.allclose(A, A.T)
    assert torch.allclose(A @ A, U.T @ U, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("kind", ["gpt2", "gemma3"])
def test_ktilde_has_the_nonzero_spectrum_of_the_full_flattened_logit_entk(kind):
    """K̃ (N·d square) vs the flattened logit eNTK (N·V square) on a 40-token vocabulary."""
    V, d, N = 40, 16, 3
    lm = _lm(kind, vocab=V, d=d, seed=2)
    ids = _ids(N, 6, V, seed=4)
    tail = LMTail(lm, ids, 1, chunk=2)
    op = KTildeOperator(tail)
    n = N * d
    IA = torch.kron(torch.eye(N, dtype=torch.float64), op.A)
    Jr = _dense_J(tail)  # the operator itself is checked against this J in test_products_match_dense_jacobian
    Kt = IA @ Jr @ Jr.T @ IA
    ev_t = torch.linalg.eigvalsh((Kt + Kt.T) / 2).flip(0)

    U = lm.arch.unembedding(lm.model).double()

    def logits(th):
        return (tail._full(slice(0, N), th) @ U.T).reshape(-1)   # (N·V,), context-major
    J = jacrev(logits)(tail.theta)
    Jl = torch.cat([J[k].reshape(N * V, -1) for k in tail.param_names], 1)
    ev_l = torch.linalg.eigvalsh(Jl @ Jl.T).flip(0)
    assert ev_l.shape == (N * V,)
    m = int((ev_t > 1e-6 * ev_t[0]).sum())  # rank <= N·d (GPT-2's LayerNorm removes one direction per context)
    assert m > n // 2
    assert torch.allclose(ev_t[:m], ev_l[:m], rtol=TOL[kind] * 10)
    assert ev_l[m:].abs().max() < 1e-5 * ev_l[0]  # the rest of the N·V spectrum is zero
    # eigenvector map (I⊗U A⁻¹) v gives logit-eNTK eigenvectors
    w, Vt = torch.linalg.eigh((Kt + Kt.T) / 2)
    y = op.logit_eigenvectors(Vt[:, -1:].contiguous())[:, 0]
    K_l = Jl @ Jl.T
    assert _rel(K_l @ y, w[-1] * y) < TOL[kind] * 10


def test_last_block_only_needs_the_last_position():
    lm = _lm("gpt2")
    tail = LMTail(lm, _ids(3, 8, 40), 2)
    assert tail.cached[0]["x"].shape[1] == 1 and tail.cached[0]["rest"].shape[1] == 1


def test_bad_token_ids_and_shapes():
    lm = _lm("gpt2")
    with pytest.raises(ValueError, match="vocabulary"):
        LMTail(lm, torch.full((2, 4), 99), 0)
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        LMTail(lm, torch.zeros(4, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="out of range"):
        LMTail(lm, _ids(2, 4, 40), 3)
    with pytest.raises(ValueError, match="matches nothing"):
        LMTail(lm, _ids(2, 4, 40), 0, params="mlp.nonexistent")
