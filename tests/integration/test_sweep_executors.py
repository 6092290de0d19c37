"""The sweep through the executor seam: worker processes and Ray give the same JSON values; the driver
alone writes the cache, so a second call is served from it; a failing checkpoint is reported and the
others are kept."""
from __future__ import annotations

import json

import pytest

from _cli import run_cli
from entk_core.store.cache import ArrayCache
from entk_core.families.run import open_run
from entk_core.workflows import analysis
from entk_core.workflows.executors import InlineExecutor
from entk_core.workflows.sweep import sweep

VOLATILE = {"cache", "compute_s", "total_s", "executor"}


def _sweep_cli(run_dir, cache_dir, *extra):
    r = run_cli("sweep", run_dir, "--json", *extra, env={"ENTK_CACHE_DIR": str(cache_dir)})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.slow
def test_ray_sweep_equals_local_sweep_and_is_cached(tiny_run_dir, tmp_path, ray_cluster):
    """`sweep --workers 2` and `sweep --ray` (the session's local Ray instance) give the same JSON."""
    local = _sweep_cli(tiny_run_dir, tmp_path / "a", "--workers", "2")
    ray = _sweep_cli(tiny_run_dir, tmp_path / "b", "--ray")
    assert ray["executor"]["executor"] == "ray" and local["executor"]["executor"] == "local"
    assert {k: v for k, v in ray.items() if k not in VOLATILE} == {k: v for k, v in local.items() if k not in VOLATILE}
    again = _sweep_cli(tiny_run_dir, tmp_path / "b", "--ray")
    assert again["cache"] == "hit" and "executor" not in again
    assert {k: v for k, v in again.items() if k not in VOLATILE} == {k: v for k, v in ray.items() if k not in VOLATILE}


def test_driver_caches_each_checkpoint_and_reports_failures(tiny_run_dir, tmp_path, monkeypatch):
    run = open_run(tiny_run_dir)
    cache = ArrayCache(tmp_path / "c")
    import entk_core.workflows.sweep as sw

    real = sw.spectrum_unit

    def flaky(**kw):  # the epoch-20 checkpoint always fails (retried once)
        if kw["epoch"] == 20:
            raise RuntimeError("disk on fire")
        return real(**kw)

    monkeypatch.setattr(sw, "spectrum_unit", flaky)
    res = sweep(run, cache=cache, executor=InlineExecutor())
    assert res.meta["cache"] == "incomplete"
    assert res.meta["failed"] == [{"epoch": 20, "error": "RuntimeError: disk on fire"}]
    i = res.epoch_index(20)
    assert all(res.overlap[i].ravel() != res.overlap[i].ravel())  # NaN rows for the failed checkpoint
    # the other checkpoints were cached by the driver, the failed one and the sweep were not
    top = res.spec.top
    cached = {e: analysis.spectrum_key(run, e, top=top) in cache for e in run.epochs}
    assert cached == {0: True, 10: True, 20: False, 30: True}
    monkeypatch.setattr(sw, "spectrum_unit", real)
    calls = []
    res2 = sweep(run, cache=cache, executor=InlineExecutor(), progress=lambda d, t, m: calls.append(m))
    assert res2.meta["cache"] == "miss" and res2.meta["failed"] == []
    assert sweep(run, cache=cache).meta["cache"] == "hit"
