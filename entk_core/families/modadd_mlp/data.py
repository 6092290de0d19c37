"""The modular-addition dataset: all ``p**2`` pairs ``(a, b)`` in row order ``a*p + b`` (the
order of ``torch.cartesian_prod(arange(p), arange(p))``), which every Fourier feature and
graph Laplacian of :mod:`.fourier` assumes; used by the MLP and the Transformer families.
"""
from __future__ import annotations

import torch

__all__ = ["modadd_onehot", "modadd_pairs"]


def modadd_pairs(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs for modular addition mod ``p``.

    Returns:
      ``pairs`` of shape ``(p*p, 2)`` (int64, row ``a*p + b`` holds ``(a, b)``) and
      ``labels`` of shape ``(p*p,)`` holding ``(a + b) mod p``.
    """
    if p < 2:
        raise ValueError(f"p must be at least 2, got {p}")
    pairs = torch.cartesian_prod(torch.arange(p), torch.arange(p))
    return pairs, (pairs[:, 0] + pairs[:, 1]) % p


def modadd_onehot(pairs: torch.Tensor, p: int) -> torch.Tensor:
    """Concatenated one-hots of ``a`` and ``b``: shape ``(N, 2p)``, float32."""
    x = torch.zeros(len(pairs), 2 * p)
    x[torch.arange(len(pairs)), pairs[:, 0]] = 1.0
    x[torch.arange(len(pairs)), p + pairs[:, 1]] = 1.0
    return x
