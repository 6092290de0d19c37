"""Architecture adapters: what the LM eNTK needs to know about one decoder family.

A causal LM here is ``embed -> blocks[0..L-1] -> final norm -> unembedding``. The eNTK
operator (:mod:`.operator`) differentiates ``r = final_norm(h_{L-1})[:, -1]`` (the
final-normed hidden state at the last position, ``(N, d_model)``) with respect to the
parameters of one module inside one block, and re-runs only the network *after* those
parameters (the *tail*). An adapter gives the tail two architecture-specific pieces:

* :meth:`Arch.finish_after_mlp` -- the rest of a block after its MLP output projection:
  ``h = resid + post_norm(mlp_out)`` (Gemma3), ``h = resid + mlp_out`` (Llama-style,
  GPT-2), where ``resid`` is the residual stream entering the block's MLP half (the
  input of :attr:`Arch.pre_mlp_norm`);
* :meth:`Arch.last_query_block` -- a whole block evaluated for the **last query position
  only**: keys and values are still computed at every position (the last position attends
  to all of them), but the query, the attention output, the MLP and the norms are computed
  for one position. This is exact: nothing later reads the other positions.

Supported ``config.model_type``: ``gemma3_text`` (Gemma-3 text models, e.g.
``google/gemma-3-270m``), the Llama-style ``llama``, ``mistral``, ``qwen2``, ``qwen3``,
and ``gpt2``. Shapes: ``B`` contexts, ``T`` positions, ``d`` = ``d_model``.
"""
from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

__all__ = ["Arch", "get_arch", "SUPPORTED_MODEL_TYPES", "block_output"]


def block_output(out: Any) -> torch.Tensor:
    """The hidden states returned by a decoder block (a tensor, or the first item of a tuple)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` ``(B, heads, T, hd)`` with ``cos, sin`` ``(B|1, T, hd)``
    (the same arithmetic as transformers' ``apply_rotary_pos_emb``)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos) + (_rotate_half(x) * sin)


def _eager_attention(attn: nn.Module):
    """The ``eager_attention_forward`` of the module's own modeling file."""
    return sys.modules[type(attn).__module__].eager_attention_forward


def _last_row(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else mask[..., -1:, :]


class Arch:
    """Base adapter. Subclasses set the names and implement the two tail pieces.

    Class attributes:
      model_types: the ``config.model_type`` values handled.
      blocks_path: dotted path of the ``nn.ModuleList`` of blocks inside the base model.
      final_norm_path: dotted path of the final norm inside the base model.
      mlp_out: the block-relative path of the MLP output projection (the default
        parameters of the eNTK, paper: ``mlp.down_proj``).
      pre_mlp_norm: the block-relative path of the norm whose *input* is the residual
        stream entering the MLP half of the block.
    """

    model_types: tuple[str, ...] = ()
    blocks_path = "layers"
    final_norm_path = "norm"
    mlp_out = "mlp.down_proj"
    pre_mlp_norm = "post_attention_layernorm"

    # ----------------------------------------------------------------- access
    def base(self, model: nn.Module) -> nn.Module:
        """The decoder without its LM head (``model.model`` / ``model.transformer``)."""
        return model.base_model

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return self.base(model).get_submodule(self.blocks_path)

    def final_norm(self, model: nn.Module) -> nn.Module:
        return self.base(model).get_submodule(self.final_norm_path)

    def unembedding(self, model: nn.Module) -> torch.Tensor:
        """``U`` ``(V, d)``: logits = ``r @ U.T`` (before any final soft-capping)."""
        return model.get_output_embeddings().weight

    def block_prefix(self, model: nn.Module, layer: int) -> str:
        """The parameter-name prefix of block ``layer`` inside the base model (``layers.16``)."""
        return f"{self.blocks_path}.{layer}"

    # ------------------------------------------------------------ tail pieces
    def finish_after_mlp(self, block: nn.Module, resid: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
        """Block output from the residual ``resid`` ``(B, T, d)`` entering the MLP half and
        the MLP output projection's output ``mlp_out`` ``(B, T, d)``."""
        raise NotImplementedError

    def last_query_block(self, block: nn.Module, h: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        """The block's output at the last position, ``(B, 1, d)``, from its input ``h``
        ``(B, T, d)`` and the extra arguments the model passed to it (captured)."""
        raise NotImplementedError


class _RopeArch(Arch):
    """Shared last-query attention of the rotary families (Gemma3, Llama, Mistral, Qwen)."""

    def _attention_last(self, attn: nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
        B, T, _ = x.shape
        hd = attn.head_dim
        q = attn.q_proj(x[:, -1:]).view(B, 1, -1, hd).transpose(1, 2)       # (B, H, 1, hd)
        k = attn.k_proj(x).view(B, T, -1, hd).transpose(1, 2)               # (B, Hkv, T, hd)
        v = attn.v_proj(x).view(B, T, -1, hd).transpose(1, 2)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        cos, sin = kwargs["position_embeddings"]
        q = _rope(q, cos[:, -1:], sin[:, -1:])
        k = _rope(k, cos, sin)
        extra = {"sliding_window": attn.sliding_window} if getattr(attn, "sliding_window", None) is not None else {}
        o, _ = _eager_attention(attn)(attn, q, k, v, _last_row(kwargs.get("attention_mask")), dropout=0.0,
                                      scaling=attn.scaling, **extra)
        return attn.o_proj(o.reshape(B, 1, -1).contiguous())                # (B, 1, d)


class Gemma3Arch(_RopeArch):
    """Gemma-3 text: four RMSNorms per block (pre/post attention, pre/post feed-forward)."""

    model_types = ("gemma3_text",)
    pre_mlp_norm = "pre_feedforward_layernorm"

    def finish_after_mlp(self, block, resid, mlp_out):
        return resid + block.post_feedforward_layernorm(mlp_out)

    def last_query_block(self, block, h, args, kwargs):
        a = self._attention_last(block.self_attn, block.input_layernorm(h), kwargs)
        h1 = h[:, -1:] + block.post_attention_layernorm(a)
        return h1 + block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(h1)))


class LlamaArch(_RopeArch):
    """Llama-style: ``h + attn(norm(h))`` then ``h + mlp(norm(h))`` (Llama, Mistral, Qwen2/3)."""

    model_types = ("llama", "mistral", "qwen2", "qwen3")

    def finish_after_mlp(self, block, resid, mlp_out):
        return resid + mlp_out

    def last_query_block(self, block, h, args, kwargs):
        h1 = h[:, -1:] + self._attention_last(block.self_attn, block.input_layernorm(h), kwargs)
        return h1 + block.mlp(block.post_attention_layernorm(h1))


class GPT2Arch(Arch):
    """GPT-2: learned positions, fused ``c_attn`` (Conv1D, ``y = x W + b``), LayerNorms."""

    model_types = ("gpt2",)
    blocks_path = "h"
    final_norm_path = "ln_f"
    mlp_out = "mlp.c_proj"
    pre_mlp_norm = "ln_2"

    def finish_after_mlp(self, block, resid, mlp_out):
        return resid + block.mlp.dropout(mlp_out)

    def last_query_block(self, block, h, args, kwargs):
        attn = block.attn
        B, T, d = h.shape
        hd, s = attn.head_dim, attn.split_size
        x = block.ln_1(h)
        W, b = attn.c_attn.weight, attn.c_attn.bias                        # (d, 3d), (3d,)
        q = torch.addmm(b[:s], x[:, -1], W[:, :s]).view(B, 1, -1, hd).transpose(1, 2)
        kv = (x.reshape(B * T, d) @ W[:, s:] + b[s:]).view(B, T, 2 * s)
        k = kv[..., :s].reshape(B, T, -1, hd).transpose(1, 2)
        v = kv[..., s:].reshape(B, T, -1, hd).transpose(1, 2)
        # GPT2Block(hidden_states, cache, attention_mask, ...): the mask is positional or a kwarg
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if getattr(attn, "reorder_and_upcast_attn", False):
            o, _ = attn._upcast_and_reordered_attn(q, k, v, _last_row(mask))
        else:
            o, _ = _eager_attention(attn)(attn, q, k, v, _last_row(mask), scaling=attn.scaling, dropout=0.0)
        a = attn.resid_dropout(attn.c_proj(o.reshape(B, 1, -1).contiguous()))
        h1 = h[:, -1:] + a
        return h1 + block.mlp(block.ln_2(h1))


_ARCHES: tuple[Arch, ...] = (Gemma3Arch(), LlamaArch(), GPT2Arch())
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for a in _ARCHES for t in a.model_types)


def get_arch(model_type: str) -> Arch:
    """The adapter for ``config.model_type`` (``ValueError`` naming the supported ones)."""
    for a in _ARCHES:
        if model_type in a.model_types:
            return a
    raise ValueError(f"unsupported architecture '{model_type}'; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
