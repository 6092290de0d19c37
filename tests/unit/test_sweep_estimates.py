"""The sweep's estimate for checkpoints whose kernel is cached (entk_core.workflows.estimates):
an eigendecomposition timed on a matrix of the kernel's size, never on one that would not fit."""
from __future__ import annotations

from entk_core.workflows import estimates


def test_a_small_cached_kernel_is_priced_by_a_timed_eigendecomposition(monkeypatch):
    monkeypatch.setattr(estimates, "_LOCAL_UNIT", {})
    t = estimates._local_unit_seconds(64, 10)
    assert t > 0
    assert estimates._LOCAL_UNIT[(64, 10)] > 0  # timed once, then reused
    assert estimates._local_unit_seconds(64, 10) == t


def test_a_huge_cached_kernel_is_priced_without_building_a_matrix_of_its_size(monkeypatch):
    """100,000 rows: a random matrix of that size would take 40 GB; the planner's count is used."""
    monkeypatch.setattr(estimates, "_LOCAL_UNIT", {})
    t = estimates._local_unit_seconds(100_000, 10)  # building one would raise MemoryError here
    assert t > 40.0  # at least the 40 GB kernel read back at 1 GB/s
    assert estimates._LOCAL_UNIT == {}
