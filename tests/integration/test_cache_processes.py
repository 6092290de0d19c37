"""The result cache across processes: a missing entry is computed once (moved from the
unit tier: it starts worker processes)."""
import multiprocessing as mp
import time

import numpy as np

from entk_core.store.cache import ArrayCache


def _slow_compute_worker(directory, counter_path, barrier_time):
    c = ArrayCache(directory)
    while time.time() < barrier_time:
        time.sleep(0.005)

    def compute():
        with open(counter_path, "a") as f:
            f.write("x")
        time.sleep(0.5)
        return {"v": np.arange(5.0)}, {}

    e = c.get_or_compute("shared", compute)
    assert e["v"].sum() == 10.0


def test_concurrent_processes_compute_once(tmp_path):
    counter = tmp_path / "count"
    start = time.time() + 1.0
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_slow_compute_worker, args=(str(tmp_path / "c"), str(counter), start)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert counter.read_text() == "x"
