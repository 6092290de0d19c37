"""Feature-family helpers: the generic ones (entk_core.families.features) and the TMS feature
vectors (entk_core.families.tms.features)."""
import numpy as np
import pytest

from entk_core.families.features import concat_families
from entk_core.families.modadd_mlp.features import modadd_families
from entk_core.families.tms.features import tms_feature_vectors


def test_tms_feature_vectors_layout():
    X = np.arange(12, dtype=float).reshape(4, 3) + 1  # N=4, n=3
    Z = tms_feature_vectors(X)
    assert Z.shape == (12, 3)
    for a in range(3):
        np.testing.assert_array_equal(Z[a * 4 : (a + 1) * 4, a], X[:, a])
        mask = np.ones(12, bool)
        mask[a * 4 : (a + 1) * 4] = False
        assert not Z[mask, a].any()


def test_concat_families_labels():
    fams = modadd_families(7)
    ab = concat_families("ab", [fams["a"], fams["b"]])
    assert ab.bank.shape == (49, 6, 2)
    assert ab.labels[0] == "a k=1" and ab.labels[3] == "b k=1"
    with pytest.raises(ValueError):
        concat_families("bad", [fams["a"], fams["a_digit"]])
