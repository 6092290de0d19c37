"""Viewer mode in a real browser (issue 22 §1): one server started as
``streamlit run app.py -- --viewer`` (the documented flag; ``ENTK_VIEWER=1`` is the same
switch, :mod:`entk_core.ui.mode`) on a free loopback port, over the suite's runs and cache.

* Every page, for its own family and for another one (where owners are offered training),
  shows "viewer mode" in the sidebar and offers no train, build, import, convert, clear, delete
  or upload control, no file uploader and no text box; the result-cache panel is gone. (A
  button carrying its estimate, "Start (12 s)", is a computation allowed under the limit.)
* Cached views work: the Spectrum and Grokking pages draw their charts.
* An uncached computation estimated above ``ENTK_VIEWER_MAX_SECONDS`` is refused in one line
  saying what was asked and the estimate, with no Start button.

A screenshot of the viewer-mode Spectrum page goes to ``screenshots/viewer-mode.png``
(``ENTK_SCREENSHOTS=docs/screenshots`` to refresh the README's).
"""
from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest

from browser_util import (MLP, PAGE_RUN, REPO, SHOTS, TMS, StreamlitServer, browser_env, chart_count, nav_links, open_expanders,
                          new_context, open_page, screenshot)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ESTIMATED = re.compile(r"\(~?[\d.]+ (s|min)\)$")
OWNER_CONTROL = re.compile(r"\b(train|build|import|convert|clear|delete|remove|upload)\b", re.I)


@pytest.fixture(scope="module")
def server(browser_runs, browser_world, tmp_path_factory):
    cache, lm = browser_world
    log = tmp_path_factory.mktemp("viewer") / "streamlit.log"
    env = browser_env(browser_runs, cache, lm, ENTK_VIEWER_MAX_SECONDS="3")
    with StreamlitServer(REPO, env, log, extra_args=["--", "--viewer"]) as srv:
        yield srv


def _owner_controls(page) -> list[str]:
    """Buttons and inputs a visitor must not get, with every expander opened."""
    open_expanders(page)
    # a button carrying its estimate ("… (~3 s)") is a computation viewer mode allowed (under the limit)
    found = [f"button {n!r}" for n in (b.text_content() or "" for b in page.get_by_role("button").all())
             if OWNER_CONTROL.search(n) and not ESTIMATED.search(n)]
    found += [f"text box {b.get_attribute('aria-label')!r}" for b in page.get_by_role("textbox").all()]
    found += ["file uploader"] * page.get_by_test_id("stFileUploader").count()
    found += ["download of a server-rendered figure: " + (b.text_content() or "")
              for b in page.get_by_test_id("stDownloadButton").all() if re.match(r"(PNG|SVG):", b.text_content() or "")]
    if page.get_by_text("Result cache", exact=True).count():
        found.append("the result-cache panel")
    return found


def test_viewer_mode_offers_no_owner_control_on_any_page(browser, server):
    ctx, page, watch = new_context(browser, server)
    try:
        open_page(page, server.url + "/", start=False)
        paths = [href.split("?")[0] for _, href in nav_links(page)]
        assert len(paths) >= 5, paths
        seen = []
        for href in paths:
            path = urlparse(href).path.strip("/")
            runs = [PAGE_RUN.get(path, MLP)] + ([MLP] if path in PAGE_RUN else [TMS] if path == "grokking" else [])
            for run in runs:  # its own family, and another (where an owner would be offered training)
                open_page(page, f"{href}?run={run}", start=False)
                where = f"/{path}?run={run}"
                side = page.get_by_test_id("stSidebar").text_content() or ""
                assert "viewer mode" in side, (where, side[:300])
                assert not _owner_controls(page), (where, _owner_controls(page))
                assert not page.get_by_test_id("stException").count(), where
                seen.append(where)
        # cached views work for a visitor: the spectrum, and the grokking sweep from the cache
        for url in (f"{server.url}/?run={MLP}", f"{server.url}/grokking?run={MLP}"):
            open_page(page, url, start=False)
            assert chart_count(page) >= 2, url
        open_page(page, f"{server.url}/spectrum?run={MLP}&vector=3", start=False)
        screenshot(page, SHOTS / "viewer-mode.png")
        watch.check()
        print("\nchecked " + ", ".join(seen))
    finally:
        ctx.close()


def test_a_long_uncached_computation_is_refused_in_one_line(browser, server):
    """The flat-reduction spectrum of the p = 29 MLP is estimated at 13 s on a quiet machine (the limit is
    3 s here): one line with what was asked and the estimate, and nothing to start."""
    ctx, page, watch = new_context(browser, server)
    try:
        open_page(page, f"{server.url}/?run={MLP}&reduction=flat", start=False)
        lines = [e.text_content() or "" for e in page.get_by_test_id("stAlertContentInfo").all()]
        refused = [t for t in lines if "viewer mode" in t and "would take about" in t]
        assert len(refused) == 1, lines
        m = re.search(r"the eNTK spectrum is not cached and would take about (\d+) s \(limit 3 s\)", refused[0])
        assert m and int(m.group(1)) > 3, refused
        assert not page.get_by_role("button", name=re.compile(r"^Start")).count()
        watch.check()
    finally:
        ctx.close()
