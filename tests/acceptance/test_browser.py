"""Real-browser end-to-end tests: Debian's chromium, driven by Playwright, against the
dashboard served by ``python -m streamlit run app.py`` on a free loopback port.

Runs are trained once per session into a temporary runs folder (a modular-addition MLP,
p = 29, and, when their families are registered, a TMS run and a short Transformer run).
Every page listed in the sidebar navigation is visited (new pages are picked up
automatically): the page must draw its Plotly charts with the expected titles, show no
exception and no st.error, and keep doing so when the run, the checkpoint and the page's
own sliders are moved. One screenshot per page goes to ``screenshots/`` (gitignored).

Without chromium the tests are skipped locally, and FAIL under CI (``CI=true``).
``ENTK_BROWSER_RUNS=DIR`` copies already trained runs from DIR (training then only
completes what is missing), to iterate on the pages quickly.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from browser_util import (CHROMIUM, CHROMIUM_ARGS, StreamlitServer, after_interaction, chart_count,
                          chromium_missing_reason, error_texts, info_texts, nav_links, plot_titles,
                          press_slider, screenshot, select_option, sliders, wait_idle)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "screenshots"

#: Runs trained for the suite: (family, run name, config overrides). A family that is not
#: registered is skipped (its pages then show their "no run of this family" state).
RUNS = [
    ("modadd-mlp", "modadd-mlp-p29-seed0", {"p": 29, "width": 512, "epochs": 500, "checkpoint_every": 50, "seed": 0}),
    ("tms", "tms-m10-s0.9-seed0", {"m": 10, "sparsity": 0.9, "epochs": 1500, "checkpoint_every": 500, "seed": 0}),
    ("modadd-transformer", "modadd-transformer-p29-seed2",
     {"p": 29, "epochs": 40, "checkpoint_every": 20, "seed": 2}),
]

#: Title fragments expected on known pages (by URL path); any other page needs one titled chart.
EXPECTED_TITLES = {
    "spectrum": [r"eNTK \(\w+\), epoch \d+"],
    "grokking": [r"Train and test accuracy", r"eNTK spectrum at epoch \d+", r"Overlap of"],
    "alignment": [r"eNTK spectrum"],
    "tms": [r"Flattened eNTK spectrum, β = "],
    "transformer": [r"Fourier power of W_E"],
}


@pytest.fixture(scope="session")
def chromium_ok():
    why = chromium_missing_reason()
    if why:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser tests cannot run under CI: {why}")
        pytest.skip(f"browser tests skipped: {why}")


@pytest.fixture(scope="session")
def browser_runs(tmp_path_factory, chromium_ok) -> Path:
    """A runs folder with the suite's trained runs (families that are not registered are left out)."""
    from entk_core.families.base import get_family, list_families
    from entk_core.workflows.training import train

    root = tmp_path_factory.mktemp("browser") / "runs"
    reuse = os.environ.get("ENTK_BROWSER_RUNS")  # a folder kept from an earlier session: skips training
    if reuse:
        shutil.copytree(reuse, root)
    for family, name, cfg in RUNS:
        if family not in list_families():
            continue
        fam = get_family(family)
        fields = {f for f in fam.Config.__dataclass_fields__}
        train(fam, fam.Config(**{k: v for k, v in cfg.items() if k in fields}), root / name)
    return root


@pytest.fixture(scope="session")
def server(browser_runs, tmp_path_factory):
    cache = tmp_path_factory.mktemp("browser-cache")
    env = {"ENTK_RUNS_DIR": str(browser_runs), "ENTK_CACHE_DIR": str(cache), "ENTK_PROGRESS": "off"}
    with StreamlitServer(REPO, env, cache.parent / "streamlit.log") as srv:
        yield srv


@pytest.fixture(scope="session")
def browser(chromium_ok):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    ctx.close()


def _check_page(page, where: str, server) -> list[str]:
    dialogs = [d.text_content() or "" for d in page.get_by_role("dialog").all()]
    assert not dialogs, f"{where}: a dialog is open: {dialogs}"
    errs = error_texts(page)
    assert not errs, f"{where}: {errs}\nserver log:\n{server.log_tail(15)}"
    return plot_titles(page)


def _open(page, url: str) -> None:
    page.goto(url)
    wait_idle(page)


def test_every_page_renders_and_reacts(page, server, browser_runs):
    t_start = time.perf_counter()
    _open(page, server.url + "/")
    links = nav_links(page)
    assert len(links) >= 1, "no page in the sidebar navigation"
    run_names = sorted(p.name for p in browser_runs.iterdir())
    report = []
    for label, href in links:
        path = urlparse(href).path.strip("/") or label.lower()  # the default page is served at /
        t0 = time.perf_counter()
        _open(page, href)
        where = f"page {label!r} ({href})"
        titles = _check_page(page, where, server)
        expected = EXPECTED_TITLES.get(path)

        def satisfied() -> bool:
            if expected:  # a known page: all its titles
                return all(any(re.search(pat, t) for t in titles) for pat in expected)
            return chart_count(page) > 0 and not info_texts(page)  # a new page: charts, no "wrong run" info

        # a page for another family says so: pick the runs in the sidebar until it draws its charts
        for name in run_names:
            if satisfied():
                break
            if f"run={name}" in page.url:
                continue
            select_option(page, "Run", name)
            after_interaction(page)
            titles = _check_page(page, f"{where} with run {name}", server)
        assert chart_count(page) > 0, f"{where}: no chart with any run; infos: {info_texts(page)}"
        for pattern in expected or [r"\S"]:
            assert any(re.search(pattern, t) for t in titles), f"{where}: no title matching {pattern!r} in {titles}"

        # the checkpoint slider (sidebar): one step back, the charts follow
        side = sliders(page, "sidebar")
        if side:
            before, after = press_slider(page, side[0], "ArrowLeft")
            assert before != after, f"{where}: the checkpoint slider did not move"
            moved = _check_page(page, f"{where} after the checkpoint moved to {after}", server)
            assert chart_count(page) > 0, f"{where}: charts vanished after moving the checkpoint"
            assert f"epoch={after}" in page.url, f"{where}: the URL does not follow the checkpoint ({page.url})"
            if path == "spectrum":
                assert any(f"epoch {after}" in t for t in moved), moved
        # the page's own sliders (epoch scrubbers, β...): one step each
        for i, thumb in enumerate(sliders(page, "main")[:3]):
            before, after = press_slider(page, thumb, "ArrowRight" if i % 2 == 0 else "ArrowLeft")
            _check_page(page, f"{where} after slider {i} moved {before} -> {after}", server)
            assert chart_count(page) > 0, f"{where}: charts vanished after moving slider {i}"
        screenshot(page, SHOTS / f"{path}.png")
        report.append(f"{label}: {chart_count(page)} charts, {time.perf_counter() - t0:.1f} s")
    print("\n" + "\n".join(report) + f"\ntotal {time.perf_counter() - t_start:.1f} s")


def test_switching_runs_on_the_spectrum_page(page, server, browser_runs):
    """Every trained run (every family) draws its spectrum on the generic page."""
    _open(page, server.url + "/")  # the default page (Spectrum) is served at /
    names = sorted(p.name for p in browser_runs.iterdir())
    for name in reversed(names):  # the first one is already shown
        shown = select_option(page, "Run", name)
        assert sorted(shown) == names
        after_interaction(page)
        titles = _check_page(page, f"spectrum with run {name}", server)
        assert any(re.search(r"eNTK \(\w+\), epoch \d+", t) for t in titles), (name, titles)
        assert f"run={name}" in page.url


def test_bad_link_shows_an_error_not_a_traceback(page, server):
    """A link with a path-traversal run and a missing epoch: one-line errors, the view falls back."""
    _open(page, server.url + "/?run=..%2F..%2Fetc&epoch=7")
    errs = [e.text_content() or "" for e in page.locator('[data-testid="stAlertContentError"]').all()]
    assert any("not a run name inside the runs folder" in e for e in errs), errs
    assert not page.locator('[data-testid="stException"]').count()
    assert chart_count(page) > 0
