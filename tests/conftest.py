"""Shared fixtures and the test tiers.

Every test runs with its own runs folder and cache folder (``ENTK_RUNS_DIR`` /
``ENTK_CACHE_DIR`` point into tmp), so nothing touches ./runs.

Tiers (like TransformerLens): ``tests/unit`` (fast, no training), ``tests/integration``
(training, sweeps, the app under AppTest), ``tests/acceptance`` (real browser, paper
numbers). Each test gets its tier's marker (``-m unit`` ...) and a pytest-timeout limit
(:data:`TIER_TIMEOUT_S`) unless it sets its own ``@pytest.mark.timeout``.

Skips are honest (the plug-in ``tests/_honest_skips.py``): under ``CI=true`` every skip is a
failure naming its reason; locally a skip must name one. Conventions for new tests (shared
fixtures, the in-process CLI, where slow things go): ``tests/README.md``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from _shared import shared_once

pytest_plugins = ("pytester", "_honest_skips")

# one torch thread per pytest-xdist worker (the workers share the machine's cores), two alone
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))
REPO = Path(__file__).resolve().parent.parent
TIER_TIMEOUT_S = {"unit": 300, "integration": 1200, "acceptance": 1800}
"""Per-test limits (seconds) on a loaded 2-core machine; a hang fails instead of stalling CI."""


#: Session fixtures whose users run in one pytest-xdist worker (``--dist loadgroup``), so each
#: worker-bound object (a chromium, a Ray instance, the loaded Gemma) starts in as few workers as
#: possible: (fixture, group). A test that uses several goes with the first. The browser tests are
#: two groups (``test_browser.py``, the other browser modules) that run beside each other; the runs
#: and cache they read are built once per session (``shared_once``).
SHARED_FIXTURES = (("browser", "browser"), ("browser_runs", "browser"), ("gemma", "gemma"), ("ray_cluster", "ray"))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = next((g for f, g in SHARED_FIXTURES if f in getattr(item, "fixturenames", ())), None)
        if group == "browser" and Path(str(item.fspath)).name != "test_browser.py":
            group = "browser-2"
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
        tier = Path(str(item.fspath)).relative_to(REPO / "tests").parts[0] if str(item.fspath).startswith(
            str(REPO / "tests")) else None
        if tier in TIER_TIMEOUT_S:
            item.add_marker(getattr(pytest.mark, tier))
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(TIER_TIMEOUT_S[tier]))


@pytest.fixture(autouse=True)
def _real_main_module():
    """Put the process's ``__main__`` back after each test. Streamlit's script runner (AppTest)
    installs the app script as ``sys.modules["__main__"]`` and leaves it there; a later
    ``spawn``-ed worker of this process would then run that script (an AppTest's temporary
    file, already gone) instead of starting clean."""
    import sys

    main = sys.modules.get("__main__")
    yield
    sys.modules["__main__"] = main


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Every folder the library reads or writes by default points into this test's tmp; the
    dashboard does not offer (and load, ~1 min) the installed dev Gemma unless a test asks."""
    monkeypatch.setenv("ENTK_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("ENTK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ENTK_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ENTK_PROBES_DIR", str(tmp_path / "probes"))
    monkeypatch.setenv("ENTK_OFFER_GGUF_PACKAGE", "0")
    monkeypatch.setenv("ENTK_PROGRESS", "off")
    yield


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory) -> Path:
    """A tiny modular-addition MLP run (p=7, width 32, 30 epochs, checkpoints every 10)."""
    from entk_core.families.base import get_family
    from entk_core.workflows.training import train

    fam = get_family("modadd-mlp")
    return shared_once(tmp_path_factory, "tiny", lambda d: train(
        fam, fam.Config(p=7, width=32, epochs=30, checkpoint_every=10, seed=0), d / "tiny-mlp")) / "tiny-mlp"


@pytest.fixture(scope="session")
def mlp29_run_dir(tmp_path_factory) -> Path:
    """The paper's p=29 width-512 MLP, 500 epochs, seed 0 (about 10 s to train)."""
    from entk_core.families.base import get_family
    from entk_core.workflows.training import train

    fam = get_family("modadd-mlp")
    name = "modadd-mlp-p29-seed0"
    return shared_once(tmp_path_factory, "mlp29", lambda d: train(fam, fam.Config(), d / name)) / name


@pytest.fixture(scope="session")
def mlp29_cache_dir(mlp29_run_dir, tmp_path_factory) -> Path:
    """A result cache (folder) holding the p=29 MLP's default grokking sweep: every one of its
    51 checkpoints' spectra, computed once per session by ``sweep`` (the heaviest computation
    the suite repeats otherwise). Tests and pages that read those results point their cache at
    it (``Services(ArrayCache(mlp29_cache_dir))``, ``ENTK_CACHE_DIR``). Cached values are pure
    functions of their keys, so a shared cache changes speed, never numbers; a test that
    asserts what is or is not cached (``miss``, ``computed``) uses its own cache instead."""
    from entk_core.families.run import open_run
    from entk_core.store.cache import ArrayCache
    from entk_core.workflows.sweep import sweep

    def build(d: Path) -> None:
        cache = ArrayCache(d / "cache")
        try:
            sweep(open_run(mlp29_run_dir), cache=cache)
        finally:
            cache.close()

    return shared_once(tmp_path_factory, "mlp29-cache", build) / "cache"


@pytest.fixture
def install_run(tmp_path, monkeypatch):
    """``install_run(run_dir) -> name``: copy a run into a fresh runs folder and point
    ``ENTK_RUNS_DIR`` at it (for AppTest runs of the dashboard)."""
    root = tmp_path / "runs"

    def install(run_dir: Path) -> str:
        root.mkdir(exist_ok=True)
        shutil.copytree(run_dir, root / run_dir.name)
        monkeypatch.setenv("ENTK_RUNS_DIR", str(root))
        return run_dir.name

    return install


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the whole session, started on first use (10-20 s) and shut
    down at the end. In this process, any executor made with ``ray=True`` (``make_executor``,
    the CLI's ``--ray`` through :func:`_cli.run_cli`) finds Ray initialised and uses it; a
    subprocess reaches it with ``ENTK_RAY_ADDRESS=ray_cluster.address``. Tasks see the
    environment of the moment Ray started, not a test's later ``monkeypatch.setenv``: pass
    paths as unit arguments (the library's units do)."""
    import types

    pytest.importorskip("ray", reason="ray is a pinned dependency (requirements.txt); under CI its absence fails")
    import ray

    from entk_core.workflows.executors import RayExecutor

    ex = RayExecutor(None)  # a local instance sized to this machine, workers on this process's sys.path
    try:
        yield types.SimpleNamespace(executor=ex, address=ray.get_runtime_context().gcs_address)
    finally:
        ex.close()
