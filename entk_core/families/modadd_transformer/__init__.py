"""The 1-layer Transformer family on modular addition (paper spec §5): ``modadd-transformer``.

The model, the author's split, initialisation and batch stream are in
:mod:`entk_core.families.modadd_transformer.model` (re-exported here); key frequencies,
the unembedding overlap report and the overlap over training in
:mod:`entk_core.families.modadd_transformer.analysis`.
"""
from __future__ import annotations

import threading
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..base import AnalysisServices, Dataset, FeatureFamily, ModelFamily, SweepSpec, seeded
from . import analysis
from .features import detect_key_frequencies, key_frequencies, transformer_families
from .model import (ModAddTransformer, ModAddTransformerConfig, NotebookBatchStream, author_split, modadd_tokens,
                    notebook_init)

__all__ = ["ModAddTransformer", "ModAddTransformerConfig", "ModAddTransformerFamily", "modadd_tokens", "author_split",
           "notebook_init", "NotebookBatchStream"]


class ModAddTransformerFamily(ModelFamily):
    """Spec §5: the 1-layer Transformer on modular addition.

    * Data: all ``p**2`` sequences ``[a, b, =]`` in row order ``a*p + b`` (the eNTK is
      evaluated on all of them, ``kernel_idx``); the author's 50% split
      (:func:`author_split`: ``random.seed(split_seed); random.shuffle(pairs)`` on the
      cartesian-ordered pairs, train = the first ``int(train_frac * p**2)``), drawn from
      ``split_seed`` (0), *not* from the model seed, so every model seed sees the same 420
      training pairs, the author's (``train_idx`` in the notebook's shuffled order).
    * Init: :func:`notebook_init` from a generator seeded with ``seed``.
    * Training: cross-entropy on the first ``p`` logits, AdamW(3e-4, weight decay 1.0),
      shuffled mini-batches of 64 in the notebook's order (:class:`NotebookBatchStream`,
      which continues the init generator as the notebook's global generator does; exact
      on resume).
    * eNTK: the all-class mean reduction over all ``p + 1`` logits, top 40; derived
      group ``attn.OV`` = ``attn.W_O`` + ``attn.W_V``.
    """

    name = "modadd-transformer"
    title = "Modular-addition 1-layer Transformer"
    Config = ModAddTransformerConfig
    default_reduction = "mean"
    default_top = 40
    train_threads = 1  # batch-64 steps on a tiny model: one thread avoids thread-sync overhead
    _streams: dict = {}  # (seed, shapes, n_train) -> NotebookBatchStream (sequential epochs O(1))
    _stream_lock = threading.Lock()
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
        train_idx, test_idx = author_split(cfg.p, cfg.train_frac, cfg.split_seed)
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
        n = len(data.train_idx)
        key = (cfg.seed, cfg.p, cfg.d_model, cfg.n_heads, cfg.d_mlp, n)
        with self._stream_lock:
            stream = self._streams.get(key)
            if stream is None:
                if len(self._streams) >= 8:
                    self._streams.pop(next(iter(self._streams)))
                stream = self._streams[key] = NotebookBatchStream(cfg, n)
            perm = stream.permutation(epoch)
        yield from data.train_idx[perm].split(cfg.batch_size)

    # ------------------------------------------------------------------ analysis
    def summary(self, model: nn.Module, cfg: ModAddTransformerConfig, data: Dataset) -> dict[str, Any]:
        """The key frequencies of the trained token embedding, the rule that found them and
        the per-frequency Fourier power."""
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
        if key_freqs is None:
            if model is None:
                raise ValueError("the Transformer's feature families need the model (its key frequencies) or key_freqs")
            key_freqs = key_frequencies(model.embed.weight, cfg.p)
        return transformer_families(cfg.p, key_freqs)

    def sweep_spec(self, cfg: Any, group: str) -> SweepSpec:
        """Generic per-checkpoint sweep (:mod:`entk_core.workflows.sweep`): the mean-reduced kernel
        against the key-frequency families, cliffs detected. The paper's fixed mode
        blocks (0:2F+1, 2F+1:4F+1) need the run: :func:`entk_core.families.modadd_transformer.analysis.sweep_spec`."""
        return SweepSpec(group=group, reduction="mean", top=self.default_top, families=analysis.ALIGN_FAMILIES,
                         primary="sum")

    def align_report(self, run: Any, epoch: int, *, services: AnalysisServices, group: str | None = None,
                     beta: float | None = None, progress=None) -> dict[str, Any]:
        """Overlap of the top modes of ``group`` (default ``unembed``) with the key-frequency
        families (:func:`entk_core.families.modadd_transformer.analysis.align_report`)."""
        if beta is not None:
            raise ValueError(f"beta (importance rescaling) is not used by the {self.name} family")
        return analysis.align_report(run, epoch, services=services, group=group or self.default_align_group,
                                     progress=progress)

    def group_labels(self, cfg: Any) -> dict[str, str]:
        return {"embed": "W_E, token embedding", "pos_embed": "W_pos, positions", "attn.W_Q": "W_Q, queries",
                "attn.W_K": "W_K, keys", "attn.W_V": "W_V, values", "attn.W_O": "W_O, attention output",
                "attn.OV": "W_O + W_V, the OV circuit", "mlp.W_in": "W_in, MLP input",
                "mlp.W_out": "W_out, MLP output", "unembed": "W_U, unembedding"}

    def eigenvector_view(self, cfg: Any) -> str:
        return "grid"

    def hidden_activations(self, model: nn.Module, x: Any) -> torch.Tensor:
        """The residual stream at the last position after the MLP, ``(N, d_model)`` (what the
        unembedding reads)."""
        h = model.pos_embed(model.embed(x))
        h = h + model.attn(h)
        h = h + model.mlp(h)
        return h[:, -1]
