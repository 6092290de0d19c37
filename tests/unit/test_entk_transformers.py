"""``empirical_ntk(model, {"input_ids": ids, "attention_mask": mask})`` on tiny transformers
models built locally from configs (random weights, eager attention): GPT-2 (Conv1D and
LayerNorm rules), Gemma3 (Gemma3RMSNorm ``(1 + w)`` gains) and Llama (LlamaRMSNorm), against
the independent float64 brute force of ``tests/_brute.py`` (1e-10 for GPT-2; 1e-6 for Llama
and Gemma3, whose RMSNorms compute in float32 even with float64 weights)."""
from __future__ import annotations

import pytest
import torch

from _brute import jacobian, nt_kernel
from entk_core.engine.kernels import empirical_ntk, empirical_ntk_by_layer

transformers = pytest.importorskip(
    "transformers", reason="transformers is a pinned dependency (requirements.txt); under CI its absence fails")

F64 = torch.float64
V, T, N = 24, 4, 3


def rel(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def gpt2():
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                  attn_implementation="eager")
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def gemma3():
    cfg = transformers.Gemma3TextConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                        max_position_embeddings=32, sliding_window=4, attn_implementation="eager")
    torch.manual_seed(0)
    m = transformers.Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():                     # non-zero (1 + w) gains, so the rule is exercised
        for n, p in m.named_parameters():
            if "norm" in n:
                p.normal_(0.0, 0.3)
    return m


def llama():
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                   attn_implementation="eager")
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:
                p.normal_(1.0, 0.3)
    return m


def batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, T), generator=g)
    mask = torch.ones(n, T, dtype=torch.long)
    mask[0, -2:] = 0                          # a right-padded example
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("build", (gpt2, gemma3, llama), ids=("gpt2", "gemma3", "llama"))
def test_tiny_transformers_match_brute_force(build):
    m = build()
    x1, x2 = batch(N, 1), batch(2, 2)
    J1, J2 = jacobian(m, x1), jacobian(m, x2)             # (N, T, V, P)
    # Llama's and Gemma's RMSNorms normalise in float32 whatever the weights' dtype, so
    # their gradients (autograd's and the rule's alike) are float32-accurate only
    tol = 1e-10 if build is gpt2 else 1e-6
    K, info = empirical_ntk(m, x1, x2, trace_axes=(-1,), method="structured", dtype=F64, return_info=True)
    assert K.shape == (N, 2, T, T)
    assert rel(K, nt_kernel(J1, J2, (-1,))) <= tol
    rules = {d["rule"] for d in info.structured.values()}
    if build is gpt2:
        assert "Conv1D" in rules and "elementwise (norm)" in rules
    else:
        assert "elementwise (norm)" in rules and "Linear" in rules
        norms = [n for n, d in info.structured.items() if "norm" in n]
        assert norms and all(info.structured[n]["rule"] == "elementwise (norm)" for n in norms)
    # the last position's logits, as a next-token kernel: diagonal over T, traced over V
    Kd = empirical_ntk(m, x1, trace_axes=(-1,), diagonal_axes=(1,), dtype=F64)
    assert rel(Kd, nt_kernel(J1, J1, (-1,), (1,))) <= tol
    by = empirical_ntk_by_layer(m, x1, reduction="trace", dtype=F64)
    assert rel(sum(by.values()), nt_kernel(J1, J1, (1, 2))) <= tol


@pytest.fixture(scope="module")
def gpt2_masked():
    """GPT-2, a right-padded batch and its brute-force Jacobian (computed once: ~10 s)."""
    m, x = gpt2(), batch(N, 3)
    return m, x, jacobian(m, x)


@pytest.mark.parametrize("method", ("jacobian", "ntk_vp"))
def test_gpt2_reference_methods_with_a_mask(method, gpt2_masked):
    m, x, J = gpt2_masked
    K, info = empirical_ntk(m, x, trace_axes=(-1,), method=method, dtype=F64, return_info=True)
    assert rel(K, nt_kernel(J, J, (-1,))) <= 1e-10
    assert info.method == method
