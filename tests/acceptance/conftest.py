"""Session fixtures of the browser suite (``test_browser*.py``), built once and shared by its
modules (each module starts its own server on them): the trained runs, a result cache holding
the slow parts of the default views, the tiny language-model world, and one chromium.

``ENTK_BROWSER_RUNS=DIR`` copies already trained runs from DIR (training then only completes
what is missing) and ``ENTK_BROWSER_CACHE=DIR`` reuses a result cache, to iterate on the pages
quickly. Without chromium the browser tests are skipped locally, and FAIL under CI (``CI=true``)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from browser_util import CHROMIUM, CHROMIUM_ARGS, MLP, RUNS, chromium_missing_reason


@pytest.fixture(scope="session")
def chromium_ok():
    why = chromium_missing_reason()
    if why:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser tests cannot run under CI: {why}")
        pytest.skip(f"browser tests skipped: {why}")


@pytest.fixture(scope="session")
def browser_runs(tmp_path_factory, chromium_ok) -> Path:
    """The suite's runs folder (:data:`browser_util.RUNS`), trained once per session (under
    pytest-xdist, by the first worker that asks: ``shared_once``). Shared: never write into it."""
    from _shared import shared_once
    from entk_core.families.base import get_family, list_families
    from entk_core.workflows.training import train

    def build(base: Path) -> None:
        root = base / "runs"
        reuse = os.environ.get("ENTK_BROWSER_RUNS")
        if reuse:
            shutil.copytree(reuse, root, ignore=lambda d, names: [n for n in names if n not in {r[1] for r in RUNS}]
                            if Path(d) == Path(reuse) else [])
        for family, name, cfg in RUNS:
            if family not in list_families() or (reuse and (root / name / "manifest.json").exists()):
                continue
            fam = get_family(family)
            fields = set(fam.Config.__dataclass_fields__)
            train(fam, fam.Config(**{k: v for k, v in cfg.items() if k in fields}), root / name)

    return shared_once(tmp_path_factory, "browser", build) / "runs"


def _lm_world(root: Path, cache: Path) -> Path:
    """A tiny random GPT-2 folder (3 blocks) and a probe set on the stories, with layer 1
    (the page's default: the second-to-last block) computed into ``cache`` with the page's
    default options, so the Language model page opens on its tables and contexts."""
    import _lm_models as M
    from entk_core.families.causal_lm import build_probe_set, load_lm
    from entk_core.store.cache import ArrayCache
    from entk_core.workflows.lm import LMAlignOptions, layer_entry

    tok = M.build_tokenizer()
    M.save_model_folder(root / "models" / "tiny-gpt2", "gpt2", layers=3, tokenizer=tok)
    lm = load_lm(root / "models" / "tiny-gpt2")
    ps = build_probe_set(lm, M.write_stories(root / "stories.txt", 200), per_tag=4, context=12, agreement=False)
    ps.save(root / "probes" / "tiny-set")
    c = ArrayCache(cache)
    layer_entry(lm, ps, 1, LMAlignOptions(top=25, steps=50), c)
    c.close()
    return root


@pytest.fixture(scope="session")
def browser_world(browser_runs, tmp_path_factory) -> tuple[Path, Path]:
    """``(cache, lm)``: a result cache holding the MLP's default grokking sweep and the LM
    page's default layer, and the folder with ``models/`` and ``probes/`` of the tiny LM.
    Built once per session (``shared_once``); every server of the suite shares the cache
    (values are pure functions of their keys)."""
    from _shared import shared_once
    from entk_core.families.run import open_run
    from entk_core.store.cache import ArrayCache
    from entk_core.workflows import alignment

    def cache_in(base: Path) -> Path:  # ENTK_BROWSER_CACHE: an existing cache, reused across sessions
        return Path(os.environ.get("ENTK_BROWSER_CACHE") or base / "cache")

    def build(base: Path) -> None:
        cache = cache_in(base)
        (base / "lm").mkdir()
        _lm_world(base / "lm", cache)
        c = ArrayCache(cache)
        alignment.grokking_sweep(open_run(browser_runs / MLP), "full", cache=c)  # the Grokking page's default view
        c.close()

    base = shared_once(tmp_path_factory, "browser-world", build)
    return cache_in(base), base / "lm"


@pytest.fixture(scope="session")
def browser(chromium_ok):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def pytest_sessionfinish(session, exitstatus):
    import browser_util
    if browser_util.WAITS["idle"][0]:
        print(f"\nbrowser waits (quiet {browser_util.QUIET_MS} ms): " + ", ".join(
            f"{k} {n} in {t:.1f} s" for k, (n, t) in browser_util.WAITS.items()))
