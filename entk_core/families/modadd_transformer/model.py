"""The 1-layer Transformer on modular addition (paper spec §5), Nanda-style: the model, its
config, the author's split, initialisation and batch stream.

Tokens ``[a, b, =]`` with ``=`` = token ``p`` (vocabulary ``p + 1``), learned positions,
one attention layer (4 heads of 16, causal), a ReLU MLP of 256, no LayerNorm and no
biases; the output is the logits at the last position, shape ``(N, p + 1)``.

Module names (= eNTK layer groups): ``embed`` (nn.Embedding, W_E), ``pos_embed``
(raw parameter ``W_pos``), ``attn.W_Q``, ``attn.W_K``, ``attn.W_V``, ``attn.W_O``,
``mlp.W_in``, ``mlp.W_out``, ``unembed`` (all nn.Linear without bias), plus the derived
group ``attn.OV`` = ``attn.W_O`` + ``attn.W_V``.

The family ``modadd-transformer`` (:class:`ModAddTransformerFamily`) trains it with
cross-entropy on the first ``p`` logits (AdamW 3e-4, weight decay 1.0, shuffled batches
of 64, 4,000 epochs, a checkpoint every 20) and reproduces the author's v4 notebook
(spec §5) on the CPU draw for draw:

* the split (:func:`author_split`: Python's ``random.shuffle`` of the pairs, seeded by
  ``split_seed`` = 0, not by the model seed);
* the initialisation (:func:`notebook_init`: the notebook's ``randn`` calls, in its order
  and layouts, from a generator seeded with the model ``seed``);
* the batch order (:class:`NotebookBatchStream`: the draws its ``DataLoader(shuffle=True)``
  and its every-20-epochs evaluation loops take from that same generator).

With seed 2 this replays the notebook's logged training losses to the printed 4 digits
over the first epochs (3.4278, 3.2946, 3.1861 at its epochs 0, 20, 40); CPU/GPU
rounding then drifts slowly (test accuracy within ~1 point of the notebook's log). Epoch
``e`` here (1-based, checkpoint after ``e`` epochs) is the notebook's epoch ``e - 1``.

``summary()`` stores the key frequencies of the trained token embedding
(``key_frequencies``) and its per-frequency Fourier power; the analysis (overlaps with the
key-frequency families, over training) is in :mod:`entk_core.families.modadd_transformer.analysis`.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..base import seeded
from ..modadd_mlp.data import modadd_pairs

__all__ = ["ModAddTransformer", "ModAddTransformerConfig", "modadd_tokens", "author_split", "notebook_init",
           "NotebookBatchStream", "NOTEBOOK_LOG_EVERY"]


class PosEmbed(nn.Module):
    def __init__(self, n_ctx: int, d_model: int):
        super().__init__()
        self.W_pos = nn.Parameter(torch.zeros(n_ctx, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, T, d)
        return x + self.W_pos[: x.shape[1]]


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_head: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.W_Q = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.W_K = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.W_V = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.W_O = nn.Linear(n_heads * d_head, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, d) -> (N, T, d)
        N, T, _ = x.shape
        split = lambda t: t.view(N, T, self.n_heads, self.d_head).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.W_Q(x)), split(self.W_K(x)), split(self.W_V(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)  # (N, H, T, T)
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=1)
        pattern = scores.masked_fill(mask, float("-inf")).softmax(-1)
        z = (pattern @ v).transpose(1, 2).reshape(N, T, self.n_heads * self.d_head)
        return self.W_O(z)


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.W_in = nn.Linear(d_model, d_mlp, bias=False)
        self.W_out = nn.Linear(d_mlp, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.W_out(F.relu(self.W_in(x)))


def notebook_init(generator: torch.Generator, p: int, d_model: int, n_heads: int, d_mlp: int,
                  n_ctx: int = 3) -> list[torch.Tensor]:
    """Spec §5.2 initialisation ``randn / sqrt(fan)``, drawn as the author's notebook draws
    it: one ``randn`` per matrix from one generator, in its order (``W_E``, ``W_pos``,
    ``W_Q``, ``W_K``, ``W_V``, ``W_O``, ``W_in``, ``W_out``, ``W_U``) and its layouts
    (``W_Q/K/V`` ``(heads, d_head, d_model)``, ``W_in`` ``(d_model, d_mlp)``, ``W_out``
    ``(d_mlp, d_model)``, ``W_U`` ``(d_model, p + 1)``). Returned in that order, reshaped or
    transposed to our modules' layouts (``nn.Linear`` weights are ``(out, in)``)."""
    d, H, dh, V = d_model, n_heads, d_model // n_heads, p + 1
    randn = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    return [
        randn(V, d) / math.sqrt(d),
        randn(n_ctx, d) / math.sqrt(d),
        (randn(H, dh, d) / math.sqrt(d)).reshape(H * dh, d),
        (randn(H, dh, d) / math.sqrt(d)).reshape(H * dh, d),
        (randn(H, dh, d) / math.sqrt(d)).reshape(H * dh, d),
        randn(d, H * dh) / math.sqrt(d),
        (randn(d, d_mlp) / math.sqrt(d_mlp)).T,
        (randn(d_mlp, d) / math.sqrt(d)).T,
        (randn(d, V) / math.sqrt(V)).T,
    ]


class ModAddTransformer(nn.Module):
    """Input: token ids ``(N, 3)`` int64. Output: last-position logits ``(N, p + 1)``."""

    def __init__(self, p: int, d_model: int = 64, n_heads: int = 4, d_mlp: int = 256, n_ctx: int = 3):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.p = p
        self.embed = nn.Embedding(p + 1, d_model)
        self.pos_embed = PosEmbed(n_ctx, d_model)
        self.attn = Attention(d_model, n_heads, d_model // n_heads)
        self.mlp = MLP(d_model, d_mlp)
        self.unembed = nn.Linear(d_model, p + 1, bias=False)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Spec §5.2 initialisation, drawn exactly as the author's notebook draws it
        (:func:`notebook_init`); consumes ``generator``."""
        d_mlp = self.mlp.W_in.out_features
        values = notebook_init(generator, self.p, self.embed.embedding_dim, self.attn.n_heads, d_mlp,
                               self.pos_embed.W_pos.shape[0])
        params = [self.embed.weight, self.pos_embed.W_pos, self.attn.W_Q.weight, self.attn.W_K.weight,
                  self.attn.W_V.weight, self.attn.W_O.weight, self.mlp.W_in.weight, self.mlp.W_out.weight,
                  self.unembed.weight]
        with torch.no_grad():
            for w, v in zip(params, values):
                w.copy_(v)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.pos_embed(self.embed(tokens))
        x = x + self.attn(x)
        x = x + self.mlp(x)
        return self.unembed(x[:, -1])


@dataclass
class ModAddTransformerConfig:
    p: int = 29
    d_model: int = 64
    n_heads: int = 4
    d_mlp: int = 256
    epochs: int = 4000
    seed: int = 2
    lr: float = 3e-4
    weight_decay: float = 1.0
    batch_size: int = 64
    train_frac: float = 0.5
    split_seed: int = 0
    checkpoint_every: int = 20


def modadd_tokens(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``p**2`` sequences ``[a, b, =]`` (``=`` is token ``p``), row ``a*p + b``, and their
    labels ``(a + b) mod p``."""
    pairs, labels = modadd_pairs(p)
    eq = torch.full((len(pairs), 1), p, dtype=torch.long)
    return torch.cat([pairs, eq], dim=1), labels


def author_split(p: int, train_frac: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The author's train/test split (spec §5.1), reproduced exactly.

    The notebook builds ``pairs = [(i, j, p) for i in range(p) for j in range(p)]`` (cartesian
    order, so list position ``a*p + b`` holds ``(a, b)``, our row order), then runs
    ``random.seed(split_seed); random.shuffle(pairs)`` and trains on the first
    ``int(train_frac * len(pairs))`` (420 of 841 for p = 29). ``random.shuffle`` only
    permutes positions (it never looks at the items), so shuffling the row indices with a
    ``random.Random(split_seed)`` (same state as ``random.seed(split_seed)``, without
    touching the global generator) gives the same permutation.

    Returns the training and test row indices (into the ``a*p + b`` rows) in the shuffled
    order (the notebook's ``train_x`` order, which its ``DataLoader`` indexes:
    :class:`NotebookBatchStream`).
    """
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train fraction must lie in (0, 1), got {train_frac}")
    order = list(range(p * p))
    random.Random(split_seed).shuffle(order)
    k = int(train_frac * len(order))
    perm = torch.tensor(order, dtype=torch.long)
    return perm[:k], perm[k:]


NOTEBOOK_LOG_EVERY = 20
"""The author's notebook evaluates (test set, then the shuffled train set) after every
20th training epoch; those DataLoader iterations draw from the same generator (spec §5.3)."""


def _draw_int64(g: torch.Generator) -> int:
    return int(torch.empty((), dtype=torch.int64).random_(generator=g).item())


def _notebook_epoch_draws(g: torch.Generator, j: int, n_train: int) -> torch.Tensor:
    """Everything the notebook's training epoch ``j`` (0-based) draws from the global torch
    generator ``g``, in order; returns that epoch's permutation of the training rows.

    Iterating ``DataLoader(train, batch_size=64, shuffle=True)`` draws the iterator's
    ``_base_seed`` and then, on the first batch, the ``RandomSampler``'s seed, from which
    a private generator draws ``randperm(n_train)``. After epochs ``j % 20 == 0`` the
    notebook iterates the test loader (a ``_base_seed``) and the train loader (a
    ``_base_seed`` and a sampler seed) to log accuracies."""
    _draw_int64(g)  # the train iterator's _base_seed
    gen = torch.Generator()
    gen.manual_seed(_draw_int64(g))  # RandomSampler.__iter__
    perm = torch.randperm(n_train, generator=gen)
    if j % NOTEBOOK_LOG_EVERY == 0:
        _draw_int64(g)  # test(test_loader): _base_seed (SequentialSampler draws nothing)
        _draw_int64(g)  # test(train_loader): _base_seed ...
        _draw_int64(g)  # ... and its RandomSampler seed
    return perm


class NotebookBatchStream:
    """The author's batch order, reproduced exactly and resumable (spec §5.3).

    The notebook seeds the global torch generator with the model seed, draws the
    initialisation (:func:`notebook_init`) and then shuffles every epoch
    with ``DataLoader(shuffle=True)`` from the same generator (see
    :func:`_notebook_epoch_draws`), indexing its training list in shuffled order (our
    ``train_idx`` order, :func:`author_split`). :meth:`permutation` replays that stream
    on a private generator: epoch ``e`` (1-based, our convention) is the notebook's
    epoch ``e - 1``. The state at the next epoch is kept, so sequential epochs cost O(1)
    and a resume at epoch ``e`` replays O(e) integer draws (milliseconds).
    """

    def __init__(self, cfg: "ModAddTransformerConfig", n_train: int):
        self.cfg, self.n_train = cfg, int(n_train)
        self._epoch, self._state = 0, None  # generator state at the start of notebook epoch _epoch

    def _fresh(self) -> torch.Generator:
        c = self.cfg
        g = seeded(c.seed)
        notebook_init(g, c.p, c.d_model, c.n_heads, c.d_mlp)  # the init draws come first
        return g

    def permutation(self, epoch: int) -> torch.Tensor:
        """Permutation of ``range(n_train)`` used in ``epoch`` (1-based)."""
        j = int(epoch) - 1
        if j < 0:
            raise ValueError(f"epochs start at 1, got {epoch}")
        if self._state is None or j < self._epoch:
            g, start = self._fresh(), 0
        else:
            g, start = torch.Generator(), self._epoch
            g.set_state(self._state)
        for i in range(start, j):
            _notebook_epoch_draws(g, i, self.n_train)
        perm = _notebook_epoch_draws(g, j, self.n_train)
        self._epoch, self._state = j + 1, g.get_state()
        return perm
