"""Spectrum conventions, automatic cliff detection and cliff labels.

Conventions (every eigensolver of the library follows them; the one entry point is
:func:`entk_core.engine.eigenpairs.top_eigenpairs`): eigenvalues are returned in
*descending* order as float64 numpy arrays of shape ``(k,)``; eigenvectors as ``(n, k)``
float64 arrays whose column ``i`` belongs to eigenvalue ``i`` and has unit norm. Signs are
fixed so that the entry of largest magnitude of each eigenvector is positive
(:func:`fix_signs`; so repeated runs give identical vectors).

Cliff rule (:func:`detect_cliffs`)
----------------------------------
A *cliff* is a block of consecutive eigenvalues followed by a sharp drop. With
``r_i = log(λ_i / λ_{i+1})`` the log-gap after index ``i`` (``i = 0 .. k-2``), a drop
after index ``i`` is *sharp* when

* ``λ_i / λ_{i+1} >= min_ratio`` (default 1.1),
* ``r_i >= rel_factor * m_i`` (default 4), where ``m_i`` is the median log-gap of the
  ``window`` gaps on each side (default 10; ``m_i`` is floored at 1e-3 so flat plateaus
  do not turn noise into cliffs), and
* ``r_i`` is the largest log-gap within that window (one drop spread over neighbouring
  indices counts once).

The defaults were calibrated on the paper's toy runs (their measured cliffs are listed in
docs/ARCHITECTURE.md, "Spectra conventions").

Eigenvalues at or below ``tol * λ_0`` (numerical zeros) are ignored. Cliffs are the
segments between consecutive sharp drops, starting at index 0; the last segment (after
the last drop) is not a cliff because no drop ends it inside the top-k. Each cliff is
reported with ``start`` (first index), ``size`` (number of eigenvalues), ``end``
(last index, inclusive) and ``ratio`` (``λ_end / λ_{end+1}``, the height of its drop).

Cliff labels (:func:`label_cliffs`)
-----------------------------------
One labelling everywhere (CLI JSON, figures, pages): a detected block of size 1 at
index 0 whose eigenvector is nearly constant (``|⟨v, 1⟩| / (√N‖v‖) ≥ 0.9``) is the
*constant mode*, labelled :data:`CONSTANT_LABEL` (``"constant"``; shown as "constant
mode") and never numbered; the other blocks are ``"cliff 1"``, ``"cliff 2"``, ... in
spectral order (e.g. ``constant`` at index 0, ``cliff 1`` at 1-56, ``cliff 2`` at 57-112).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Cliff", "CONSTANT_LABEL", "detect_cliffs", "fix_signs", "is_constant_mode", "label_cliffs",
           "labelled_cliffs"]

CONSTANT_LABEL = "constant"
"""Label of a leading size-1 block whose eigenvector is the constant mode (not a numbered cliff)."""

CONSTANT_COSINE = 0.9
"""A vector is the constant mode when its cosine with the all-ones vector is at least this."""


@dataclass(frozen=True)
class Cliff:
    start: int
    size: int
    ratio: float

    @property
    def end(self) -> int:
        return self.start + self.size - 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["end"] = self.end
        return d


def fix_signs(vecs: np.ndarray) -> np.ndarray:
    """Flip columns so each column's largest-magnitude entry is positive (in place)."""
    if vecs.size == 0:
        return vecs
    idx = np.abs(vecs).argmax(axis=0)
    signs = np.sign(vecs[idx, np.arange(vecs.shape[1])])
    signs[signs == 0] = 1.0
    vecs *= signs
    return vecs


def detect_cliffs(
    eigenvalues: np.ndarray,
    *,
    min_ratio: float = 1.1,
    rel_factor: float = 4.0,
    window: int = 10,
    tol: float = 1e-10,
) -> list[Cliff]:
    """Detect spectral cliffs in descending ``eigenvalues`` (see the module docstring)."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.ndim != 1:
        raise ValueError("eigenvalues must be a 1-D array")
    if lam.size < 2 or not np.isfinite(lam).all() or lam[0] <= 0:
        return []
    keep = lam > tol * lam[0]
    n = int(keep.sum()) if keep.all() else int(np.argmin(keep))
    lam = lam[:n]
    if n < 2:
        return []
    r = np.log(lam[:-1] / lam[1:])
    drops = []
    for i, ri in enumerate(r):
        lo, hi = max(0, i - window), min(len(r), i + window + 1)
        neigh = np.concatenate([r[lo:i], r[i + 1 : hi]])
        m = max(float(np.median(neigh)) if neigh.size else 0.0, 1e-3)
        if ri >= np.log(min_ratio) and ri >= rel_factor * m and (neigh.size == 0 or ri >= neigh.max()):
            drops.append(i)
    cliffs, start = [], 0
    for i in drops:
        cliffs.append(Cliff(start=start, size=i - start + 1, ratio=float(np.exp(r[i]))))
        start = i + 1
    return cliffs


def is_constant_mode(vec: np.ndarray) -> bool:
    """Whether ``vec`` ``(N,)`` is nearly constant: ``|Σ v| / (√N ‖v‖) >= 0.9``."""
    v = np.asarray(vec, dtype=np.float64).reshape(-1)
    return bool(v.size) and abs(v.sum()) / (np.sqrt(v.size) * max(np.linalg.norm(v), 1e-300)) >= CONSTANT_COSINE


def label_cliffs(cliffs, eigenvectors: np.ndarray | None) -> list[str]:
    """Labels of cliffs (or ``(start, end)`` windows, inclusive) in spectral order (see the
    module docstring): :data:`CONSTANT_LABEL` for a leading size-1 block whose eigenvector
    (column 0 of ``eigenvectors`` ``(n, k)``) is nearly constant, else ``"cliff 1"``,
    ``"cliff 2"``... Without eigenvectors no block is the constant mode."""
    labels, n = [], 0
    for c in cliffs:
        start, end = (c.start, c.end) if isinstance(c, Cliff) else c
        if start == 0 and end == 0 and eigenvectors is not None and np.asarray(eigenvectors).shape[1] > 0 \
                and is_constant_mode(np.asarray(eigenvectors)[:, 0]):
            labels.append(CONSTANT_LABEL)
            continue
        n += 1
        labels.append(f"cliff {n}")
    return labels


def labelled_cliffs(cliffs: list[Cliff], eigenvectors: np.ndarray | None) -> list[dict]:
    """The JSON form of detected cliffs: ``Cliff.to_dict()`` plus its ``label``
    (:func:`label_cliffs`), e.g. ``{"label": "cliff 1", "start": 1, "size": 56, "end": 56,
    "ratio": 1.5}``."""
    return [{"label": lab, **c.to_dict()} for c, lab in zip(cliffs, label_cliffs(cliffs, eigenvectors))]
