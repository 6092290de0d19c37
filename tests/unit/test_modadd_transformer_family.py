"""The modular-addition 1-layer Transformer family without training (moved from
tests/integration/test_transformer.py): model, causal mask, the author's split and batch
order draw for draw, loss, key frequencies of a planted embedding, the all-class mean
reduction against autograd, the mode blocks."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from entk_core.families.modadd_transformer import ModAddTransformer, NotebookBatchStream, modadd_tokens
from entk_core.families.base import get_family, seeded

FAM = get_family("modadd-transformer")


GROUPS = ["embed", "pos_embed", "attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "mlp.W_in", "mlp.W_out", "unembed"]


def tiny_cfg(**kw):
    base = dict(p=7, d_model=8, n_heads=2, d_mlp=16, epochs=6, checkpoint_every=2, batch_size=8, seed=2)
    return FAM.Config(**{**base, **kw})


def tiny_model(p=7, seed=0):
    m = ModAddTransformer(p, d_model=8, n_heads=2, d_mlp=16)
    m.reset_parameters(seeded(seed))
    return m.eval()


# --------------------------------------------------------------------------- model
def test_model_shapes_groups_and_config_defaults():
    m = tiny_model()
    tokens, labels = modadd_tokens(7)
    assert tokens.shape == (49, 3) and (tokens[:, 2] == 7).all()
    assert tokens[3 * 7 + 5].tolist() == [3, 5, 7] and labels[3 * 7 + 5] == 1
    assert m(tokens).shape == (49, 8)  # p + 1 logits at the last position
    from entk_core.engine.kernels import layer_groups

    assert list(layer_groups(m)) == GROUPS
    cfg = FAM.Config()
    assert (cfg.p, cfg.d_model, cfg.n_heads, cfg.d_mlp, cfg.epochs, cfg.seed) == (29, 64, 4, 256, 4000, 2)
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.train_frac, cfg.split_seed, cfg.checkpoint_every) == (
        3e-4, 1.0, 64, 0.5, 0, 20)
    assert FAM.default_reduction == "mean" and FAM.default_top == 40
    assert FAM.derived_groups == {"attn.OV": ("attn.W_O", "attn.W_V")}
    full = FAM.build_model(cfg)
    assert sum(p.numel() for p in full.parameters()) == 30 * 64 + 3 * 64 + 4 * 64 * 64 + 2 * 64 * 256 + 64 * 30
    # init is seeded by cfg.seed only
    a, b = FAM.build_model(tiny_cfg()), FAM.build_model(tiny_cfg())
    c = FAM.build_model(tiny_cfg(seed=0))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.embed.weight, c.embed.weight)
    with pytest.raises(ValueError, match="divisible"):
        ModAddTransformer(7, d_model=9, n_heads=2)


def test_causal_mask_positions_see_only_earlier_tokens():
    m = tiny_model()
    cap = {}
    m.attn.register_forward_hook(lambda mod, i, o: cap.__setitem__("attn", o.detach().clone()))
    x = torch.tensor([[1, 2, 7], [4, 0, 7]])
    y0 = m(x)
    a0 = cap["attn"]
    for pos in (1, 2):  # change a later token: earlier positions are untouched
        x2 = x.clone()
        x2[:, pos] = (x2[:, pos] + 3) % 7
        y2 = m(x2)
        assert torch.allclose(cap["attn"][:, :pos], a0[:, :pos], atol=0, rtol=0)
        assert not torch.allclose(cap["attn"][:, pos], a0[:, pos])
        assert not torch.allclose(y2, y0)
    # the output (last position) depends on the first token too: it attends to everything <= last
    x3 = x.clone()
    x3[:, 0] = (x3[:, 0] + 1) % 7
    assert not torch.allclose(m(x3), y0)


# ---------------------------------------------------------------------------- data
PINNED_TRAIN_HEAD = [530, 364, 558, 140, 686, 834, 781, 417]  # train rows a*p+b, p=29, split_seed 0 (Python 3 random)


def _notebook_split(p, frac, seed):
    """The author's split, verbatim (spec §5.1): tuples in cartesian order, the global
    ``random`` generator seeded and shuffled (its state restored afterwards)."""
    import random

    state = random.getstate()
    try:
        pairs = [(i, j, p) for i in range(p) for j in range(p)]
        random.seed(seed)
        random.shuffle(pairs)
    finally:
        random.setstate(state)
    n = int(frac * len(pairs))
    return pairs[:n], pairs[n:]


@pytest.mark.parametrize("p,frac,seed", [(29, 0.5, 0), (29, 0.5, 3), (7, 0.3, 0)])
def test_split_is_the_authors_python_random_shuffle(p, frac, seed):
    d = FAM.make_data(FAM.Config(p=p, train_frac=frac, split_seed=seed))
    train_pairs, test_pairs = _notebook_split(p, frac, seed)
    x = d.x.tolist()
    assert sorted(tuple(x[i]) for i in d.train_idx.tolist()) == sorted(train_pairs)
    assert sorted(tuple(x[i]) for i in d.test_idx.tolist()) == sorted(test_pairs)
    # in the notebook's shuffled order (its DataLoader indexes train_x in that order)
    assert [tuple(x[i]) for i in d.train_idx.tolist()] == train_pairs
    assert len(set(d.train_idx.tolist()) | set(d.test_idx.tolist())) == p * p
    assert torch.equal(d.kernel_idx, torch.arange(p * p))  # the eNTK rows stay a*p + b
    assert all(x[a * p + b][:2] == [a, b] for a in range(p) for b in range(p))


def test_split_pinned_for_p29_split_seed_0():
    import random

    before = random.getstate()
    d = FAM.make_data(FAM.Config())
    assert random.getstate() == before  # the global Python generator is untouched
    # random.seed(0); random.shuffle(pairs) for p = 29 starts (18, 8), (12, 16), (19, 7), ...
    assert d.train_idx[:3].tolist() == [18 * 29 + 8, 12 * 29 + 16, 19 * 29 + 7]
    assert d.train_idx[:8].tolist() == PINNED_TRAIN_HEAD
    with pytest.raises(ValueError, match="train fraction"):
        FAM.make_data(FAM.Config(train_frac=1.0))


def test_split_fixed_by_split_seed_and_batches_exact():
    d2, d0 = FAM.make_data(FAM.Config(seed=2)), FAM.make_data(FAM.Config(seed=0))
    assert len(d2.train_idx) == 420 and len(d2.test_idx) == 421
    assert torch.equal(d2.train_idx, d0.train_idx)  # the model seed does not move the split
    assert not torch.equal(d2.train_idx, FAM.make_data(FAM.Config(split_seed=1)).train_idx)
    assert torch.equal(d2.kernel_idx, torch.arange(841))
    cfg = FAM.Config()
    b1 = list(FAM.batches(d2, cfg, 1))
    assert [len(b) for b in b1] == [64] * 6 + [36]
    assert torch.equal(torch.cat(b1).sort().values, d2.train_idx.sort().values)  # each train pair once per epoch
    assert all(torch.equal(u, v) for u, v in zip(b1, FAM.batches(d2, cfg, 1)))  # redrawn exactly
    assert not torch.equal(torch.cat(b1), torch.cat(list(FAM.batches(d2, cfg, 2))))
    assert not torch.equal(torch.cat(b1), torch.cat(list(FAM.batches(d2, replace(cfg, seed=0), 1))))
    # out-of-order requests replay the same stream: epoch 45 reached by the family (continuing
    # its cached stream from epoch 2), by a cold replay, by walking epoch by epoch and by
    # rewinding from a later epoch is one permutation (and not epoch 44's)
    via_family = torch.cat(list(FAM.batches(d2, cfg, 45)))
    cold = NotebookBatchStream(cfg, 420).permutation(45)
    walk, rewound = NotebookBatchStream(cfg, 420), NotebookBatchStream(cfg, 420)
    for e in range(1, 45):
        walk.permutation(e)
    rewound.permutation(50)
    assert torch.equal(via_family, d2.train_idx[cold])
    assert torch.equal(walk.permutation(45), cold) and torch.equal(rewound.permutation(45), cold)
    assert not torch.equal(cold, NotebookBatchStream(cfg, 420).permutation(44))
    s = NotebookBatchStream(cfg, 420)
    p3 = s.permutation(3)
    assert torch.equal(NotebookBatchStream(cfg, 420).permutation(3), p3) and torch.equal(s.permutation(3), p3)


def _global_rng(seed):
    """Context: the global torch generator seeded with ``seed``, restored afterwards."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        state = torch.get_rng_state()
        try:
            torch.manual_seed(seed)
            yield
        finally:
            torch.set_rng_state(state)
    return cm()


@pytest.mark.parametrize("seed", [2, 0])
def test_init_and_batches_replay_the_notebook_draw_for_draw(seed):
    """The notebook (spec §5): ``t.manual_seed(seed)``, the model's ``randn`` calls, then
    ``DataLoader(shuffle=True)`` epochs from the same global generator, with test/train
    accuracy loops after every 20th epoch. Our init and batches must be identical."""
    from torch.utils.data import DataLoader, TensorDataset

    cfg = FAM.Config(seed=seed)
    data = FAM.make_data(cfg)
    p, d, H, dm = 29, 64, 4, 256
    with _global_rng(seed):
        r = torch.randn
        W = [r(p + 1, d) / np.sqrt(d), r(3, d) / np.sqrt(d), r(H, d // H, d) / np.sqrt(d),
             r(H, d // H, d) / np.sqrt(d), r(H, d // H, d) / np.sqrt(d), r(d, d) / np.sqrt(d),
             r(d, dm) / np.sqrt(dm), r(dm, d) / np.sqrt(d), r(d, p + 1) / np.sqrt(p + 1)]
        train_loader = DataLoader(TensorDataset(data.train_idx), batch_size=64, shuffle=True)
        test_loader = DataLoader(TensorDataset(data.test_idx), batch_size=64, shuffle=False)
        epochs = []
        for j in range(43):
            epochs.append([b[0] for b in train_loader])
            if j % 20 == 0:
                list(test_loader), list(train_loader)
    m = FAM.build_model(cfg)
    ours = [m.embed.weight, m.pos_embed.W_pos, m.attn.W_Q.weight.view(H, d // H, d),
            m.attn.W_K.weight.view(H, d // H, d), m.attn.W_V.weight.view(H, d // H, d), m.attn.W_O.weight,
            m.mlp.W_in.weight.T, m.mlp.W_out.weight.T, m.unembed.weight.T]
    for a, b in zip(W, ours):
        assert torch.equal(a, b.detach())
    for e in (1, 2, 21, 22, 23, 41, 42, 43):  # epoch e is the notebook's epoch e - 1
        got = list(FAM.batches(data, cfg, e))
        assert len(got) == len(epochs[e - 1]) and all(torch.equal(u, v) for u, v in zip(got, epochs[e - 1])), e


def test_loss_and_accuracy_use_first_p_logits():
    out = torch.zeros(2, 8)
    out[0, 3] = 5.0
    out[1, 7] = 9.0  # the '=' logit is ignored
    out[1, 2] = 1.0
    y = torch.tensor([3, 2])
    assert FAM.accuracy(out, y) == 1.0
    expected = torch.nn.functional.cross_entropy(out[:, :7], y)
    assert torch.allclose(FAM.loss(out, y), expected)


# --------------------------------------------------------------- key frequencies
def planted_embedding(p=29, d=64, freqs=(4, 11), noise=0.05, seed=0):
    g = np.random.default_rng(seed)
    t = np.arange(p)[:, None]
    W = noise * g.standard_normal((p + 1, d))
    for j, k in enumerate(freqs):
        cols = slice(8 * j, 8 * j + 8)
        amp = g.uniform(0.5, 1.5, size=(1, 8))
        phase = g.uniform(0, 2 * np.pi, size=(1, 8))
        W[:p, cols] += amp * np.cos(2 * np.pi * k * t / p + phase)
    return torch.tensor(W, dtype=torch.float32)


@pytest.mark.parametrize("freqs", [(4, 11), (1, 3, 10)])
def test_key_frequencies_found_in_planted_embedding(freqs):
    cfg = FAM.Config()
    m = FAM.build_model(cfg)
    with torch.no_grad():
        m.embed.weight.copy_(planted_embedding(freqs=freqs))
    s = FAM.summary(m, cfg, None)
    assert s["key_frequencies"] == list(freqs)
    assert len(s["embedding_fourier_power"]) == 14 and s["key_frequency_rule"] == "gap"
    power = np.array(s["embedding_fourier_power"])
    assert set(np.argsort(-power)[: len(freqs)] + 1) == set(freqs)
    json.dumps(s)  # JSON-able for the manifest
    fams = FAM.feature_families(cfg, None, m)
    assert {"sum", "diff", "axis_sum", "axis_diff"} <= set(fams)
    assert fams["sum"].bank.shape == (841, len(freqs), 2)


# ------------------------------------------------------------------- reduction
def _sum_logit_ntk(model, x, groups=None):
    """Independent reference: eNTK of Σ_c f_c via one autograd gradient per input."""
    names = [n for n, _ in model.named_parameters()
             if groups is None or n.rsplit(".", 1)[0] in groups]
    params = dict(model.named_parameters())
    rows = []
    for n in range(len(x)):
        out = model(x[n : n + 1]).sum()
        gs = torch.autograd.grad(out, [params[k] for k in names])
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    J = torch.stack(rows).double()
    return J @ J.T


@pytest.mark.parametrize("groups", [None, ["unembed"], ["attn.W_Q", "attn.W_K"], ["embed", "pos_embed"]])
def test_mean_reduction_is_summed_logit_ntk_over_c_squared(groups):
    from entk_core.engine.kernels import empirical_ntk

    torch.manual_seed(0)
    m = tiny_model(p=5, seed=1)
    x, _ = modadd_tokens(5)
    x = x[torch.randperm(25)[:12]]
    C = 6
    K = empirical_ntk(m, x, reduction="mean", groups=groups).double()
    ref = _sum_logit_ntk(m, x, groups) / C**2
    assert K.shape == (12, 12)
    torch.testing.assert_close(K, ref, rtol=2e-4, atol=1e-6 * ref.abs().max().item())


# -------------------------------------------------------------------- analysis
def test_mode_blocks_generalise_paper_indices():
    from entk_core.families.modadd_transformer.analysis import mode_blocks

    assert mode_blocks(2) == [(0, 5), (5, 9)]  # the paper's 0:5 and 5:9
    assert mode_blocks(3) == [(0, 7), (7, 13)]
    with pytest.raises(ValueError):
        mode_blocks(0)
