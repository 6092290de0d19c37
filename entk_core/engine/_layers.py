"""Structured layer rules (a private module of :mod:`entk_core.engine`).

A :class:`Layer` is a module whose per-example Jacobian has a closed form in its input
``a`` and output cotangent ``g`` (see the "structured" method in
:mod:`entk_core.engine.kernels`):

* ``"linear"`` -- ``nn.Linear``, and GPT-2's ``Conv1D`` (a transposed weight);
* ``"conv"`` -- ``nn.Conv1d`` / ``nn.Conv2d`` (``groups=1``, zero padding): a Linear on the
  patches :func:`unfold_patches` cuts, one position per output pixel;
* ``"embedding"`` -- ``nn.Embedding`` (a Linear on one-hot inputs);
* ``"elementwise"`` -- the gains and biases of LayerNorm / RMSNorm modules (a diagonal
  Jacobian ``∂y/∂q``, read by one forward-mode product: :func:`elementwise_deriv`).

:func:`find_layers` picks the candidate layers of a model; :func:`check_layers` keeps the
ones whose rule agrees with autograd on a few examples (:func:`rule_gradients` against the
gradient of a random combination of outputs), so a weight also used outside its module, a
non-batch-first input or an unused layer falls back to the Jacobian path with a reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

__all__ = ["Layer", "check_layers", "elementwise_deriv", "find_layers", "rule_gradients", "unfold_patches"]


@dataclass
class Layer:
    """A module with a structured rule.

    ``kind``: ``"linear"`` (``nn.Linear``; GPT-2 ``Conv1D`` with ``transposed``), ``"conv"``
    (``nn.Conv1d``/``nn.Conv2d``: a Linear on unfolded patches), ``"embedding"`` or
    ``"elementwise"`` (LayerNorm / RMSNorm gains and biases: ``∂y/∂q`` is diagonal).
    ``n_in``/``n_out``: input width (patch size; vocabulary) and output width."""

    name: str
    module: nn.Module
    kind: str
    group: str
    w_name: str | None
    b_name: str | None
    n_in: int
    n_out: int
    positions: int = 1
    padding_idx: int | None = None
    form: str = "pair"
    transposed: bool = False
    conv: dict | None = None
    attrs: tuple[tuple[str, str], ...] = ()      # elementwise: ((attr, full name), ...)

    @property
    def merged_in(self) -> int:
        """Input width with the bias folded in as a constant-1 feature."""
        return self.n_in + (1 if (self.w_name and self.b_name) else 0)

    def param_names(self) -> list[str]:
        """The full names of the parameters the rule covers."""
        if self.kind == "elementwise":
            return [full for _, full in self.attrs]
        return [nm for nm in (self.w_name, self.b_name) if nm]

    def describe(self) -> dict:
        """``{"rule", "form", "positions"}`` for :class:`~entk_core.engine.info.KernelInfo`."""
        rule = {"linear": "Conv1D" if self.transposed else "Linear",
                "conv": f"Conv{self.conv['dims']}d" if self.conv else "Conv",
                "embedding": "Embedding", "elementwise": "elementwise (norm)"}[self.kind]
        return {"rule": rule, "form": self.form, "positions": int(self.positions)}


def _conv_setup(mod: nn.Module) -> dict | None:
    if isinstance(mod, nn.Conv2d) and type(mod).forward is nn.Conv2d.forward:
        dims = 2
    elif isinstance(mod, nn.Conv1d) and type(mod).forward is nn.Conv1d.forward:
        dims = 1
    else:
        return None
    if mod.groups != 1 or mod.padding_mode != "zeros":
        return None
    k, d, s = tuple(mod.kernel_size), tuple(mod.dilation), tuple(mod.stride)
    pad = mod.padding
    if pad == "valid":
        pad = (0,) * dims
    elif pad == "same":
        tot = [di * (ki - 1) for di, ki in zip(d, k)]
        if any(t % 2 for t in tot):
            return None
        pad = tuple(t // 2 for t in tot)
    pad = tuple(int(p) for p in pad)
    return {"dims": dims, "kernel": k, "dilation": d, "padding": pad, "stride": s}


def unfold_patches(L: Layer, a: torch.Tensor) -> torch.Tensor:
    """Conv input ``(B, C_in, *spatial)`` -> patches ``(B, T, C_in·k...)`` (row-major like
    the weight's ``(C_in, *kernel)`` flattening; ``T`` output positions, row-major).

    Built from strided windows (``Tensor.unfold``) and one copy: several times faster on
    the CPU than ``F.unfold`` (im2col)."""
    c = L.conv
    dims = c["dims"]
    pad = []
    for p in reversed(c["padding"]):
        pad += [p, p]
    ap = F.pad(a, pad) if any(c["padding"]) else a
    B, Cin = a.shape[0], a.shape[1]
    v = ap
    for i in range(dims):
        k, d, st = c["kernel"][i], c["dilation"][i], c["stride"][i]
        v = v.unfold(2 + i, d * (k - 1) + 1, st)
    if any(d > 1 for d in c["dilation"]):
        v = v[(Ellipsis,) + tuple(slice(None, None, d) for d in c["dilation"])]
    # v: (B, C_in, *out_spatial, *kernel)
    out_sp = v.shape[2:2 + dims]
    perm = [0] + list(range(2, 2 + dims)) + [1] + list(range(2 + dims, 2 + 2 * dims))
    return v.permute(perm).reshape(B, int(math.prod(out_sp)), Cin * int(math.prod(c["kernel"])))


def _is_norm(mod: nn.Module) -> bool:
    if isinstance(mod, nn.LayerNorm) or (hasattr(nn, "RMSNorm") and isinstance(mod, nn.RMSNorm)):
        return True
    name = type(mod).__name__
    return name.endswith(("RMSNorm", "LayerNorm")) and not list(mod.children())


def _is_gpt2_conv1d(mod: nn.Module) -> bool:
    w = getattr(mod, "weight", None)
    return (type(mod).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.ndim == 2
            and int(getattr(mod, "nf", -1)) == w.shape[1] and not list(mod.children()))


# ------------------------------------------------------------------ candidates
def find_layers(model: nn.Module, names: list[str], group_of: dict[str, str]) -> tuple[list[Layer], dict[str, str]]:
    """The candidate structured layers owning the parameters ``names`` of ``model``, and
    ``{parameter: reason}`` for those that cannot have a rule (tied weights, grouped
    convolutions). Parameters of other modules are in neither: they have no rule."""
    named = dict(model.named_parameters())
    reject: dict[str, str] = {}
    usage: dict[int, list] = {}
    for mod in model.modules():
        for attr, p in mod._parameters.items():
            if p is not None:
                usage.setdefault(id(p), []).append((mod, attr))
    modname = {id(m): n for n, m in model.named_modules()}
    chosen: dict[int, Layer] = {}
    for n in names:
        p = named[n]
        uses = usage.get(id(p), [])
        if len(uses) != 1:
            reject[n] = "parameter shared between modules (tied weights)"
            continue
        mod, attr = uses[0]
        mname = modname.get(id(mod), "")
        g = group_of[n]
        if isinstance(mod, nn.Linear) and type(mod).forward is nn.Linear.forward and attr in ("weight", "bias"):
            L = chosen.get(id(mod)) or chosen.setdefault(id(mod), Layer(mname, mod, "linear", g, None, None,
                                                                        mod.in_features, mod.out_features))
        elif _is_gpt2_conv1d(mod) and attr in ("weight", "bias"):
            L = chosen.get(id(mod)) or chosen.setdefault(id(mod), Layer(
                mname, mod, "linear", g, None, None, mod.weight.shape[0], mod.weight.shape[1], transposed=True))
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d)) and attr in ("weight", "bias"):
            setup = _conv_setup(mod)
            if setup is None:
                reject[n] = "convolution with groups, a non-zero padding mode or a custom forward"
                continue
            L = chosen.get(id(mod)) or chosen.setdefault(id(mod), Layer(
                mname, mod, "conv", g, None, None, int(math.prod(mod.weight.shape[1:])), mod.out_channels,
                conv=setup))
        elif (isinstance(mod, nn.Embedding) and type(mod).forward is nn.Embedding.forward and attr == "weight"
              and mod.max_norm is None and not mod.scale_grad_by_freq):
            chosen[id(mod)] = Layer(mname, mod, "embedding", g, n, None, mod.num_embeddings, mod.embedding_dim,
                                    padding_idx=mod.padding_idx)
            continue
        elif _is_norm(mod) and attr in ("weight", "bias"):
            L = chosen.get(id(mod)) or chosen.setdefault(id(mod), Layer(mname, mod, "elementwise", g, None, None,
                                                                        1, p.numel()))
            L.attrs = L.attrs + ((attr, n),)
        else:
            continue
        if attr == "weight":
            L.w_name = n
        else:
            L.b_name = n
    return list(chosen.values()), reject


# ---------------------------------------------------------------------- checks
def _calls_cover(L: Layer, calls: list, b: int) -> tuple[bool, int]:
    """Whether every recorded call ``(input, version, output)`` of ``L`` on ``b`` examples
    is one the rule covers, and the positions per example over all calls."""
    good = True
    T = 0
    for a, _, y in calls:
        if not (isinstance(y, torch.Tensor) and a.ndim >= 1 and a.shape[0] == b and y.ndim >= 1 and y.shape[0] == b):
            good = False
            continue
        if L.kind == "linear":
            good &= (a.ndim >= 2 and y.shape[:-1] == a.shape[:-1] and y.shape[-1] == L.n_out
                     and a.shape[-1] == L.n_in and a.is_floating_point())
            T += math.prod(a.shape[1:-1])
        elif L.kind == "conv":
            good &= (a.ndim == 2 + L.conv["dims"] and a.shape[1] * math.prod(L.conv["kernel"]) == L.n_in
                     and y.ndim == a.ndim and y.shape[1] == L.n_out and a.is_floating_point())
            T += math.prod(y.shape[2:])
        elif L.kind == "embedding":
            good &= tuple(y.shape[:-1]) == tuple(a.shape)
            T += math.prod(a.shape[1:])
        else:
            ok = y.shape == a.shape and a.is_floating_point()
            for attr, _ in L.attrs:
                q = getattr(L.module, attr)
                ok = ok and q is not None and y.ndim > q.ndim and tuple(y.shape[y.ndim - q.ndim:]) == tuple(q.shape)
            good &= ok
            if ok:
                q = getattr(L.module, L.attrs[0][0])
                T += math.prod(y.shape[1:y.ndim - q.ndim])
    return good, T


def check_layers(layers: list[Layer], rec: list[list], outf: torch.Tensor, params: dict[str, torch.Tensor],
                 shapes: dict[str, tuple[int, ...]], base: dict[str, torch.Tensor],
                 dtype: torch.dtype) -> dict[int, str]:
    """``{id(layer): reason}`` of the layers whose rule cannot be used, from one forward of
    ``b`` examples: ``rec`` holds each layer's calls ``(input, version, output)``, ``outf`` the
    outputs ``(b, C)`` (still attached to the graph), ``params`` the parameters that forward
    used (those of the layers as leaves needing grad). Sets each layer's ``positions``.

    A layer fails when a call is not one its rule covers (not batch-first, wrong shapes),
    when it is unused, or when its rule's gradient of ``⟨r, f⟩`` for a random ``r`` differs
    from autograd's (relative 1e-9 in float64, 1e-4 in float32)."""
    b = outf.shape[0]
    bad: dict[int, str] = {}
    for L, calls in zip(layers, rec):
        good, T = _calls_cover(L, calls, b)
        L.positions = max(1, T)
        if not good or not calls:
            bad[id(L)] = "layer applied to inputs the rule does not cover (not batch-first, or unused)" \
                if calls else "layer not used by the forward pass"
    # gradient check: a random combination of outputs through autograd vs the rule
    pnames = [nm for L in layers for nm in L.param_names()]
    gen = torch.Generator(device="cpu").manual_seed(12345)
    r = torch.randn(outf.shape, generator=gen, dtype=torch.float64).to(outf)
    ys = [y for L, calls in zip(layers, rec) if id(L) not in bad for (_, _, y) in calls]
    with torch.enable_grad():
        grads = torch.autograd.grad(outf, ys + [params[n] for n in pnames], r, allow_unused=True)
    gy, gp = list(grads[: len(ys)]), dict(zip(pnames, grads[len(ys):]))
    tol = {torch.float64: 1e-9, torch.float32: 1e-4}.get(dtype, 1e-2)
    k = 0
    for L, calls in zip(layers, rec):
        if id(L) in bad:
            continue
        recon: dict[str, torch.Tensor | None] = {}
        for a, _, y in calls:
            g = gy[k]
            k += 1
            if g is None:
                continue
            for name, val in rule_gradients(L, a.detach(), g.detach(), shapes, base).items():
                recon[name] = val if recon.get(name) is None else recon[name] + val
        for name in L.param_names():
            true_g, rec_g = gp[name], recon.get(name)
            tn = 0.0 if true_g is None else float(true_g.norm())
            rn = 0.0 if rec_g is None else float(rec_g.norm())
            if true_g is None or rec_g is None:
                ok = tn == 0.0 and rn == 0.0
            else:
                # norm modules may compute in float32 whatever the weights' dtype
                # (transformers' Llama/Gemma RMSNorms): their rule can only agree with
                # autograd to float32 precision
                t = max(tol, 1e-5) if L.kind == "elementwise" else tol
                ok = rec_g.shape == true_g.shape and float((rec_g - true_g).norm()) <= t * max(tn, 1e-30)
            if not ok:
                bad[id(L)] = "the structured rule disagrees with autograd (the parameter is also used " \
                             "outside its module, or the module computes something else)"
    return bad


# ----------------------------------------------------------------------- rules
def rule_gradients(L: Layer, a: torch.Tensor, g: torch.Tensor, shapes: dict[str, tuple[int, ...]],
                   base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The gradient of ``⟨g, y⟩`` w.r.t. the layer's parameters by the structured rule, for
    one call with input ``a`` and output cotangent ``g`` (``shapes``: parameter shapes;
    ``base``: parameter values, for elementwise layers)."""
    out: dict[str, torch.Tensor] = {}
    if L.kind in ("linear", "conv"):
        if L.kind == "conv":
            A = unfold_patches(L, a).reshape(-1, L.n_in)
            G = g.reshape(g.shape[0], L.n_out, -1).transpose(1, 2).reshape(-1, L.n_out)
        else:
            A, G = a.reshape(-1, L.n_in), g.reshape(-1, L.n_out)
        if L.w_name:
            W = (A.T @ G) if L.transposed else (G.T @ A)
            out[L.w_name] = W.reshape(shapes[L.w_name])
        if L.b_name:
            out[L.b_name] = G.sum(0).reshape(shapes[L.b_name])
    elif L.kind == "embedding":
        tok = a.reshape(-1)
        g2 = g.reshape(-1, L.n_out)
        if L.padding_idx is not None:
            g2 = g2 * (tok != L.padding_idx).to(g2.dtype)[:, None]
        out[L.w_name] = torch.zeros(L.n_in, L.n_out, dtype=g2.dtype, device=g2.device).index_add_(0, tok, g2)
    else:
        for attr, full in L.attrs:
            D = elementwise_deriv(L, base, attr, a)
            q = shapes[full]
            out[full] = (g * D).reshape(-1, *q).sum(0)
    return out


def elementwise_deriv(L: Layer, base: dict[str, torch.Tensor], attr: str, a: torch.Tensor) -> torch.Tensor:
    """``∂y/∂q · 1`` for an elementwise parameter ``q`` (attribute ``attr`` of the layer's
    module; ``y``'s shape) at input ``a``: by forward mode."""
    own = {at: base[fn] for at, fn in L.attrs}
    q0 = own[attr]

    def f(q):
        return functional_call(L.module, {**own, attr: q}, (a,))

    with torch.no_grad():
        _, D = jvp(f, (q0,), (torch.ones_like(q0),))
    return D
