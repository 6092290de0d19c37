"""Opt-in pytest plug-in: CPU seconds per test (``python -m pytest -p _cpu_durations``).

On a shared, loaded machine wall times swing with the load; the CPU time a test costs (this
process plus the child processes it waited for: CLI subprocesses, spawned workers; not Ray's
daemons) barely does. At the end the ``ENTK_CPU_DURATIONS`` (default 30) most expensive tests
are listed with their CPU and wall seconds, and the total per tier."""
from __future__ import annotations

import os
import time
from collections import defaultdict

import pytest

_rows: list[tuple[float, float, str]] = []


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    c0, w0 = _cpu(), time.perf_counter()
    try:
        return (yield)
    finally:
        _rows.append((_cpu() - c0, time.perf_counter() - w0, item.nodeid))


def pytest_terminal_summary(terminalreporter):
    if not _rows:
        return
    n = int(os.environ.get("ENTK_CPU_DURATIONS", "30"))
    tr = terminalreporter
    tr.section("CPU seconds per test (setup + call + teardown; this process and waited-for children)")
    for cpu, wall, nodeid in sorted(_rows, reverse=True)[:n]:
        tr.write_line(f"{cpu:8.2f} cpu {wall:8.1f} wall  {nodeid}")
    tiers: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for cpu, wall, nodeid in _rows:
        parts = nodeid.split("/")
        t = tiers[parts[1] if len(parts) > 2 and parts[0] == "tests" else "other"]
        t[0] += cpu
        t[1] += wall
        t[2] += 1
    for tier, (cpu, wall, count) in sorted(tiers.items()):
        tr.write_line(f"tier {tier}: {count} tests, {cpu:.0f} CPU s, {wall:.0f} wall s")
