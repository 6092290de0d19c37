"""The LM eNTK operator (paper spec §6.3): matrix-free products with a tail-only recompute.

Notation (shapes are TransformerLens-style, ``N`` contexts, ``T`` positions, ``d`` =
``d_model``, ``V`` the vocabulary, ``P`` the number of selected parameters):

* ``r(θ)`` ``(N, d)``: the final-normed hidden state at the **last position** of every
  context (what ``model.model(ids).last_hidden_state[:, -1]`` returns), a function of the
  selected parameters θ of one module inside block ``L`` (default: the block's MLP output
  projection ``mlp.down_proj`` / ``mlp.c_proj``).
* ``J = ∂r/∂θ`` ``(N·d, P)``; ``K_r = J Jᵀ`` ``(N·d, N·d)``.
* ``U`` ``(V, d)``: the unembedding, logits ``= r Uᵀ``; ``A = (UᵀU)^{1/2}`` ``(d, d)``.
* ``K̃ = (I_N ⊗ A) K_r (I_N ⊗ A)`` ``(N·d, N·d)``.

**K̃ has exactly the nonzero spectrum of the full flattened logit eNTK**
``K_logit = (I_N ⊗ U) K_r (I_N ⊗ Uᵀ)`` ``(N·V, N·V)`` (not a class-traced reduction):
with ``B = (I⊗U) J`` and ``C = (I⊗A) J``, ``K_logit = B Bᵀ`` and ``K̃ = C Cᵀ``, and
``BᵀB = Jᵀ (I⊗UᵀU) J = Jᵀ (I⊗A²) J = CᵀC``; ``XXᵀ`` and ``XᵀX`` share their nonzero
eigenvalues. A K̃ eigenvector ``v`` maps to the logit-eNTK eigenvector
``(I⊗U A⁻¹) v`` (``U A⁻¹`` has orthonormal columns when ``UᵀU`` is invertible). The
compression is from ``V`` (262,144 for Gemma) to ``d`` (640) numbers per context.

**Vector layout: context-major.** A vector of length ``N·d`` is the row-major flattening
of an ``(N, d)`` array: index ``n·d + i`` (context ``n``, hidden unit ``i``). (The author's
code lays vectors out ``d``-major, ``x.view(d, N)``; the two differ by a fixed permutation,
which changes no eigenvalue and, after reshaping, no per-example score.)

**Tail-only recompute.** One forward pass per chunk of contexts caches, for all
positions, what enters the selected parameters (and the arguments the model passes to
the later blocks: rotary embeddings, attention masks). Each product then re-runs only
the network *after* the selected parameters, as the model's layout says
(:class:`~.arch.Arch`, found by :func:`~.arch.discover`):

* ``"linear"`` mode (the default parameters, the MLP output projection, an
  ``nn.Linear``/``Conv1D``): the module's output is linear in θ, ``o = x Wᵀ + b``, so
  ``J = J_tail · (x ⊗ ·)``: a VJP is one VJP of the tail at the cached output plus ``gᵀx``,
  a JVP is ``x uᵀ`` plus one JVP of the tail; the module's own forward is never
  recomputed. The tail from ``o`` is ``h = rest + g(o)`` with ``rest = h₀ − g(o₀)`` cached
  (layout finish ``"add"``; exact for sequential *and* parallel attention/MLP blocks, whose
  attention term is inside ``rest``), or block ``L`` re-run with ``o`` substituted
  (``"rerun"``);
* ``"block"`` mode (any ``--params``): block ``L`` is re-run from its cached input with θ
  substituted (``torch.func.functional_call``), then the tail;

and in both, the blocks after ``L`` run at every position (their keys/values feed the
last position), except the **last block, which runs for the last query position** as far
as the layout allows (:meth:`~.arch.Arch.last_query_block`); when ``L`` is the last block
only the last position is computed at all. All of this is exact (the tests compare it with
the full model to float64 round-off on every supported architecture); the author's
method, the full-model VJP + JVP, is :meth:`LMTail.full_vjp` / :meth:`LMTail.full_jvp`.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

with warnings.catch_warnings():
    # torch imports this on the first forward-mode AD call and it warns about its own
    # use of torch.jit.script (a torch-internal DeprecationWarning we cannot act on)
    warnings.simplefilter("ignore", DeprecationWarning)
    import torch._decomp.decompositions_for_jvp  # noqa: F401

from .arch import DROP_KWARGS, block_output, is_linear
from .models import LoadedLM

__all__ = ["LMTail", "KTildeOperator", "sqrt_gram", "auto_chunk"]

Params = dict[str, torch.Tensor]


def auto_chunk(lm: LoadedLM, layer: int, T: int, budget_bytes: float = 1.5e9) -> int:
    """Contexts per chunk so that one tail VJP keeps about ``budget_bytes`` of activations:
    roughly ``(12·d + 4·d_ff)`` floats per position per full block after ``layer``."""
    d, dff = lm.arch.d, lm.arch.d_ff
    full_blocks = max(1, lm.n_layers - 1 - layer)
    per_ctx = T * full_blocks * (12 * d + 4 * dff) * 4
    return int(max(1, min(128, budget_bytes // per_ctx)))


def sqrt_gram(U: torch.Tensor, rows: int = 16384) -> torch.Tensor:
    """``A = (UᵀU)^{1/2}`` ``(d, d)`` in float64 for ``U`` ``(V, d)``: ``UᵀU`` accumulated
    in float64 over row blocks, then ``eigh``, eigenvalues clamped at 0."""
    d = U.shape[1]
    G = torch.zeros(d, d, dtype=torch.float64, device=U.device)
    for i in range(0, U.shape[0], rows):
        blk = U[i:i + rows].double()
        G += blk.T @ blk
    w, Q = torch.linalg.eigh(G)
    return (Q * w.clamp_min(0).sqrt()) @ Q.T


class LMTail:
    """Cached activations and the tail of one (model, contexts, layer, parameters).

    Args:
      lm: the loaded model.
      input_ids: ``(N, T)`` token ids (no BOS; every context has the same length ``T``).
      layer: the block ``L`` holding the selected parameters.
      params: module or parameter path relative to the block (default: the MLP output
        projection, see :meth:`~.models.LoadedLM.resolve_params`).
      chunk: contexts per chunk (default :func:`auto_chunk`).
      progress: ``progress(done, total, message)`` during the capture pass.
      keep_tokens: also keep block ``L``'s output at every position,
        :attr:`token_acts` ``(N, T, d)`` (the activations a sparse autoencoder is trained on).

    Attributes (after construction):
      mode: ``"linear"`` or ``"block"`` (module docstring).
      param_names: block-relative names of the selected parameters.
      theta: ``{name: tensor}`` their current values (the primal point).
      n_params: ``P``.
      hidden_last: ``(N, d)`` block ``L``'s output at the last position (the PCA baseline's
        ``hidden_states[L + 1][:, -1]``).
      r0: ``(N, d)`` the final hidden state at the last position from the full forward.
      token_acts: ``(N, T, d)`` float32 on the CPU with ``keep_tokens``, else ``None``.
    """

    def __init__(self, lm: LoadedLM, input_ids: torch.Tensor, layer: int, params: str | None = None,
                 chunk: int | None = None, progress: Callable | None = None, keep_tokens: bool = False):
        self.lm, self.layer = lm, int(layer)
        self.block = lm.block(self.layer)
        self.module_path, self.param_names = lm.resolve_params(self.layer, params)
        self.module = self.block.get_submodule(self.module_path) if self.module_path else self.block
        self.blocks = lm.arch.blocks(lm.model)
        self.n_blocks = len(self.blocks)
        self.arch = lm.arch
        self.device = lm.device
        ids = torch.as_tensor(input_ids, dtype=torch.long)
        if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
            raise ValueError(f"input_ids must be (N, T) with N, T >= 1, got shape {tuple(ids.shape)}")
        vocab = lm.arch.unembedding(lm.model).shape[0]
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"token ids outside the model's vocabulary (0..{vocab - 1}): "
                             f"the probe set was not built with this tokenizer")
        self.input_ids = ids
        self.N, self.T = ids.shape
        self.d = lm.d_model
        linear = self.module_path == lm.arch.mlp_out and is_linear(self.module) and \
            set(self.param_names) <= {f"{self.module_path}.weight", f"{self.module_path}.bias"}
        self.mode = "linear" if linear else "block"
        self.theta: Params = {n: p.detach() for n, p in self.block.named_parameters() if n in self.param_names}
        self.n_params = sum(p.numel() for p in self.theta.values())
        self.chunk = int(chunk) if chunk else auto_chunk(lm, self.layer, self.T)
        self.slices = [slice(i, min(i + self.chunk, self.N)) for i in range(0, self.N, self.chunk)]
        self.rerun = self.mode == "block" or lm.arch.finish == "rerun"
        last = self.n_blocks - 1
        lm.arch.prepare(self.block, last=self.layer == last)
        lm.arch.prepare(self.blocks[last], last=True)
        self.token_acts: torch.Tensor | None = None
        self._capture(progress, keep_tokens)

    # ------------------------------------------------------------------ capture
    def _capture(self, progress: Callable | None, keep_tokens: bool) -> None:
        L, last = self.layer, self.n_blocks - 1
        # only the last position matters at all when the selected module's output is simply added in the last block
        keep_last = self.mode == "linear" and L == last and not self.rerun
        got: dict[str, Any] = {}
        hooks = []

        def keep(t: torch.Tensor) -> torch.Tensor:
            B = got["B"]
            if t.ndim == 2 and t.shape[0] == B * self.T:   # flattened positions (OPT)
                t = t.reshape(B, self.T, t.shape[-1])
            return (t[:, -1:] if keep_last else t).detach().clone()  # a copy: some blocks add to it in place

        def module_hook(m, args, out) -> None:
            got["x"], got["out0"] = keep(args[0]), keep(out)

        def output_hook(m, args, out) -> None:
            h = block_output(out)
            got["hidden_last"] = h[:, -1].detach().clone()
            if self.mode == "linear" and not self.rerun:
                got["rest"] = (h[:, -1:] if keep_last else h).detach() - self.arch.g(self.block, got["out0"])
            if keep_tokens:
                got["tokens"] = h.detach().float().cpu()

        if self.mode == "linear":
            hooks.append(self.module.register_forward_hook(module_hook))

        def block_pre(idx: int):
            def hook(m, args, kwargs):
                kw = {k: v for k, v in kwargs.items() if k not in DROP_KWARGS and (args or k != "hidden_states")}
                got[f"extra{idx}"] = (tuple(args[1:]), kw)
                if idx == L:
                    got["h_in"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
            return hook

        first_extra = L if self.rerun else L + 1
        for i in range(first_extra, self.n_blocks):
            hooks.append(self.blocks[i].register_forward_pre_hook(block_pre(i), with_kwargs=True))
        hooks.append(self.block.register_forward_hook(output_hook))

        self.cached: list[dict[str, Any]] = []
        hidden, r0, tokens = [], [], []
        base = self.arch.base(self.lm.model)
        try:
            for ci, sl in enumerate(self.slices):
                if progress:
                    progress(ci, len(self.slices), f"caching activations of block {L}: forward pass "
                                                   f"{ci + 1}/{len(self.slices)} ({sl.stop - sl.start} contexts)")
                got.clear()
                got["B"] = sl.stop - sl.start
                with torch.no_grad():
                    out = base(input_ids=self.input_ids[sl].to(self.device), use_cache=False)
                r0.append(out.last_hidden_state[:, -1].detach())
                hidden.append(got.pop("hidden_last"))
                if keep_tokens:
                    tokens.append(got.pop("tokens"))
                got.pop("B")
                self.cached.append(dict(got))
                if progress:
                    progress(ci + 1, len(self.slices), f"caching activations of block {L}")
        finally:
            for h in hooks:
                h.remove()
        self.hidden_last = torch.cat(hidden)
        self.r0 = torch.cat(r0)
        self.token_acts = torch.cat(tokens) if keep_tokens else None

    # ------------------------------------------------------------------ tails
    def _after_block(self, c: int, h: torch.Tensor) -> torch.Tensor:
        """``r`` ``(B, d)`` from block ``L``'s output ``h`` ``(B, T|1, d)``."""
        cached, last = self.cached[c], self.n_blocks - 1
        for i in range(self.layer + 1, last):
            args, kw = cached[f"extra{i}"]
            h = block_output(self.blocks[i](h, *args, **kw))
        if self.layer < last:
            args, kw = cached[f"extra{last}"]
            h = self.arch.last_query_block(self.blocks[last], h, args, kw)
        else:
            h = h[:, -1:]
        return self.arch.final(self.lm.model, h)[:, 0]

    def _tail_from_out(self, c: int, out: torch.Tensor) -> torch.Tensor:
        """Linear mode: ``r`` from the selected module's output ``out`` ``(B, T|1, d)``."""
        cached = self.cached[c]
        if self.rerun:
            args, kw = cached[f"extra{self.layer}"]
            h = self.arch.rerun_block(self.block, cached["h_in"], args, kw, out)
        else:
            h = cached["rest"] + self.arch.g(self.block, out)
        return self._after_block(c, h)

    def tail(self, c: int, theta: Params) -> torch.Tensor:
        """``r`` ``(B, d)`` of chunk ``c`` as a function of the selected parameters."""
        cached = self.cached[c]
        if self.mode == "linear":
            return self._tail_from_out(c, self._linear_out(cached["x"], theta))
        args, kw = cached[f"extra{self.layer}"]
        h = block_output(functional_call(self.block, theta, (cached["h_in"], *args), kw))
        return self._after_block(c, h)

    def _linear_out(self, x: torch.Tensor, theta: Params) -> torch.Tensor:
        """The selected module applied with ``theta`` (others from the module)."""
        rel = {n[len(self.module_path) + 1:]: v for n, v in theta.items()}
        return functional_call(self.module, rel, (x,))

    def _linear_tangent(self, x: torch.Tensor, u: Params) -> torch.Tensor:
        """``d out`` for a parameter tangent ``u``: ``x uWᵀ + ub`` (Linear) or ``x uW + ub`` (Conv1D)."""
        p = self.module_path
        out = None
        if f"{p}.weight" in u:
            W = u[f"{p}.weight"]
            out = x @ (W.T if isinstance(self.module, nn.Linear) else W)
        if f"{p}.bias" in u:
            out = u[f"{p}.bias"].expand(*x.shape[:-1], -1) if out is None else out + u[f"{p}.bias"]
        return out

    def _linear_cotangent(self, x: torch.Tensor, g: torch.Tensor) -> Params:
        """Parameter cotangent of an output cotangent ``g`` ``(B, T|1, d_out)``."""
        p = self.module_path
        gx = g.reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1])  # (d_out, d_in)
        res: Params = {}
        if f"{p}.weight" in self.theta:
            res[f"{p}.weight"] = gx if isinstance(self.module, nn.Linear) else gx.T
        if f"{p}.bias" in self.theta:
            res[f"{p}.bias"] = g.reshape(-1, g.shape[-1]).sum(0)
        return res

    # ------------------------------------------------------------------ products
    def vjp(self, z: torch.Tensor) -> Params:
        """``Jᵀ z`` for ``z`` ``(N, d)``: a dict shaped like :attr:`theta`."""
        z = z.to(self.device, self.r0.dtype)
        acc: Params | None = None
        for c, sl in enumerate(self.slices):
            if self.mode == "linear":
                cached = self.cached[c]
                _, fn = vjp(lambda o, c=c: self._tail_from_out(c, o), cached["out0"])
                g = self._linear_cotangent(cached["x"], fn(z[sl])[0])
            else:
                _, fn = vjp(lambda th, c=c: self.tail(c, th), self.theta)
                g = fn(z[sl])[0]
            acc = g if acc is None else {k: acc[k] + g[k] for k in acc}
        return acc

    def jvp(self, u: Params) -> torch.Tensor:
        """``J u`` ``(N, d)`` for a parameter tangent ``u`` shaped like :attr:`theta`."""
        out = torch.empty(self.N, self.d, dtype=self.r0.dtype, device=self.device)
        for c, sl in enumerate(self.slices):
            if self.mode == "linear":
                cached = self.cached[c]
                _, t = jvp(lambda o, c=c: self._tail_from_out(c, o), (cached["out0"],),
                           (self._linear_tangent(cached["x"], u),))
            else:
                _, t = jvp(lambda th, c=c: self.tail(c, th), (self.theta,), (u,))
            out[sl] = t
        return out

    def product(self, z: torch.Tensor) -> torch.Tensor:
        """``K_r z = J Jᵀ z`` for ``z`` ``(N, d)``."""
        return self.jvp(self.vjp(z))

    # ------------------------------------------------------ the author's method
    def _full(self, sl: slice, theta: Params) -> torch.Tensor:
        base = self.lm.arch.base(self.lm.model)
        prefix = self.lm.arch.block_prefix(self.lm.model, self.layer)
        named = {f"{prefix}.{n}": v for n, v in theta.items()}
        out = functional_call(base, named, (), {"input_ids": self.input_ids[sl].to(self.device), "use_cache": False})
        return out.last_hidden_state[:, -1]

    def _ref_slices(self, chunk: int | None) -> list[slice]:
        k = int(chunk or self.chunk)
        return [slice(i, min(i + k, self.N)) for i in range(0, self.N, k)]

    def full_vjp(self, z: torch.Tensor, chunk: int | None = None) -> Params:
        """``Jᵀ z`` through the whole model (embedding to final norm) for every chunk."""
        z = z.to(self.device, self.r0.dtype)
        acc: Params | None = None
        for sl in self._ref_slices(chunk):
            _, fn = vjp(lambda th, sl=sl: self._full(sl, th), self.theta)
            g = fn(z[sl])[0]
            acc = g if acc is None else {k: acc[k] + g[k] for k in acc}
        return acc

    def full_jvp(self, u: Params, chunk: int | None = None) -> torch.Tensor:
        """``J u`` through the whole model."""
        out = torch.empty(self.N, self.d, dtype=self.r0.dtype, device=self.device)
        for sl in self._ref_slices(chunk):
            _, t = jvp(lambda th, sl=sl: self._full(sl, th), (self.theta,), (u,))
            out[sl] = t
        return out

    def full_product(self, z: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        return self.full_jvp(self.full_vjp(z, chunk), chunk)

    def release(self) -> None:
        """Drop the cached activations (the arrays of a finished unit stay valid)."""
        self.cached = []


class KTildeOperator:
    """``w ↦ K̃ w = (I⊗A) J Jᵀ (I⊗A) w`` on flat context-major vectors of length ``N·d``.

    Args:
      tail: the :class:`LMTail`.
      A: ``(d, d)`` float64, default ``sqrt_gram(U)`` of the model's unembedding; pass
        ``torch.eye(d)`` for ``K_r`` itself.

    Calling the operator takes and returns float64 tensors ``(N·d,)``; the products run
    in the model's dtype (float32). ``calls`` counts the products.
    """

    def __init__(self, tail: LMTail, A: torch.Tensor | None = None):
        self.tail = tail
        U = tail.lm.arch.unembedding(tail.lm.model).detach()
        self.A = (sqrt_gram(U) if A is None else A.to(torch.float64)).to(tail.device)
        self.shape = (tail.N * tail.d, tail.N * tail.d)
        self.calls = 0

    @property
    def n(self) -> int:
        return self.shape[0]

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        t = self.tail
        W = w.reshape(t.N, t.d).to(t.device, torch.float64)
        z = (W @ self.A).to(t.r0.dtype)         # A is symmetric: rows (A w_n)ᵀ
        y = t.product(z).to(torch.float64) @ self.A
        self.calls += 1
        return y.reshape(-1).to(w.device)

    def logit_eigenvectors(self, V: torch.Tensor) -> torch.Tensor:
        """Map K̃ eigenvectors ``V`` ``(N·d, k)`` to eigenvectors of the flattened logit eNTK,
        ``(N·V, k)`` context-major (index ``n·V + c``): ``(I⊗U A⁻¹) v``. Only for tiny vocabularies."""
        t = self.tail
        U = t.lm.arch.unembedding(t.lm.model).detach().double()
        M = U @ torch.linalg.pinv(self.A)                # (V, d)
        k = V.shape[1]
        out = torch.einsum("vd,ndk->nvk", M, V.reshape(t.N, t.d, k))
        out = out.reshape(-1, k)
        return out / out.norm(dim=0, keepdim=True).clamp_min(math.ulp(1.0))
