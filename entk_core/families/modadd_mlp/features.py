"""Ground-truth feature families of the modular-addition MLP (paper spec §4.4).

All families except ``readout`` have ``N = p**2`` rows in order ``a*p + b`` (see
:mod:`.fourier`).

The ``readout`` representation
------------------------------
The spec's readout family is "Fourier(sum − q) for every q": the second-layer
pre-activation feature that output logit ``q`` needs, ``cos/sin(2π k (a + b − q)/p)``.
On the ``N`` input rows alone, ``Fourier(s − q)`` is a fixed rotation of each
``(cos, sin)`` pair of ``Fourier(s)`` (``cos ω(s−q) = cos ωq cos ωs + sin ωq sin ωs``), so
for any single ``q`` (or all of them stacked) it spans exactly the ``sum`` subspace and
has the same phase-insensitive correlations: it adds nothing there. The finite
representation that does distinguish it lives on the class-major flattened index: a
``(p*N, K, 2)`` bank whose row ``q*N + n`` holds ``Fourier((a_n + b_n − q) mod p)``. It is
a ``2K``-dimensional subspace of ``R^{pN}``, to be compared with eigenvectors of the
``"flat"`` reduction of the MLP eNTK (``C = p`` output classes). Use
:func:`entk_core.families.features.families_with_rows` to keep only the families that
fit a given kernel.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from ...engine.measures import to_numpy
from ..base import FeatureFamily, seeded
from .fourier import check_freqs, fourier_bank, freq_labels, modadd_grid

__all__ = ["digit_bank", "modadd_families", "readout_bank"]


def digit_bank(v, p: int) -> np.ndarray:
    """One-hot indicators of integer values ``v`` (shape ``(N,)``): ``(N, p)``, column ``j`` = ``[v == j]``."""
    v = to_numpy(v, None).astype(np.int64).reshape(-1)
    out = np.zeros((v.size, p))
    out[np.arange(v.size), v % p] = 1.0
    return out


def readout_bank(p: int, freqs: Iterable[int] | None = None) -> np.ndarray:
    """The class-major readout bank ``(p*N, K, 2)``, ``N = p**2``.

    Row ``q*N + n`` holds ``Fourier((a_n + b_n − q) mod p)``: the feature output logit
    ``q`` reads from input ``n`` (see the module docstring for why this layout).
    """
    a, b = modadd_grid(p)
    s = a + b
    q = np.repeat(np.arange(p), p * p)  # class-major: q = row // N
    return fourier_bank(np.tile(s, p) - q, p, freqs)


def modadd_families(p: int, seed: int = 0, freqs: Iterable[int] | None = None) -> dict[str, FeatureFamily]:
    """Ground-truth feature families for modular addition mod ``p`` (spec §4.4).

    All families except ``readout`` have ``N = p**2`` rows in order ``a*p + b``.

    * ``a``, ``b``: Fourier of each input, ``(N, K, 2)`` (the paper's 'n' and 'm').
    * ``sum``, ``diff``: Fourier of ``(a + b) mod p`` and ``(a − b) mod p``.
    * ``readout``: class-major ``(p*N, K, 2)``, ``Fourier(a + b − q)`` in the block of
      output class ``q`` (compare with the ``"flat"`` kernel reduction only).
    * ``a_digit``, ``b_digit``, ``sum_digit``: one-hot indicators, ``(N, p)``.
    * ``random``: seeded Gaussian control with the shape of ``sum`` (``(N, K, 2)``).

    ``freqs`` restricts the Fourier families (default ``1 .. ⌊p/2⌋``); ``seed`` only
    affects ``random``.
    """
    ks = check_freqs(p, freqs)
    a, b = modadd_grid(p)
    N = p * p
    labels = freq_labels(ks)
    digit_labels = tuple(str(j) for j in range(p))

    def fam(name, bank, desc, lab=labels):
        return FeatureFamily(name=name, bank=bank, description=desc, labels=lab)

    g = seeded(seed)
    rnd = torch.randn((N, len(ks), 2), generator=g, dtype=torch.float64).numpy()
    return {
        "a": fam("a", fourier_bank(a, p, ks), "Fourier modes cos/sin(2πka/p) of the first input a (first-layer pre-activation)"),
        "b": fam("b", fourier_bank(b, p, ks), "Fourier modes cos/sin(2πkb/p) of the second input b (first-layer pre-activation)"),
        "sum": fam("sum", fourier_bank(a + b, p, ks), "Fourier modes of (a+b) mod p (first-layer activation)"),
        "diff": fam("diff", fourier_bank(a - b, p, ks), "Fourier modes of (a−b) mod p (first-layer activation)"),
        "readout": fam(
            "readout", readout_bank(p, ks),
            "Fourier modes of (a+b−q) mod p in the block of output class q; class-major, p·N rows "
            "(compare with the flattened kernel; on N rows it equals the sum subspace)",
        ),
        "a_digit": fam("a_digit", digit_bank(a, p), "one-hot indicator of a", tuple(f"a={j}" for j in digit_labels)),
        "b_digit": fam("b_digit", digit_bank(b, p), "one-hot indicator of b", tuple(f"b={j}" for j in digit_labels)),
        "sum_digit": fam("sum_digit", digit_bank(a + b, p), "one-hot indicator of (a+b) mod p",
                         tuple(f"a+b={j}" for j in digit_labels)),
        "random": fam("random", rnd, f"Gaussian random control (seed {seed}), same shape as sum",
                      tuple(f"r{j}" for j in range(len(ks)))),
    }
