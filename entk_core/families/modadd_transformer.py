"""The 1-layer Transformer on modular addition (paper spec §5), Nanda-style.

Tokens ``[a, b, =]`` with ``=`` = token ``p`` (vocabulary ``p + 1``), learned positions,
one attention layer (4 heads of 16, causal), a ReLU MLP of 256, no LayerNorm and no
biases; the output is the logits at the last position, shape ``(N, p + 1)``.

Module names (= eNTK layer groups): ``embed`` (nn.Embedding, W_E), ``pos_embed``
(raw parameter ``W_pos``), ``attn.W_Q``, ``attn.W_K``, ``attn.W_V``, ``attn.W_O``,
``mlp.W_in``, ``mlp.W_out``, ``unembed`` (all nn.Linear without bias).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import modadd_pairs, random_split
from ..models import Dataset, FeatureFamily, ModelFamily, register, seeded

__all__ = ["ModAddTransformer", "ModAddTransformerConfig", "ModAddTransformerFamily", "modadd_tokens", "epoch_generator"]


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
        """Spec §5.2 initialisation: randn / sqrt(fan) per matrix."""
        d = self.embed.embedding_dim
        d_mlp = self.mlp.W_in.out_features
        with torch.no_grad():
            for w, scale in [
                (self.embed.weight, d), (self.pos_embed.W_pos, d),
                (self.attn.W_Q.weight, d), (self.attn.W_K.weight, d), (self.attn.W_V.weight, d),
                (self.attn.W_O.weight, d), (self.mlp.W_in.weight, d_mlp), (self.mlp.W_out.weight, d),
                (self.unembed.weight, self.p + 1),
            ]:
                w.normal_(0.0, 1.0, generator=generator).div_(math.sqrt(scale))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.pos_embed(self.embed(tokens))
        x = x + self.attn(x)
        x = x + self.mlp(x)
        return self.unembed(x[:, -1])


# ---------------------------------------------------------------------------- family
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


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that shuffles the batches of ``epoch``: seeded from ``(seed, epoch)``
    through numpy's ``SeedSequence`` (independent streams, no collisions between
    nearby pairs), so any epoch's batches can be redrawn exactly on resume."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    return seeded(int(state[0]) << 31 | int(state[1] >> 1))


@register
class ModAddTransformerFamily(ModelFamily):
    """Spec §5: the 1-layer Transformer on modular addition.

    * Data: all ``p**2`` sequences ``[a, b, =]``; a 50% split drawn with a seeded torch
      permutation (:func:`entk_core.data.random_split`) from ``split_seed`` (0), *not*
      from the model seed, so every model seed sees the same 420 training pairs. (The
      author used Python's ``random.shuffle`` with seed 0; the split is a different,
      equally fixed one.)
    * Training: cross-entropy on the first ``p`` logits, AdamW(3e-4, weight decay 1.0),
      shuffled mini-batches of 64 drawn per epoch by :func:`epoch_generator`.
    * eNTK: the all-class mean reduction over all ``p + 1`` logits, top 40; derived
      group ``attn.OV`` = ``attn.W_O`` + ``attn.W_V``.
    """

    name = "modadd-transformer"
    title = "Modular-addition 1-layer Transformer"
    Config = ModAddTransformerConfig
    default_reduction = "mean"
    default_top = 40
    derived_groups = {"attn.OV": ("attn.W_O", "attn.W_V")}
    default_align_group = "unembed"

    def build_model(self, cfg: ModAddTransformerConfig) -> nn.Module:
        if cfg.p < 3 or cfg.d_model < 1 or cfg.n_heads < 1 or cfg.d_mlp < 1:
            raise ValueError(f"need p >= 3 and positive sizes, got p={cfg.p}, d_model={cfg.d_model}, "
                             f"n_heads={cfg.n_heads}, d_mlp={cfg.d_mlp}")
        model = ModAddTransformer(cfg.p, cfg.d_model, cfg.n_heads, cfg.d_mlp)
        model.reset_parameters(seeded(cfg.seed))
        return model

    def make_data(self, cfg: ModAddTransformerConfig) -> Dataset:
        tokens, labels = modadd_tokens(cfg.p)
        train_idx, test_idx = random_split(len(tokens), cfg.train_frac, cfg.split_seed)
        pairs = tokens[:, :2]
        return Dataset(
            x=tokens, y=labels, train_idx=train_idx, test_idx=test_idx,
            kernel_idx=torch.arange(len(tokens)), meta={"p": cfg.p, "pairs": pairs},
        )

    def make_optimizer(self, model: nn.Module, cfg: ModAddTransformerConfig) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = out.shape[-1] - 1
        return F.cross_entropy(out[:, :p], y)

    def accuracy(self, out: torch.Tensor, y: torch.Tensor) -> float:
        p = out.shape[-1] - 1
        return (out[:, :p].argmax(-1) == y).float().mean().item()

    def batches(self, data: Dataset, cfg: ModAddTransformerConfig, epoch: int) -> Iterator[torch.Tensor]:
        if cfg.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {cfg.batch_size}")
        idx = data.train_idx[torch.randperm(len(data.train_idx), generator=epoch_generator(cfg.seed, epoch))]
        yield from idx.split(cfg.batch_size)

    # ------------------------------------------------------------------ analysis
    def summary(self, model: nn.Module, cfg: ModAddTransformerConfig, data: Dataset) -> dict[str, Any]:
        from ..features import detect_key_frequencies

        kf = detect_key_frequencies(model.embed.weight, cfg.p)
        return {
            "key_frequencies": [int(k) for k in kf.freqs],
            "key_frequency_rule": kf.rule,
            "key_frequency_ratio": float(kf.ratio),
            "embedding_fourier_power": [float(v) for v in kf.power],
        }

    def feature_families(self, cfg: Any, data: Dataset, model: nn.Module | None = None,
                         key_freqs: Sequence[int] | None = None) -> dict[str, FeatureFamily]:
        """``sum``, ``diff``, ``axis_sum``, ``axis_diff`` (and ``axis2_sum``) at the key
        frequencies: ``key_freqs`` if given, else those detected in ``model``'s embedding."""
        from ..features import key_frequencies, transformer_families

        if key_freqs is None:
            if model is None:
                raise ValueError("the Transformer's feature families need the model (its key frequencies) or key_freqs")
            key_freqs = key_frequencies(model.embed.weight, cfg.p)
        return transformer_families(cfg.p, key_freqs)

    def align_report(self, run: Any, epoch: int, **options: Any) -> dict[str, Any]:
        from ..transformer import align_report

        return align_report(run, epoch, group=options.get("group") or self.default_align_group,
                            cache=options.get("cache"), progress=options.get("progress"))
