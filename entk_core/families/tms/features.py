"""Ground-truth TMS features (paper spec §3.6): the feature vectors on the class-major
flattened index of the ``"flat"`` kernel reduction (row ``c*N + n`` = output class ``c``,
input ``n``)."""
from __future__ import annotations

import numpy as np

from ...engine.measures import to_numpy

__all__ = ["tms_feature_vectors"]


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
