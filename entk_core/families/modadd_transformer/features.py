"""Ground-truth feature families of the modular-addition Transformer (paper spec §5.4) and
the key frequencies of its token embedding.

Rows: all ``N = p**2`` sequences ``[a, b, =]`` in order ``a*p + b`` (see
:mod:`entk_core.families.modadd_mlp.fourier`, whose Fourier banks these families use).

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
reports which branch fired."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ...engine.measures import to_numpy
from ..base import FeatureFamily
from ..modadd_mlp.fourier import fourier_bank, freq_labels, modadd_grid

__all__ = ["KeyFrequencies", "detect_key_frequencies", "embedding_fourier_power", "key_frequencies",
           "transformer_families"]


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
    labels = freq_labels(ks)
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
