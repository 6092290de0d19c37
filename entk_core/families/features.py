"""Ground-truth feature families (paper spec §3.6, §4.4, §5.4).

Everything here is pure numpy (torch tensors are accepted as inputs) and returns
``float64`` arrays.

Conventions
-----------
* **Modular-arithmetic row order.** Every modular-arithmetic family is evaluated on all
  ``N = p**2`` pairs in row order ``i = a*p + b`` (``a = i // p``, ``b = i % p``), the
  order of :func:`entk_core.families.data.modadd_pairs` and of the graph Laplacians in
  :mod:`entk_core.engine.measures`.
* **Fourier banks** have shape ``(N, K, 2)``: ``bank[:, j, 0] = cos(2π k_j v / p)`` and
  ``bank[:, j, 1] = sin(2π k_j v / p)`` for the frequencies ``k_j`` (default
  ``1 .. ⌊p/2⌋``). ``FeatureFamily.matrix`` flattens them to ``(N, 2K)`` in the order
  ``[cos k_1, sin k_1, cos k_2, ...]``. For even ``p`` the sine column of ``k = p/2`` is
  identically zero; the alignment code drops such numerically zero directions.
* **Plain families** have shape ``(N, K)``: one feature vector per column.
* **Flattened (class-major) families** (TMS indicators, the MLP ``readout`` family)
  have ``C*N`` rows, row ``c*N + n`` = (output class ``c``, input ``n``), matching the
  ``"flat"`` kernel reduction.

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
:func:`families_with_rows` to keep only the families that fit a given kernel.

Key-frequency rule (:func:`key_frequencies`)
--------------------------------------------
``P_k`` = mean over the ``d`` embedding columns of ``|FFT_k|² + |FFT_{p−k}|²`` of the
token embedding rows ``0 .. p−1`` (``k = 1 .. ⌊p/2⌋``; ``k = p/2`` counted once). Sort
the powers in descending order, ``P_(1) >= P_(2) >= ...``, and look at the log-gaps
``g_m = log(P_(m) / P_(m+1))`` for ``m = 1 .. M`` with ``M = max_freqs`` (default
``max(1, ⌊K/2⌋)``: key frequencies are *sparse*). The key frequencies are the top
``m* = argmax g_m`` frequencies (first ``m`` on ties) when that drop is sharp,
``P_(m*) / P_(m*+1) >= min_ratio`` (default 3). Fallback when no drop is that sharp:
the frequencies whose power exceeds ``median + 5·MAD`` of all powers (robust outliers;
at most ``M``, strongest first); if there is none, the single strongest frequency. The
result is returned in increasing frequency order; :func:`detect_key_frequencies` also
reports which branch fired.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from ..engine.measures import to_numpy
from .base import FeatureFamily, seeded

__all__ = [
    "fourier_bank",
    "default_freqs",
    "modadd_grid",
    "modadd_families",
    "readout_bank",
    "digit_bank",
    "transformer_families",
    "embedding_fourier_power",
    "KeyFrequencies",
    "detect_key_frequencies",
    "key_frequencies",
    "tms_feature_vectors",
    "concat_families",
    "families_with_rows",
]


def default_freqs(p: int) -> list[int]:
    """The default frequencies ``1 .. ⌊p/2⌋``."""
    return list(range(1, p // 2 + 1))


def _check_freqs(p: int, freqs: Iterable[int] | None) -> list[int]:
    if freqs is None:
        return default_freqs(p)
    out = [int(k) for k in freqs]
    if not out:
        raise ValueError("need at least one frequency")
    for k in out:
        if k % p == 0:
            raise ValueError(f"frequency {k} is the constant mode mod p={p}")
    return out


def fourier_bank(v, p: int, freqs: Iterable[int] | None = None) -> np.ndarray:
    """Fourier features of integer values ``v`` (shape ``(N,)``) mod ``p``.

    Returns ``(N, K, 2)`` float64 with ``[..., 0] = cos(2π k v / p)`` and
    ``[..., 1] = sin(2π k v / p)`` for ``k`` in ``freqs`` (default ``1 .. ⌊p/2⌋``).
    Columns are *not* normalised (each has squared norm ``N/2`` on a full grid).
    """
    if p < 2:
        raise ValueError(f"p must be at least 2, got {p}")
    ks = np.asarray(_check_freqs(p, freqs), dtype=np.float64)
    v = to_numpy(v).reshape(-1)
    theta = 2.0 * np.pi * np.outer(v, ks) / p  # (N, K)
    return np.stack([np.cos(theta), np.sin(theta)], axis=-1)


def modadd_grid(p: int) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` for all ``p**2`` pairs in row order ``i = a*p + b`` (int64, shape ``(N,)``)."""
    if p < 2:
        raise ValueError(f"p must be at least 2, got {p}")
    i = np.arange(p * p)
    return i // p, i % p


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


def _freq_labels(freqs: Sequence[int], prefix: str = "") -> tuple[str, ...]:
    return tuple(f"{prefix}k={k}" for k in freqs)


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
    ks = _check_freqs(p, freqs)
    a, b = modadd_grid(p)
    N = p * p
    labels = _freq_labels(ks)
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


def _normalise_key_freqs(p: int, key_freqs: Iterable[int]) -> list[int]:
    out: list[int] = []
    for k in key_freqs:
        k = int(k) % p
        if k == 0:
            raise ValueError(f"frequency 0 mod p={p} is the constant mode")
        k = min(k, p - k)  # k and p-k span the same cos/sin pair
        if k not in out:
            out.append(k)
    if not out:
        raise ValueError("need at least one key frequency")
    return sorted(out)


def transformer_families(p: int, key_freqs: Iterable[int]) -> dict[str, FeatureFamily]:
    """Transformer feature families restricted to the key frequencies (spec §5.4).

    Rows: all ``N = p**2`` sequences ``[a, b, =]`` in order ``a*p + b``. Each bank is
    ``(N, F, 2)`` with ``F = len(key_freqs)`` (a ``2F``-dimensional subspace). Key
    frequencies are reduced to ``1 .. ⌊p/2⌋`` (``k`` and ``p − k`` give the same
    subspace), de-duplicated and sorted.

    * ``sum``, ``diff``: Fourier of ``(a ± b) mod p``.
    * ``axis_sum``: ``Fourier(a) + Fourier(b)`` (elementwise on each cos/sin column).
    * ``axis_diff``: ``Fourier(a) − Fourier(b)``.
    * ``axis2_sum``: ``Fourier(2a) + Fourier(2b)``.
    """
    ks = _normalise_key_freqs(p, key_freqs)
    a, b = modadd_grid(p)
    fa, fb = fourier_bank(a, p, ks), fourier_bank(b, p, ks)
    labels = _freq_labels(ks)
    specs = {
        "sum": (fourier_bank(a + b, p, ks), "Fourier modes of (a+b) mod p at the key frequencies"),
        "diff": (fourier_bank(a - b, p, ks), "Fourier modes of (a−b) mod p at the key frequencies"),
        "axis_sum": (fa + fb, "Fourier(a) + Fourier(b) at the key frequencies"),
        "axis_diff": (fa - fb, "Fourier(a) − Fourier(b) at the key frequencies"),
        "axis2_sum": (fourier_bank(2 * a, p, ks) + fourier_bank(2 * b, p, ks),
                      "Fourier(2a) + Fourier(2b) at the key frequencies"),
    }
    return {n: FeatureFamily(name=n, bank=bk, description=d, labels=labels) for n, (bk, d) in specs.items()}


def embedding_fourier_power(W_E, p: int) -> np.ndarray:
    """Fourier power of a token embedding, shape ``(⌊p/2⌋,)``; entry ``k − 1`` is frequency ``k``.

    ``W_E`` is ``(V, d)`` with ``V >= p`` (token rows; rows ``p ..`` such as '=' are
    ignored). FFT along the token axis of ``W_E[:p]``; power of ``k`` = mean over the
    ``d`` columns of ``|F_k|² + |F_{p−k}|²`` (``k = p/2`` for even ``p`` counted once).
    """
    W = to_numpy(W_E)
    if W.ndim != 2 or W.shape[0] < p:
        raise ValueError(f"W_E must be (>= p, d) with p={p}, got shape {W.shape}")
    F = np.fft.fft(W[:p], axis=0)
    P = np.abs(F) ** 2  # (p, d)
    ks = np.arange(1, p // 2 + 1)
    power = P[ks] + P[(p - ks) % p]
    if p % 2 == 0:
        power[-1] = P[p // 2]
    return power.mean(axis=1)


@dataclass(frozen=True)
class KeyFrequencies:
    """Result of :func:`detect_key_frequencies`.

    ``freqs``: key frequencies (increasing); ``power``: ``(⌊p/2⌋,)`` spectrum (entry
    ``k − 1`` is frequency ``k``); ``rule``: ``"gap"``, ``"outlier"`` or ``"argmax"``
    (which branch of the rule fired); ``ratio``: ``P_(m*) / P_(m*+1)`` at the chosen cut.
    """

    freqs: list[int]
    power: np.ndarray
    rule: str
    ratio: float


def detect_key_frequencies(
    W_E, p: int, *, max_freqs: int | None = None, min_ratio: float = 3.0
) -> KeyFrequencies:
    """Key frequencies with diagnostics (rule in the module docstring)."""
    power = embedding_fourier_power(W_E, p)
    K = power.size
    if K == 0:
        raise ValueError(f"no non-constant frequency for p={p}")
    M = max(1, K // 2) if max_freqs is None else max(1, min(int(max_freqs), K))
    order = np.argsort(-power, kind="stable")
    sp = power[order]
    tiny = np.finfo(np.float64).tiny
    if K >= 2:
        m_max = min(M, K - 1)
        gaps = np.log(np.maximum(sp[:m_max], tiny)) - np.log(np.maximum(sp[1 : m_max + 1], tiny))
        m = int(np.argmax(gaps)) + 1
        ratio = float(np.exp(gaps[m - 1]))
        if ratio >= min_ratio:
            return KeyFrequencies(sorted(int(k) + 1 for k in order[:m]), power, "gap", ratio)
    else:
        ratio = float("inf")
    med = float(np.median(power))
    mad = float(np.median(np.abs(power - med)))
    out = [int(k) for k in order if power[k] > med + 5.0 * mad and mad > 0][:M]
    if out:
        nxt = sp[len(out)] if len(out) < K else tiny
        return KeyFrequencies(sorted(k + 1 for k in out), power, "outlier", float(sp[len(out) - 1] / max(nxt, tiny)))
    r = float(sp[0] / max(sp[1], tiny)) if K >= 2 else ratio
    return KeyFrequencies([int(order[0]) + 1], power, "argmax", r)


def key_frequencies(W_E, p: int, *, max_freqs: int | None = None, min_ratio: float = 3.0) -> list[int]:
    """Automatically detected key frequencies (``1 .. ⌊p/2⌋``, increasing) of a token embedding.

    ``W_E``: ``(V, d)`` with ``V >= p`` (rows ``0 .. p−1`` are the number tokens). See the
    module docstring for the rule; :func:`detect_key_frequencies` gives diagnostics and
    :func:`embedding_fourier_power` the spectrum.
    """
    return detect_key_frequencies(W_E, p, max_freqs=max_freqs, min_ratio=min_ratio).freqs


def tms_feature_vectors(X) -> np.ndarray:
    """Ground-truth TMS feature vectors on the class-major flattened index (spec §3.6).

    ``X``: the TMS data ``(N, n)``; the model has ``C = n`` outputs. Returns ``Z`` of shape
    ``(n*N, n)``: column ``a`` is zero except rows ``a*N .. (a+1)*N − 1`` (the block of
    output class ``a``), which hold ``X[:, a]``. Columns are not normalised.
    """
    X = to_numpy(X)
    if X.ndim != 2:
        raise ValueError(f"X must be (N, n), got shape {X.shape}")
    N, n = X.shape
    Z = np.zeros((n * N, n))
    for a in range(n):
        Z[a * N : (a + 1) * N, a] = X[:, a]
    return Z


def concat_families(name: str, families: Sequence[FeatureFamily], description: str = "") -> FeatureFamily:
    """Stack families with the same rows and bank kind along the feature axis.

    Labels are prefixed with each family's name (``"a k=1"``, ..., ``"b k=14"``), e.g.
    for the first-cliff heatmap rows "a k=1..14" over "b k=1..14".
    """
    if not families:
        raise ValueError("need at least one family")
    ndims = {f.bank.ndim for f in families}
    rows = {f.bank.shape[0] for f in families}
    if len(ndims) != 1 or len(rows) != 1:
        raise ValueError("families must all be Fourier (N,K,2) or all plain (N,K), with the same N")
    bank = np.concatenate([f.bank for f in families], axis=1)
    labels = tuple(
        f"{f.name} {lab}" for f in families
        for lab in (f.labels or tuple(str(j) for j in range(f.bank.shape[1])))
    )
    return FeatureFamily(name=name, bank=bank, description=description or " + ".join(f.name for f in families), labels=labels)


def families_with_rows(families: Mapping[str, FeatureFamily], n_rows: int) -> dict[str, FeatureFamily]:
    """The families whose vectors have ``n_rows`` entries (those comparable with an ``n_rows`` kernel)."""
    return {k: f for k, f in families.items() if f.bank.shape[0] == n_rows}
