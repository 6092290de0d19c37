"""RayExecutor's bookkeeping with a stand-in ``ray`` module (no cluster): an executor that
started a local instance (or connected to an address) shuts it down in ``close()``; one
that found Ray already initialised (the test session's shared instance, a notebook's) leaves
it alone. The real Ray runs in tests/integration (test_executors, test_sweep_executors,
test_grid, test_lm_end_to_end) on one session instance."""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from entk_core.workflows.executors import RayExecutor, make_executor


class FakeRay(types.ModuleType):
    def __init__(self, initialized: bool):
        super().__init__("ray")
        self.initialized, self.calls = initialized, []

    def is_initialized(self):
        return self.initialized

    def init(self, **kw):
        self.calls.append(("init", kw))
        self.initialized = True

    def shutdown(self):
        self.calls.append(("shutdown", {}))
        self.initialized = False

    def remote(self, **kw):
        return lambda fn: fn


@pytest.fixture
def fake_ray(monkeypatch):
    def install(initialized: bool) -> FakeRay:
        ray = FakeRay(initialized)
        monkeypatch.setitem(sys.modules, "ray", ray)
        return ray
    monkeypatch.delenv("ENTK_RAY_ADDRESS", raising=False)
    return install


def test_an_instance_it_started_is_shut_down_by_close(fake_ray):
    ray = fake_ray(False)
    ex = make_executor(ray=True)
    assert isinstance(ex, RayExecutor) and ex.address is None
    (what, kw), = ray.calls
    assert what == "init" and "address" not in kw and kw["num_cpus"] >= 1
    # its workers import from the driver's path (here: the tests folder, for tests/_units.py)
    assert str(Path(__file__).resolve().parents[1]) in kw["runtime_env"]["env_vars"]["PYTHONPATH"].split(os.pathsep)
    ex.close()
    assert ray.calls[-1] == ("shutdown", {}) and not ray.initialized
    ex.close()  # twice: nothing more
    assert len(ray.calls) == 2


def test_a_cluster_it_connected_to_is_disconnected(fake_ray):
    ray = fake_ray(False)
    ex = RayExecutor("127.0.0.1:6379")
    assert ray.calls[0][1]["address"] == "127.0.0.1:6379" and "num_cpus" not in ray.calls[0][1]
    ex.close()
    assert ray.calls[-1] == ("shutdown", {})


def test_an_instance_already_running_is_left_alone(fake_ray):
    ray = fake_ray(True)
    ex = make_executor(ray=True)
    ex.close()
    assert ray.calls == [] and ray.initialized
