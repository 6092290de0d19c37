"""A TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse
autoencoders") trained in-tool on one layer's activations: the SAE baseline of ``lm-align``.

**Data.** The layer's output (the residual stream after block ``L``, the activations PCA
and ICA see at the last position) at *every* token of the probe windows, not only at the
probes' last positions: ``N × (T − 1)`` vectors (65,536 at N = 1,024), the first position
of each window left out (with no BOS it is an attention sink with an outlying norm).
They are centred and scaled to unit mean squared norm per dimension; 5 % is held out.

**Model.** ``z = TopK(W_enc (x − b_dec) + b_enc)`` (the ``k`` largest pre-activations,
then ReLU), ``x̂ = W_dec z + b_dec`` with unit-norm dictionary rows, ``W_enc`` initialised
to ``W_decᵀ``; the loss is the normalised MSE plus the AuxK loss (the residual
reconstructed from the top ``2k`` *dead* latents, weight 1/32) that revives latents not
fired for a whole epoch. Adam, a fixed learning rate, seeded init and shuffles.

**Convergence.** Training stops when the held-out fraction of variance unexplained (FVU)
improves by less than ``tol`` (relative) over an epoch (``converged: true``), or at
``epochs`` / ``budget_s`` (``converged: false``); the FVU is reported either way.

**Scores.** For a probe set the scores of latent ``j`` are its encoder pre-activations on
the probes' last-position activations (the latent's linear read-out, continuous like a
PCA score; the TopK output is zero for most contexts). The same-budget ``sae`` baseline
uses the ``k_budget`` latents with the most energy (mean squared activation over the
training tokens); ``sae_full`` uses the whole dictionary.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["SAEOptions", "train_sae", "sae_scores"]


@dataclass(frozen=True)
class SAEOptions:
    """Options of the TopK SAE (defaults sized for Gemma-3-270M on 2 cores: about 1-2 min).

    Attributes:
      latents: dictionary size.
      k: active latents per token.
      epochs: at most this many passes over the tokens.
      batch: tokens per step.
      lr: Adam learning rate (on Gemma-3-270M's layer 16, 16k tokens, 4 epochs: held-out FVU
        0.394 at 1e-3, 0.308 at 3e-3, 0.294 at 1e-2 but with 60 % dead latents).
      tol: convergence: stop when an epoch improves the held-out FVU by less than this (relative).
      seed: init, shuffles and the held-out split.
      budget_s: stop after this many seconds of training (``None``: no limit).
    """

    latents: int = 4096
    k: int = 32
    epochs: int = 20
    batch: int = 1024
    lr: float = 3e-3
    tol: float = 0.01
    seed: int = 0
    budget_s: float | None = 170.0

    def check(self) -> None:
        if self.latents < 1 or self.k < 1 or self.k > self.latents:
            raise ValueError(f"SAE: need 1 <= k ({self.k}) <= latents ({self.latents})")
        if self.epochs < 1 or self.batch < 1 or not self.lr > 0 or not self.tol >= 0:
            raise ValueError("SAE: epochs, batch and lr must be positive")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _TopK(torch.nn.Module):
    def __init__(self, d: int, n: int, k: int, gen: torch.Generator):
        super().__init__()
        W = torch.randn(n, d, generator=gen)
        W /= W.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(W)
        self.W_enc = torch.nn.Parameter(W.T.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(n))
        self.b_dec = torch.nn.Parameter(torch.zeros(d))
        self.k = k

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def decode(self, idx: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(idx, self.W_dec, per_sample_weights=val, mode="sum") + self.b_dec

    def forward(self, x: torch.Tensor):
        pre = self.pre(x)
        top = pre.topk(self.k, dim=1)
        val = top.values.relu()
        return self.decode(top.indices, val), pre, top.indices, val


def _fvu(model: _TopK, X: torch.Tensor, batch: int = 8192) -> float:
    err = tot = 0.0
    mu = X.mean(0)
    with torch.no_grad():
        for i in range(0, X.shape[0], batch):
            x = X[i:i + batch]
            err += float(((model(x)[0] - x) ** 2).sum())
            tot += float(((x - mu) ** 2).sum())
    return err / max(tot, 1e-30)


def train_sae(acts: torch.Tensor, options: SAEOptions = SAEOptions(),
              progress: Callable[[int, int, str], None] | None = None,
              cancel: Callable[[], bool] | None = None, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train on ``acts`` ``(M, d)`` (float32) on ``device`` (the shuffles and the init are
    drawn on the CPU, so a seed gives the same draws everywhere). Returns ``{"model", "mean", "scale",
    "energy" (latents,), "fired" (latents,), "meta": {...}}``; ``meta`` has ``fvu``
    (held-out), ``train_fvu``, ``converged``, ``epochs``, ``steps``, ``dead_fraction``,
    ``tokens``, ``seconds`` and the options."""
    options.check()
    t0 = time.perf_counter()
    X = torch.as_tensor(acts, dtype=torch.float32).reshape(-1, acts.shape[-1])
    if X.shape[0] < 32 or not torch.isfinite(X).all():
        raise ValueError(f"SAE: {X.shape[0]} finite activation vectors are too few to train on")
    gen = torch.Generator().manual_seed(options.seed)
    mean = X.mean(0)
    scale = float(((X - mean) ** 2).mean().sqrt().clamp_min(1e-12))
    X = ((X - mean) / scale).to(device)
    perm = torch.randperm(X.shape[0], generator=gen).to(device)
    n_val = max(1, X.shape[0] // 20)
    Xv, Xt = X[perm[:n_val]], X[perm[n_val:]]
    d, n = X.shape[1], min(options.latents, 1 << 20)
    k = min(options.k, n)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        model = _TopK(d, n, k, gen).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=options.lr)
    last_fired = torch.zeros(n, dtype=torch.long, device=device)
    step, dead_after = 0, max(1, Xt.shape[0] // options.batch)
    history: list[float] = []
    converged, stopped = False, "epochs"
    k_aux = min(2 * k, n)
    said = time.perf_counter()
    for epoch in range(options.epochs):
        order = torch.randperm(Xt.shape[0], generator=gen).to(device)
        for i in range(0, Xt.shape[0], options.batch):
            x = Xt[order[i:i + options.batch]]
            recon, pre, idx, val = model(x)
            e = x - recon
            loss = (e ** 2).sum(1).mean() / (x ** 2).sum(1).mean().clamp_min(1e-12)
            step += 1
            last_fired[idx[val > 0].unique()] = step
            dead = (step - last_fired) > dead_after
            if bool(dead.any()):
                pd = pre.masked_fill(~dead, float("-inf")).topk(min(k_aux, int(dead.sum())), dim=1)
                ea = model.decode(pd.indices, pd.values.relu()) - model.b_dec
                ed = e.detach()
                loss = loss + ((ed - ea) ** 2).sum(1).mean() / (ed ** 2).sum(1).mean().clamp_min(1e-12) / 32
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.W_dec /= model.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
            if cancel is not None and cancel():
                raise KeyboardInterrupt("cancelled")
            if progress and time.perf_counter() - said >= 5.0:  # never silent within a long epoch
                said = time.perf_counter()
                progress(epoch, options.epochs, f"SAE epoch {epoch + 1}: {i // options.batch + 1}/"
                                                f"{math.ceil(Xt.shape[0] / options.batch)} batches")
        fvu = _fvu(model, Xv)
        history.append(fvu)
        if progress:
            progress(epoch + 1, options.epochs, f"SAE epoch {epoch + 1}: held-out FVU {fvu:.3f}")
        if len(history) > 1 and history[-2] - fvu < options.tol * history[-2]:
            converged, stopped = True, "plateau"
            break
        if options.budget_s is not None and time.perf_counter() - t0 > options.budget_s:
            stopped = "time budget"
            break
    energy = torch.zeros(n, dtype=torch.float64, device=device)
    fired = torch.zeros(n, dtype=torch.long, device=device)
    with torch.no_grad():
        for i in range(0, Xt.shape[0], 8192):
            _, _, idx, val = model(Xt[i:i + 8192])
            energy.index_add_(0, idx.reshape(-1), (val.double() ** 2).reshape(-1))
            fired.index_add_(0, idx.reshape(-1), (val > 0).long().reshape(-1))
    energy /= Xt.shape[0]
    fvu = history[-1] if history else float("nan")
    meta = {"fvu": fvu, "train_fvu": _fvu(model, Xt[:65536]), "converged": converged, "stopped": stopped,
            "epochs": len(history), "steps": step, "history": history, "tokens": int(X.shape[0]),
            "dead_fraction": float((fired == 0).double().mean()), "seconds": time.perf_counter() - t0,
            "options": options.to_json()}
    if not math.isfinite(fvu):
        meta["converged"] = False
    return {"model": model, "mean": mean.to(device), "scale": scale, "energy": energy.cpu().numpy(),
            "fired": fired.cpu().numpy(), "meta": meta}


def sae_scores(trained: dict[str, Any], H: np.ndarray | torch.Tensor) -> np.ndarray:
    """Encoder pre-activations ``(latents, N)`` of the activations ``H`` ``(N, d)``."""
    model = trained["model"]
    x = (torch.as_tensor(np.asarray(H), dtype=torch.float32).to(trained["mean"].device) - trained["mean"]) / \
        trained["scale"]
    with torch.no_grad():
        return model.pre(x).T.double().cpu().numpy()
