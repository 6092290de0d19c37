"""The sweep's measures without a run (moved from tests/integration/test_sweep.py): window
overlaps against subspace_overlap, and cliff labels (the constant mode)."""
import numpy as np

from entk_core.engine.measures import family_bases, subspace_overlap, window_overlaps
from entk_core.engine.spectra import Cliff, label_cliffs
from entk_core.families.modadd_mlp.features import modadd_families


def test_window_overlaps_match_subspace_overlap():
    fams = {k: f for k, f in modadd_families(7).items() if k in ("a", "sum", "random")}
    bases = family_bases(fams)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((49, 5))  # not orthonormal: goes through the QR path
    Q, _ = np.linalg.qr(rng.standard_normal((49, 8)))  # orthonormal: used as is
    for V in (X, Q, Q[:, 0]):
        got = window_overlaps(V, bases)
        want = [subspace_overlap(V, f)[0] for f in fams.values()]
        np.testing.assert_allclose(got, want, atol=1e-10)


def test_label_cliffs_finds_the_constant_mode():
    n = 16
    V = np.eye(n)
    V[:, 0] = 1 / np.sqrt(n)
    cl = [Cliff(0, 1, 9.0), Cliff(1, 4, 2.0), Cliff(5, 3, 1.5)]
    assert label_cliffs(cl, V) == ["constant", "cliff 1", "cliff 2"]
    V[:, 0] = np.eye(n)[0]
    assert label_cliffs(cl, V) == ["cliff 1", "cliff 2", "cliff 3"]
    assert label_cliffs([(0, 0), (1, 3)], None) == ["cliff 1", "cliff 2"]
