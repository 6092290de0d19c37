"""What an eNTK direction does: its effect on the next-token logits, and how concentrated
its per-context scores are on one tag.

**Logit effect.** Eigenvector ``i`` of K̃, reshaped to ``E_i`` ``(N, d)``, has the rank-1
summary ``E_i ≈ σ u vᵀ`` (:func:`.evaluation.example_scores`). The operator's eigenvector
map (:class:`~.operator.KTildeOperator`) sends a K̃ eigenvector to the eigenvector
``(I ⊗ U A⁻¹) E_i`` of the flattened logit eNTK, so context ``n``'s logit-space component is
``σ u_n · (U A⁻¹ v)``: every context moves its logits along the same vocabulary vector
``ℓ = U A⁻¹ v`` ``(V,)``, scaled by its score. ``ℓ`` has unit norm when ``UᵀU`` is invertible
(``U A⁻¹`` has orthonormal columns). The **promoted** tokens of the direction are the
largest entries of ``ℓ``, the **suppressed** ones the most negative: what contexts with a
*positive* score are pushed towards and away from (a negative score reverses them). The
sign of ``v`` is the one of :func:`.evaluation.example_scores` (the largest ``|u_n|`` is
positive).

**Tag concentration.** Of the ``n`` contexts with the highest score (and, separately, the
``n`` with the lowest), the share that carry the most common tag, with ``n`` the number of
contexts per tag in the probe set (64 at N = 512): 1.0 means one side of the direction is
one tag, ``1/len(tags)`` is chance.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["logit_effects", "inverse_sqrt_gram", "tag_concentration"]


def inverse_sqrt_gram(A: torch.Tensor, rcond: float = 1e-10) -> torch.Tensor:
    """``A⁻¹`` (pseudo-inverse) of the symmetric PSD ``A = (UᵀU)^{1/2}``, in float64."""
    w, Q = torch.linalg.eigh(A.double())
    keep = w > rcond * w.max().clamp_min(1e-300)
    inv = torch.where(keep, 1.0 / w.clamp_min(1e-300), torch.zeros_like(w))
    return (Q * inv) @ Q.T


def logit_effects(U: torch.Tensor, A: torch.Tensor, directions: np.ndarray, top: int = 20,
                  rows: int = 65536) -> dict[str, np.ndarray]:
    """Top ``top`` promoted and suppressed vocabulary entries of ``ℓ_i = U A⁻¹ v_i`` for
    every direction ``v_i`` (rows of ``directions`` ``(k, d)``).

    Returns ``promoted_ids``/``suppressed_ids`` ``(k, top)`` int64 and
    ``promoted_effect``/``suppressed_effect`` ``(k, top)`` float64 (descending /
    ascending), computed over row blocks of ``U`` ``(V, d)`` so that a 262,144-token
    vocabulary needs no ``(V, k)`` float64 copy of ``U``."""
    Vd = torch.as_tensor(np.asarray(directions, dtype=np.float64)).to(U.device)       # (k, d)
    M = inverse_sqrt_gram(A).to(U.device) @ Vd.T                                       # (d, k)
    k = Vd.shape[0]
    top = min(top, U.shape[0])
    best_v = torch.full((k, 0), 0.0, dtype=torch.float64, device=U.device)
    best_i = torch.zeros((k, 0), dtype=torch.long, device=U.device)
    worst_v, worst_i = best_v.clone(), best_i.clone()
    for r0 in range(0, U.shape[0], rows):
        eff = (U[r0:r0 + rows].double() @ M).T                                        # (k, rows)
        ids = torch.arange(r0, r0 + eff.shape[1], device=U.device).expand(k, -1)
        v = torch.cat([best_v, eff], 1)
        i = torch.cat([best_i, ids], 1)
        t = v.topk(min(top, v.shape[1]), dim=1)
        best_v, best_i = t.values, i.gather(1, t.indices)
        v = torch.cat([worst_v, eff], 1)
        i = torch.cat([worst_i, ids], 1)
        t = v.topk(min(top, v.shape[1]), dim=1, largest=False)
        worst_v, worst_i = t.values, i.gather(1, t.indices)
    return {"promoted_ids": best_i.cpu().numpy(), "promoted_effect": best_v.cpu().numpy(),
            "suppressed_ids": worst_i.cpu().numpy(), "suppressed_effect": worst_v.cpu().numpy()}


def tag_concentration(scores: np.ndarray, tags: Sequence[str], n: int | None = None) -> list[dict[str, Any]]:
    """Per direction (rows of ``scores`` ``(k, N)``): for its ``n`` highest and ``n``
    lowest contexts, the most common tag and its share. ``n`` defaults to the size of the
    smallest tag class. ``"share"`` is the larger of the two sides."""
    tags = list(tags)
    counts = Counter(tags)
    n = int(n or min(counts.values()))
    out = []
    for row in np.asarray(scores, dtype=np.float64):
        order = np.argsort(-row, kind="stable")
        sides = {}
        for side, idx in (("positive", order[:n]), ("negative", order[::-1][:n])):
            c = Counter(tags[i] for i in idx).most_common(1)[0]
            sides[side] = {"tag": c[0], "share": c[1] / n}
        best = max(sides, key=lambda s: sides[s]["share"])
        out.append({"n": n, "chance": max(counts.values()) / len(tags), **sides, "side": best,
                    "tag": sides[best]["tag"], "share": sides[best]["share"]})
    return out
