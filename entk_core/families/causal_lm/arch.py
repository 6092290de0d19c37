"""What the LM eNTK needs to know about a decoder, found from the loaded model itself.

A causal LM here is ``embed -> blocks[0..L-1] -> final modules -> unembedding``. The eNTK
operator (:mod:`.operator`) differentiates ``r = final(h_{L-1})[:, -1]`` (the base model's
``last_hidden_state`` at the last position, ``(N, d_r)``) with respect to the parameters
of one module inside one block and re-runs only the network *after* them (the *tail*).

:func:`discover` finds every piece generically -- from the module tree and one forward
pass of two short random contexts with hooks, not from a list of model names -- and
checks each against the model's own output:

* **blocks**: the ``nn.ModuleList`` of ``config.num_hidden_layers`` modules of one class;
* **final modules**: what the base model applies after the last block, in call order
  (the final norm; OPT's ``project_out`` after it), checked to reproduce
  ``last_hidden_state``;
* **attention**: the block's child that receives the attention mask;
* **MLP output projection**: the last ``Linear``/``Conv1D`` called in a block, outside
  the attention, whose output has the residual width (``mlp.down_proj``, ``mlp.c_proj``,
  ``mlp.dense_4h_to_h``, OPT's ``fc2``...), the same path in every block;
* **finish** -- how that projection's output ``o`` reaches the block output ``h``:
  ``"add"`` when ``h = rest + g(o)`` with ``g`` the identity or a post-MLP norm (Gemma 2/3,
  OLMo 2), checked on every block by perturbing ``o``. ``rest`` is captured as
  ``h − g(o)``, so a *parallel* block (GPT-NeoX, Falcon, Phi, GPT-J: ``h = x + attn(x) +
  mlp(x)``) is exact as it is: its attention term is part of ``rest``. Any other block
  (OPT-350m's norm after the residual, Granite's residual multiplier) is ``"rerun"``:
  block ``L`` runs again from its input with the projection's output substituted;
* **last** -- how the last block is evaluated for the **last query position only**
  (nothing later reads the other positions): ``"attention"`` (the block's own forward
  with its attention computing one query row -- keys and values still at every position
  -- and its MLP fed the last position only; for attention modules with separate
  ``q/k/v/o`` projections (rotary or not) or GPT-2's fused ``c_attn``), ``"mlp"`` (only
  the MLP cut to the last position) or ``"full"`` (the whole block, then the last
  position). The fastest variant that reproduces the model's last block on the probe
  forward is used.

Everything chosen is exact (tests compare the tail with the full model to float64
round-off on tiny random models of every supported architecture). What cannot be found is
a one-line ``ValueError`` naming the missing piece. Shapes: ``B`` contexts, ``T``
positions, ``d`` = the residual width.
"""
from __future__ import annotations

import inspect
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["Arch", "discover", "block_output", "MOE_CONFIG_KEYS"]

MOE_CONFIG_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
DROP_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past", "use_cache")
"""Block keyword arguments never replayed in the tail (caches are off)."""


def block_output(out: Any) -> torch.Tensor:
    """The hidden states returned by a decoder block (a tensor, or the first item of a tuple)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def is_linear(mod: nn.Module) -> bool:
    """``nn.Linear`` (and subclasses) or transformers' ``Conv1D`` (``y = x W + b``)."""
    return isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D"


def linear_in_features(mod: nn.Module) -> int:
    return int(mod.weight.shape[1] if isinstance(mod, nn.Linear) else mod.weight.shape[0])


# ----------------------------------------------------------------- per-thread switches
_STATE = threading.local()


@contextmanager
def _switch(name: str, value: Any):
    old = getattr(_STATE, name, None)
    setattr(_STATE, name, value)
    try:
        yield
    finally:
        setattr(_STATE, name, old)


def _cut_last_hook(m: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook of the MLP entry: feed it the last position only (while the
    ``last_query`` switch is on in this thread)."""
    if getattr(_STATE, "last_query", None) not in ("attention", "mlp"):
        return None
    if args and torch.is_tensor(args[0]):
        x = args[0]
        if x.ndim < 3:
            raise ValueError("MLP input is not (B, T, d)")
        # contiguous: a strided (B, 1, d) slice makes F.linear's autograd expand the weight into a
        # batched matmul (B copies of W: 55% of a Gemma product's time)
        return (x[:, -1:].contiguous(), *args[1:]), kwargs
    for k, v in kwargs.items():
        if torch.is_tensor(v):
            if v.ndim < 3:
                raise ValueError("MLP input is not (B, T, d)")
            return args, {**kwargs, k: v[:, -1:].contiguous()}
    raise ValueError("MLP entry has no tensor input")


def _substitute_hook(m: nn.Module, args: tuple, out: torch.Tensor):
    """Forward hook of the MLP output projection: return the substitute output set by
    :meth:`Arch.rerun_block` in this thread (a copy: some blocks add to it in place)."""
    sub = getattr(_STATE, "substitute", None)
    if sub is None or sub[0] is not m:
        return None
    return sub[1].reshape(out.shape).clone()


# ----------------------------------------------------------------- last-query attention
def _modeling(attn: nn.Module):
    return sys.modules[type(attn).__module__]


def _accepts(fn: Callable) -> tuple[set[str], bool]:
    try:
        ps = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return set(), True
    return set(ps), any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps.values())


def _eager_kwargs(attn: nn.Module, fn: Callable) -> dict[str, Any]:
    names, var = _accepts(fn)
    kw: dict[str, Any] = {"dropout": 0.0, "scaling": getattr(attn, "scaling", None)}
    if getattr(attn, "sliding_window", None) is not None:
        kw["sliding_window"] = attn.sliding_window
    if getattr(attn, "attn_logit_softcapping", None) is not None:
        kw["softcap"] = attn.attn_logit_softcapping
    return {k: v for k, v in kw.items() if var or k in names}


def _last_row(mask: torch.Tensor | None) -> torch.Tensor | None:
    return mask[..., -1:, :] if torch.is_tensor(mask) else None


def _qkvo_kind(attn: nn.Module) -> str | None:
    if all(is_linear(getattr(attn, n, None) or nn.Identity()) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) \
            and isinstance(getattr(attn, "head_dim", None), int) \
            and hasattr(_modeling(attn), "eager_attention_forward"):
        return "qkvo"
    if is_linear(getattr(attn, "c_attn", None) or nn.Identity()) and isinstance(getattr(attn, "split_size", None), int) \
            and hasattr(attn, "c_proj") and hasattr(_modeling(attn), "eager_attention_forward"):
        return "c_attn"
    return None


def _norm_qk(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, per_head: bool):
    """Optional q/k norms: over the whole projection (OLMo 2) before the head split, or per
    head (Qwen3, Gemma 3) after it."""
    qn, kn = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    if qn is None:
        return q, k
    w = getattr(qn, "weight", None)
    whole = w is not None and w.numel() != attn.head_dim
    if whole != per_head:
        return qn(q), kn(k)
    return q, k


def _qkvo_last(attn: nn.Module, x: torch.Tensor, mask, position_embeddings) -> torch.Tensor:
    """Attention output at the last position, ``(B, 1, d)``, for separate q/k/v/o projections."""
    B, T, _ = x.shape
    hd = attn.head_dim
    q, k, v = attn.q_proj(x[:, -1:].contiguous()), attn.k_proj(x), attn.v_proj(x)  # contiguous: see _cut_last_hook
    clip = getattr(getattr(attn, "config", None), "clip_qkv", None)
    if clip is not None:
        q, k, v = q.clamp(-clip, clip), k.clamp(-clip, clip), v.clamp(-clip, clip)
    q, k = _norm_qk(attn, q, k, per_head=False)
    q = q.view(B, 1, -1, hd).transpose(1, 2)
    k = k.view(B, T, -1, hd).transpose(1, 2)
    v = v.view(B, T, -1, hd).transpose(1, 2)
    q, k = _norm_qk(attn, q, k, per_head=True)
    if position_embeddings is not None:
        rope = _modeling(attn).apply_rotary_pos_emb
        cos, sin = position_embeddings
        q = rope(q, q, cos[:, -1:], sin[:, -1:])[0]
        k = rope(k, k, cos, sin)[1]
    fn = _modeling(attn).eager_attention_forward
    o, _ = fn(attn, q, k, v, _last_row(mask), **_eager_kwargs(attn, fn))
    return attn.o_proj(o.reshape(B, 1, -1).contiguous())


def _c_attn_last(attn: nn.Module, x: torch.Tensor, mask, position_embeddings) -> torch.Tensor:
    """GPT-2's fused ``c_attn`` (Conv1D, ``y = x W + b``), one query row."""
    B, T, d = x.shape
    hd, s = attn.head_dim, attn.split_size
    W, b = attn.c_attn.weight, attn.c_attn.bias
    q = torch.addmm(b[:s], x[:, -1], W[:, :s]).view(B, 1, -1, hd).transpose(1, 2)
    kv = (x.reshape(B * T, d) @ W[:, s:] + b[s:]).view(B, T, 2 * s)
    k = kv[..., :s].reshape(B, T, -1, hd).transpose(1, 2)
    v = kv[..., s:].reshape(B, T, -1, hd).transpose(1, 2)
    if getattr(attn, "reorder_and_upcast_attn", False):
        raise ValueError("reorder_and_upcast_attn")  # the block then runs in full
    fn = _modeling(attn).eager_attention_forward
    o, _ = fn(attn, q, k, v, _last_row(mask), **_eager_kwargs(attn, fn))
    out = attn.c_proj(o.reshape(B, 1, -1).contiguous())
    drop = getattr(attn, "resid_dropout", None)
    return drop(out) if drop is not None else out


_LAST_ATTENTION = {"qkvo": _qkvo_last, "c_attn": _c_attn_last}


def _patch_attention(attn: nn.Module, kind: str, n_out: int) -> None:
    """Give ``attn`` a forward that computes one query row while the ``last_query`` switch
    is on in this thread, and is the module's own forward otherwise (idempotent)."""
    if getattr(attn, "_entk_last_query", None) == kind:
        return
    orig = type(attn).forward.__get__(attn)
    sig = inspect.signature(orig)
    first = next(iter(sig.parameters))
    fast = _LAST_ATTENTION[kind]

    def forward(*args, **kwargs):
        if getattr(_STATE, "last_query", None) != "attention":
            return orig(*args, **kwargs)
        bound = sig.bind(*args, **kwargs).arguments
        extra = bound.get("kwargs", {})
        mask = bound.get("attention_mask", extra.get("attention_mask"))
        pe = bound.get("position_embeddings", extra.get("position_embeddings"))
        out = fast(attn, bound[first], mask, pe)
        return out if n_out == 0 else (out, *([None] * (n_out - 1)))

    attn.forward = forward
    attn._entk_last_query = kind


# ----------------------------------------------------------------- the adapter
@dataclass
class Arch:
    """The discovered layout of one model (see the module docstring).

    Attributes:
      model_type: ``config.model_type``.
      blocks_path: dotted path of the blocks' ``ModuleList`` inside the base model.
      final_paths: base-relative paths of the modules applied after the last block, in order.
      attention: block-relative path of the attention module.
      mlp_out: block-relative path of the MLP output projection (the eNTK's default parameters).
      mlp_entry: block-relative module whose input is the MLP's (cut to the last position
        by ``last`` = ``"attention"``/``"mlp"``), or ``None``.
      post_mlp: block-relative path of ``g`` in ``h = rest + g(o)``, ``None`` for the identity.
      finish: ``"add"`` or ``"rerun"``.
      last: ``"attention"``, ``"mlp"`` or ``"full"``.
      parallel: the MLP reads the block input, not the attention's output (informational).
      d_ff: the MLP width (input features of the output projection).
      d: the residual width (the blocks' output size).
    """

    model_type: str
    blocks_path: str
    final_paths: tuple[str, ...]
    attention: str
    mlp_out: str
    mlp_entry: str | None
    post_mlp: str | None
    finish: str
    last: str
    parallel: bool
    d_ff: int
    d: int
    notes: list[str] = field(default_factory=list)

    # ----------------------------------------------------------------- access
    def base(self, model: nn.Module) -> nn.Module:
        """The decoder without its LM head (``model.model``, ``model.transformer``...)."""
        return model.base_model

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return self.base(model).get_submodule(self.blocks_path)

    def final(self, model: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """``last_hidden_state`` from the last block's output ``h``."""
        base = self.base(model)
        for p in self.final_paths:
            h = base.get_submodule(p)(h)
        return h

    def unembedding(self, model: nn.Module) -> torch.Tensor:
        """``U`` ``(V, d_r)``: logits = ``r @ U.T`` (+ a bias; before any final soft-capping)."""
        return model.get_output_embeddings().weight

    def block_prefix(self, model: nn.Module, layer: int) -> str:
        """The parameter-name prefix of block ``layer`` inside the base model (``layers.16``)."""
        return f"{self.blocks_path}.{layer}"

    def describe(self) -> dict[str, Any]:
        return {"blocks": self.blocks_path, "final": list(self.final_paths), "attention": self.attention,
                "mlp_out": self.mlp_out, "finish": self.finish, "post_mlp": self.post_mlp, "last_block": self.last,
                "parallel": self.parallel}

    # ------------------------------------------------------------ tail pieces
    def g(self, block: nn.Module, o: torch.Tensor) -> torch.Tensor:
        return o if self.post_mlp is None else block.get_submodule(self.post_mlp)(o)

    def prepare(self, block: nn.Module, last: bool) -> None:
        """Install the (switch-guarded, idempotent) hooks this layout uses on ``block``."""
        out_mod = block.get_submodule(self.mlp_out)
        if self.finish == "rerun" and not getattr(out_mod, "_entk_substitute", False):
            out_mod.register_forward_hook(_substitute_hook)
            out_mod._entk_substitute = True
        if last and self.last in ("attention", "mlp"):
            entry = block.get_submodule(self.mlp_entry)
            if not getattr(entry, "_entk_cut", False):
                entry.register_forward_pre_hook(_cut_last_hook, with_kwargs=True)
                entry._entk_cut = True
            if self.last == "attention":
                attn = block.get_submodule(self.attention)
                _patch_attention(attn, _qkvo_kind(attn), getattr(attn, "_entk_n_out", 2))

    def rerun_block(self, block: nn.Module, h: torch.Tensor, args: tuple, kwargs: dict, o: torch.Tensor) -> torch.Tensor:
        """Block output ``(B, T, d)`` from its input ``h`` with the MLP output projection's
        output replaced by ``o`` (``finish == "rerun"``)."""
        with _switch("substitute", (block.get_submodule(self.mlp_out), o)):
            return block_output(block(h, *args, **kwargs))

    def last_query_block(self, block: nn.Module, h: torch.Tensor, args: tuple, kwargs: dict,
                         how: str | None = None) -> torch.Tensor:
        """The block's output at the last position, ``(B, 1, d)``, from its input ``h``
        ``(B, T, d)`` and the extra arguments the model passed to it (captured)."""
        how = how or self.last
        if how == "full":
            return block_output(block(h, *args, **kwargs))[:, -1:]
        with _switch("last_query", how):
            return block_output(block(h, *args, **kwargs))[:, -1:]


# ----------------------------------------------------------------- discovery
def _n_layers(cfg) -> int | None:
    for k in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        v = getattr(cfg, k, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _find_blocks(base: nn.Module, n: int | None, mt: str) -> str:
    best = None
    for name, m in base.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0 and (n is None or len(m) == n) \
                and len({type(b) for b in m}) == 1 and sum(p.numel() for p in m[0].parameters()) > 0:
            size = sum(p.numel() for p in m.parameters())
            if best is None or size > best[0]:
                best = (size, name)
    if best is None:
        raise ValueError(f"{mt}: cannot find the decoder blocks: no list of {n or 'identical'} blocks "
                         f"in {type(base).__name__}")
    return best[1]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _tol(dtype: torch.dtype) -> float:
    return 1e-6 if dtype == torch.float64 else 1e-4


class _Probe:
    """One forward pass of the base model on two short random contexts, with hooks."""

    def __init__(self, model: nn.Module, base: nn.Module, blocks: nn.ModuleList, blocks_path: str):
        cfg = model.config
        vocab = int(model.get_output_embeddings().weight.shape[0])
        T = 6
        self.ids = torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(0))
        self.calls: list[tuple[str, Any, Any]] = []          # base-level modules after/around the blocks
        self.block_in: dict[int, tuple] = {}
        self.block_out: dict[int, torch.Tensor] = {}
        self.inner: list[tuple[str, nn.Module, Any, dict, Any]] = []  # block 0: (name, module, args, kwargs, out)
        hooks = []
        parent_path = blocks_path.rsplit(".", 1)[0] if "." in blocks_path else ""
        owners = [base] + ([base.get_submodule(parent_path)] if parent_path else [])
        seen = set()
        for owner, prefix in zip(owners, ["", parent_path + "." if parent_path else ""]):
            for n, m in owner.named_children():
                if m is blocks or id(m) in seen or blocks_path.startswith(prefix + n + "."):
                    continue
                seen.add(id(m))
                hooks.append(m.register_forward_hook(
                    lambda mod, a, o, n=prefix + n: self.calls.append((n, a, o))))

        def pre(i):
            def hook(m, a, kw):
                x = a[0] if a else kw.get("hidden_states")
                self.block_in[i] = (x.detach().clone(),
                                    tuple(a[1:]), {k: v for k, v in kw.items()
                                                   if k not in DROP_KWARGS and (a or k != "hidden_states")})
                self.calls.append((f"block{i}", None, None))
            return hook

        def post(i):
            def hook(m, a, o):
                self.block_out[i] = block_output(o).detach().clone()
            return hook

        for i, b in enumerate(blocks):
            hooks.append(b.register_forward_pre_hook(pre(i), with_kwargs=True))
            hooks.append(b.register_forward_hook(post(i)))
        for n, m in blocks[0].named_modules():
            if n:
                hooks.append(m.register_forward_hook(
                    lambda mod, a, kw, o, n=n: self.inner.append((n, mod, a, kw, o)), with_kwargs=True))
        try:
            with torch.no_grad():
                dev = next(model.parameters()).device
                self.out = base(input_ids=self.ids.to(dev), use_cache=False).last_hidden_state
        finally:
            for h in hooks:
                h.remove()
        self.n_blocks = len(blocks)
        self.blocks0 = blocks[0]
        del cfg


def _mlp_out(probe: _Probe, attention: str, d: int, mt: str, block_cls: str) -> tuple[str, int]:
    cands = [(n, m) for n, m, a, kw, o in probe.inner if is_linear(m) and not n.startswith(attention + ".")
             and n != attention and torch.is_tensor(o) and o.shape[-1] == d]
    if not cands:
        raise ValueError(f"{mt}: cannot find the MLP output projection: no Linear with output size {d} outside the "
                         f"attention ('{attention}') in {block_cls}")
    name, mod = cands[-1]
    if sum(1 for n, *_ in probe.inner if n == name) != 1:
        raise ValueError(f"{mt}: the MLP output projection '{name}' runs more than once per block")
    return name, linear_in_features(mod)


def _mlp_entry(probe: _Probe, attention: str, mlp_out: str) -> str | None:
    top = mlp_out.split(".")[0]
    if top != mlp_out:
        return top  # the MLP's container (mlp, feed_forward...)
    names = [n for n, *_ in probe.inner]
    after = names.index(attention) if attention in names else -1
    for n, m, a, kw, o in probe.inner[after + 1:]:
        if "." not in n and is_linear(m):
            return n  # the first top-level Linear after the attention (OPT's fc1)
    return None


def _post_mlp(probe: _Probe, attention: str, mlp_out: str, entry: str | None) -> list[str | None]:
    """Candidates for ``g``: block children run after the MLP on its output (not dropout),
    then the identity."""
    names = [n for n, *_ in probe.inner]
    k = names.index(mlp_out)
    mlp_top = mlp_out.split(".")[0]
    out_t = None
    for n, m, a, kw, o in probe.inner[k:]:
        if n == mlp_top and torch.is_tensor(o):
            out_t = o
    out_t = out_t if out_t is not None else probe.inner[k][4]
    cands: list[str | None] = []
    for n, m, a, kw, o in probe.inner[k + 1:]:
        if "." in n or n in (mlp_top, attention) or isinstance(m, nn.Dropout) or not a or not torch.is_tensor(a[0]):
            continue
        if a[0].shape == out_t.shape and torch.equal(a[0], out_t):
            cands.append(n)
    return cands + [None]


def _check_add(arch: Arch, blocks: nn.ModuleList, probe: _Probe, g: str | None) -> bool:
    """``h(o + δ) = h(o) − g(o) + g(o + δ)`` on every block, with the block re-run (substitution)."""
    arch.post_mlp, arch.finish = g, "rerun"
    gen = torch.Generator().manual_seed(1)
    for i, b in enumerate(blocks):
        h, args, kw = probe.block_in[i]
        got: dict[str, torch.Tensor] = {}
        mod = b.get_submodule(arch.mlp_out)
        hk = mod.register_forward_hook(lambda m, a, o: got.update(o=o.detach().clone()))  # returns None
        try:
            with torch.no_grad():
                h0 = block_output(b(h, *args, **kw))
        finally:
            hk.remove()
        o = got["o"]
        delta = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) * o.abs().mean().clamp_min(1e-3)
        arch.prepare(b, last=False)
        with torch.no_grad():
            h1 = arch.rerun_block(b, h, args, kw, o + delta)
            pred = h0 - arch.g(b, o).reshape(h0.shape) + arch.g(b, o + delta).reshape(h0.shape)
        if _rel(pred, h1) > _tol(h1.dtype) or _rel(h1, h0) < 1e-8:
            return False
    return True


def _check_last(arch: Arch, blocks: nn.ModuleList, probe: _Probe, how: str) -> bool:
    last = len(blocks) - 1
    h, args, kw = probe.block_in[last]
    want = probe.block_out[last][:, -1:]
    try:
        with torch.no_grad():
            got = arch.last_query_block(blocks[last], h, args, kw, how=how)
    except (RuntimeError, ValueError, TypeError, AttributeError, IndexError, KeyError):
        return False
    return got.shape == want.shape and _rel(got, want) <= _tol(want.dtype)


def discover(model: nn.Module) -> Arch:
    """The :class:`Arch` of a loaded ``*ForCausalLM`` (module docstring); one-line
    ``ValueError`` naming the piece that cannot be found."""
    cfg = model.config
    mt = getattr(cfg, "model_type", type(model).__name__)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    moe = [k for k in MOE_CONFIG_KEYS if isinstance(getattr(text, k, None), int) and getattr(text, k) > 1]
    if moe:
        raise ValueError(f"{mt}: mixture-of-experts blocks ({moe[0]} = {getattr(text, moe[0])}) have no single MLP "
                         f"output projection")
    base = model.base_model
    blocks_path = _find_blocks(base, _n_layers(text), mt)
    blocks = base.get_submodule(blocks_path)
    block_cls = type(blocks[0]).__name__
    probe = _Probe(model, base, blocks, blocks_path)
    if len(probe.block_in) != len(blocks):
        raise ValueError(f"{mt}: the forward pass did not run every block of '{blocks_path}'")
    # final modules: run after the last block, reproducing last_hidden_state
    order = [n for n, *_ in probe.calls]
    after = order[order.index(f"block{len(blocks) - 1}") + 1:]
    final = tuple(n for n in after if not n.startswith("block"))
    h = probe.block_out[len(blocks) - 1]
    with torch.no_grad():
        for p in final:
            h = base.get_submodule(p)(h)
    if h.shape != probe.out.shape or _rel(h, probe.out) > _tol(h.dtype):
        raise ValueError(f"{mt}: cannot find the final norm: the modules after the last block "
                         f"({', '.join(final) or 'none'}) do not reproduce the model's last hidden state")
    _check_causal(base, probe, mt)
    # attention: the block child that receives the mask
    attention = next((n for n, m, a, kw, o in probe.inner if "." not in n and "attention_mask" in kw), None)
    if attention is None:
        attention = next((n for n, m, a, kw, o in probe.inner if "." not in n and "att" in type(m).__name__.lower()),
                         None)
    if attention is None:
        raise ValueError(f"{mt}: cannot find the attention module in {block_cls} (no child receives the attention "
                         f"mask); this tool needs transformer decoder blocks")
    attn_out = next(o for n, m, a, kw, o in probe.inner if n == attention)
    d = int(probe.block_out[0].shape[-1])
    mlp_out, d_ff = _mlp_out(probe, attention, d, mt, block_cls)
    for i, b in enumerate(blocks):
        try:
            b.get_submodule(mlp_out)
        except AttributeError:
            raise ValueError(f"{mt}: block {i} has no '{mlp_out}' (the MLP output projection of block 0)") from None
    entry = _mlp_entry(probe, attention, mlp_out)
    # parallel: the MLP's input does not depend on the attention output (it is computed from the block input)
    parallel = _parallel(probe, attention, entry)
    arch = Arch(mt, blocks_path, final, attention, mlp_out, entry, None, "rerun", "full", parallel, d_ff, d)
    for g in _post_mlp(probe, attention, mlp_out, entry):
        if _check_add(arch, blocks, probe, g):
            arch.post_mlp, arch.finish = g, "add"
            break
    else:
        arch.post_mlp, arch.finish = None, "rerun"
        arch.notes.append("block L is re-run in every product (its MLP output is not simply added to the residual)")
    attn_mod = blocks[-1].get_submodule(attention)
    attn_mod._entk_n_out = len(attn_out) if isinstance(attn_out, (tuple, list)) else 0
    for how in ("attention", "mlp"):
        if entry is None or (how == "attention" and _qkvo_kind(attn_mod) is None):
            continue
        arch.last = how
        arch.prepare(blocks[-1], last=True)
        if _check_last(arch, blocks, probe, how):
            break
    else:
        arch.last = "full"
    return arch


def _check_causal(base: nn.Module, probe: _Probe, mt: str) -> None:
    """Changing the last token must leave every earlier position's output unchanged."""
    ids = probe.ids.clone()
    ids[:, -1] = (ids[:, -1] + 1) % int(ids.max() + 2)
    with torch.no_grad():
        out = base(input_ids=ids.to(probe.out.device), use_cache=False).last_hidden_state
    if _rel(out[:, :-1], probe.out[:, :-1]) > _tol(out.dtype):
        raise ValueError(f"{mt}: not a causal decoder: earlier positions depend on later tokens (an encoder; "
                         f"BERT-like models need is_decoder=true in config.json)")


def _parallel(probe: _Probe, attention: str, entry: str | None) -> bool:
    """The MLP's input does not change when the attention output is perturbed: the block
    is parallel (GPT-NeoX, Falcon, Phi, GPT-J), not sequential."""
    if entry is None:
        return False
    ref = next((a[0] for n, m, a, kw, o in probe.inner if n == entry and a and torch.is_tensor(a[0])), None)
    if ref is None:
        return False
    blk = probe.blocks0
    seen: list[torch.Tensor] = []

    def perturb(m, a, o):
        t = o[0] if isinstance(o, (tuple, list)) else o
        t = t + torch.randn(t.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(t)
        return (t, *o[1:]) if isinstance(o, (tuple, list)) else t

    def record(m, a, kw):
        x = a[0] if a else next(v for v in kw.values() if torch.is_tensor(v))
        seen.append(x.detach().clone())

    h1 = blk.get_submodule(attention).register_forward_hook(perturb)
    h2 = blk.get_submodule(entry).register_forward_pre_hook(record, with_kwargs=True)
    h, args, kw = probe.block_in[0]
    try:
        with torch.no_grad():
            blk(h, *args, **kw)
    finally:
        h1.remove()
        h2.remove()
    return bool(seen) and seen[0].shape == ref.shape and torch.allclose(seen[0], ref)
