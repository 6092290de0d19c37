"""The executor seam (entk_core.workflows.executors): inline, local worker processes and Ray give the
same results; a failing or killed unit is retried once, then reported while the others complete; a
cancelled run stops its workers."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import _units as U
from entk_core.workflows.executors import InlineExecutor, LocalExecutor, Unit, make_executor, run_units


def _squares(n: int) -> list[Unit]:
    return [Unit(f"u{i}", U.square, {"x": i}) for i in range(n)]


def test_inline_and_local_agree_and_report_in_order():
    want = [i * i for i in range(6)]
    seen = []
    for ex in (InlineExecutor(), LocalExecutor(2)):
        res = ex.run(_squares(6), on_result=lambda r: seen.append(r.key))
        assert [r.key for r in res] == [f"u{i}" for i in range(6)]
        assert [r.value for r in res] == want and all(r.ok and r.attempts == 1 for r in res)
    assert sorted(seen) == sorted([f"u{i}" for i in range(6)] * 2)


def test_local_workers_take_the_callers_environment_and_priority(monkeypatch):
    """Pool workers are forked from a forkserver started earlier, yet see the environment and
    the niceness their caller has when the pool starts, as spawned processes would."""
    LocalExecutor(2).run(_squares(2))  # the forkserver is running from here on
    monkeypatch.setenv("ENTK_TEST_MARK", "set after the forkserver started")
    got: dict = {}

    def lower_priority_caller() -> None:  # Linux: a thread's nice value is its own
        os.nice(3)
        got.update({r.key: r.value for r in LocalExecutor(2).run(
            [Unit("env", U.env_value, {"name": "ENTK_TEST_MARK"}), Unit("nice", U.niceness, {})])})

    import threading

    t = threading.Thread(target=lower_priority_caller)
    t.start()
    t.join()
    assert got == {"env": "set after the forkserver started", "nice": os.nice(0) + 3}


def test_a_jobs_own_pools_are_forked_by_the_forkserver_that_forked_the_job():
    """A page's job (a sweep or dynamics) runs its units in a pool of its own: those workers
    come from the forkserver that forked the job, not from a second one the job would start
    (importing torch again: ~3.5 s of CPU, 4 s before a dynamics job's first unit)."""
    from entk_core.workflows.jobs import Job

    job = Job(steps=[{"target": "_units:pool_parents", "kwargs": {}, "run": "", "return": True}]).start()
    job.wait(interval=0.05)
    got = job.results[0]
    assert got["own_forkserver"] is None
    assert got["pool_parents"] == [got["job_parent"]] * 2


def test_killing_a_job_ends_its_pools_workers_at_once(tmp_path):
    """Stop kills a page's job; the workers of the job's pool (the forkserver's children, not
    the job's) end with it instead of finishing their unit."""
    from entk_core.workflows.jobs import Job

    job = Job(steps=[{"target": "_units:slow_pool", "kwargs": {"marker_dir": str(tmp_path)}, "run": ""}]).start()
    deadline = time.time() + 60
    while len(list(tmp_path.glob("running-*"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    pids = [int(f.name.rsplit("-", 1)[1]) for f in tmp_path.glob("running-*")]
    assert len(pids) == 2, "the pool's units did not start"
    job.kill()

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    t0 = time.time()
    while any(alive(p) for p in pids) and time.time() - t0 < 10:
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)], "a pool worker outlived its killed job"
    assert time.time() - t0 < 5


def test_default_executor_choice():
    assert isinstance(make_executor(n_units=3), InlineExecutor)
    ex = make_executor(n_units=20, workers=2)
    assert isinstance(ex, LocalExecutor) and ex.workers == 2
    with pytest.raises(ValueError, match="unique"):
        InlineExecutor().run([Unit("a", U.square, {"x": 1}), Unit("a", U.square, {"x": 2})])


@pytest.mark.parametrize("workers", [1, 2])
def test_failures_are_retried_once_then_reported(tmp_path, workers):
    units = [Unit("ok", U.square, {"x": 3}),
             Unit("flaky", U.fail_once, {"marker": str(tmp_path / "m"), "x": 7}),
             Unit("broken", U.always_fail, {"x": 5}),
             Unit("ok2", U.square, {"x": 4})]
    res = {r.key: r for r in run_units(units, workers=workers)}
    assert res["ok"].value == 9 and res["ok2"].value == 16
    assert res["flaky"].ok and res["flaky"].value == 7 and res["flaky"].attempts == 2
    assert not res["broken"].ok and res["broken"].attempts == 2 and "unit 5 is broken" in res["broken"].error


def test_a_killed_worker_is_retried_and_does_not_take_others_down(tmp_path):
    units = [Unit(f"ok{i}", U.square, {"x": i}) for i in range(4)]
    units += [Unit("dies-once", U.die_once, {"marker": str(tmp_path / "d"), "x": 11}),
              Unit("always-dies", U.always_die, {"x": 1})]
    res = {r.key: r for r in LocalExecutor(2).run(units)}
    assert all(res[f"ok{i}"].ok and res[f"ok{i}"].value == i * i for i in range(4))
    assert res["dies-once"].ok and res["dies-once"].value == 11 and res["dies-once"].attempts == 2
    bad = res["always-dies"]
    assert not bad.ok and bad.attempts == 2 and "died" in bad.error


def test_cancel_stops_the_workers(tmp_path):
    """A progress callback that raises (the dashboard's Stop) cancels pending units and ends the
    running ones: no worker keeps working after run() returns."""
    units = [Unit("quick", U.square, {"x": 2})] + [
        Unit(f"slow{i}", U.slow, {"seconds": 30.0, "marker_dir": str(tmp_path), "x": i}) for i in range(4)]

    class Stop(Exception):
        pass

    raised = []

    def progress(done, total, msg):  # after the quick unit: Stop once a slow unit is running
        deadline = time.time() + 120
        while not list(tmp_path.glob("running-*")) and time.time() < deadline:
            time.sleep(0.05)
        raised.append(time.perf_counter())
        raise Stop

    with pytest.raises(Stop):
        LocalExecutor(2).run(units, progress=progress)
    assert time.perf_counter() - raised[0] < 15  # it did not wait for the 30 s units to end
    pids = [int(p.name.rsplit("-", 1)[1]) for p in tmp_path.glob("running-*")]
    assert pids, "the slow units had started"
    for pid in pids:  # the workers that ran them are gone, long before the 30 s a slow unit takes
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_ray_same_results_retries_and_kills(ray_cluster, tmp_path):
    """On the session's local Ray instance (tests/conftest.py); that an executor shuts down the
    instance it started, and only that one, is tests/unit/test_ray_executor.py."""
    ray_local = make_executor(ray=True)
    assert ray_local.describe()["executor"] == "ray"
    res = ray_local.run(_squares(5))
    assert [r.value for r in res] == [i * i for i in range(5)]
    units = [Unit("flaky", U.fail_once, {"marker": str(tmp_path / "m"), "x": 7}),
             Unit("dies-once", U.die_once, {"marker": str(tmp_path / "d"), "x": 11}),
             Unit("broken", U.always_fail, {"x": 5}),
             Unit("ok", U.square, {"x": 6})]
    res = {r.key: r for r in ray_local.run(units)}
    assert res["ok"].value == 36
    assert res["flaky"].ok and res["flaky"].attempts == 2
    assert res["dies-once"].ok and res["dies-once"].value == 11 and res["dies-once"].attempts == 2
    assert not res["broken"].ok and res["broken"].attempts == 2 and "unit 5 is broken" in res["broken"].error
