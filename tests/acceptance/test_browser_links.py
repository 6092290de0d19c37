"""A link is data, never markup or a path (issue 22 §0, §2, §5), in a real browser: Debian's
chromium driven by Playwright against one server (normal mode) on a free loopback port.

* Hostile values for every parameter documented in ``docs/url-parameters.md`` (markdown images
  and links, a backtick break-out with ``<script>`` and ``<img>``, traversal, a very long
  string) are replayed on every page: no request leaves 127.0.0.1, no planted link or image
  appears, no script runs, no traceback, no dialog; the value is shown as the text it is.
* A linked path (``..``, an absolute path, a symlink in the runs folder pointing out) never
  opens a run outside the runs folder; no page offers a text box for a path.
* ``/spectrum?...`` answers its own path (no "Page not found" dialog) as ``/?...`` does.

The server's runs folder is a copy of the suite's runs plus a symlink to a run outside it;
the result cache is the suite's (``tests/acceptance/conftest.py``).
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import quote, urlparse

import pytest

from browser_util import (MLP, PAGE_RUN, REPO, TMS, StreamlitServer, browser_env, nav_links, new_context, open_expanders,
                          open_page, plot_titles)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

EVIL = "evil.invalid"
HOSTILE = [
    f"/![p](http://{EVIL}/md.png)",
    f"[Sign in again](http://{EVIL}/login)",
    f"x` ![i](http://{EVIL}/tick.png) <script>window.__pwned=1</script><img src=http://{EVIL}/i.png> `",
    "../../../../etc/passwd",
    "A" * 1500 + f"![long](http://{EVIL}/long.png)",
]
OUTSIDE = "canary-outside-run"  # a real run, outside the runs folder


def documented_parameters() -> list[str]:
    """The parameters of the table in docs/url-parameters.md."""
    text = (REPO / "docs" / "url-parameters.md").read_text()
    return re.findall(r"^\| `(\w+)` \|", text, flags=re.M)


@pytest.fixture(scope="module")
def world(browser_runs, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("links")
    shutil.copytree(browser_runs, root / "runs")
    shutil.copytree(browser_runs / TMS, root / "outside" / OUTSIDE)
    (root / "runs" / "escape-link").symlink_to(root / "outside" / OUTSIDE, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def server(world, browser_world):
    cache, lm = browser_world
    with StreamlitServer(REPO, browser_env(world / "runs", cache, lm), world / "streamlit.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def pages(browser, server) -> list[str]:
    """Every page's URL path, from the sidebar's menu (family pages included)."""
    ctx, pg, _ = new_context(browser, server)
    try:
        open_page(pg, server.url + "/", start=False)
        return [urlparse(href).path.strip("/") for _, href in nav_links(pg)]
    finally:
        ctx.close()


def _planted(page) -> list[str]:
    """Links and images pointing at the hostile host, scripts that ran, tracebacks, dialogs."""
    found = page.evaluate("""(evil) => {
        const out = [], here = location.host;
        const away = (u) => { try { const x = new URL(u, location.href);
                                    if (x.protocol === 'http:' || x.protocol === 'https:') return x.host !== here;
                                    return !['data:', 'blob:', 'about:'].includes(x.protocol); }
                              catch (e) { return true; } };
        for (const a of document.querySelectorAll('a[href]'))
            if (away(a.getAttribute('href')) || /sign in again/i.test(a.textContent))
                out.push('link: ' + a.outerHTML.slice(0, 160));
        for (const i of document.querySelectorAll('img[src], image, source[src], iframe, object, embed')) {
            const s = i.getAttribute('src') || i.getAttribute('href') || i.getAttribute('xlink:href')
                      || i.getAttribute('data') || '';
            if (s.includes(evil) || (s && away(s))) out.push('image: ' + i.outerHTML.slice(0, 160)); }
        if (window.__pwned) out.push('a planted script ran');
        return out; }""", EVIL)
    found += ["traceback: " + (e.text_content() or "")[:200] for e in page.get_by_test_id("stException").all()]
    found += ["dialog: " + (d.text_content() or "")[:200] for d in page.get_by_role("dialog").all()]
    return found


def _messages(page) -> str:
    """The text of every message box, without the invisible word joiners plain() puts into
    autolink look-alikes."""
    text = " ".join(e.text_content() or "" for e in page.locator('[data-testid^="stAlertContent"]').all())
    return text.replace("\u2060", "")


def test_hostile_values_for_every_parameter_on_every_page(browser, server, pages):
    params = documented_parameters()
    assert {"run", "epoch", "group", "families", "compare", "model", "probes"} <= set(params), params
    ctx, page, watch = new_context(browser, server)
    try:
        for p_i, path in enumerate(pages):
            for j in range(2):  # every page: a hostile run, then its own run with every other value hostile
                shift = 2 * p_i + j  # over the pages, every parameter meets every hostile value
                query = {name: HOSTILE[(i + shift) % len(HOSTILE)] for i, name in enumerate(params)}
                query["run"] = HOSTILE[shift % len(HOSTILE)] if j == 0 else PAGE_RUN.get(path, MLP)
                url = f"{server.url}/{path}?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
                open_page(page, url, start=False)
                where = f"/{path} ({'hostile run' if j == 0 else 'hostile values'})"
                assert not _planted(page), (where, _planted(page))
                shown = _messages(page)
                if j == 0:  # the run's value is quoted as the text it is
                    assert "from the link" in shown and query["run"][:40] in shown, (where, shown[:500])
                assert not re.search(r"Traceback \(most recent call last\)", page.content()), where
        watch.check()  # no request to another host, no console error
    finally:
        ctx.close()


#: (page, {parameter: a path from the link}); ``None``: the absolute path of the outside run
LINKED_PATHS = [
    ("", {"run": f"../outside/{OUTSIDE}", "compare": f"../outside/{OUTSIDE}@0"}),
    ("alignment", {"run": None}),
    ("grokking", {"run": "escape-link", "compare": "escape-link@1500"}),  # a symlink in the runs folder, pointing out
    ("language-model", {"model": "../../etc", "probes": "/etc"}),
]


def test_a_linked_path_never_opens_anything_outside_the_server_folders(browser, server, world):
    ctx, page, watch = new_context(browser, server)
    try:
        for path, values in LINKED_PATHS:
            values = {k: v or str(world / "outside" / OUTSIDE) for k, v in values.items()}
            query = {"run": MLP, **values}
            open_page(page, f"{server.url}/{path}?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items()),
                      start=False)
            where = f"/{path}?{values}"
            shown = _messages(page)
            for name in values:  # one message per refused value
                assert f"{name} " in shown or f"{name}=" in shown, (where, name, shown[:600])
            assert shown.count("from the link") >= len(values), (where, shown[:600])
            # the outside run is a TMS run: had it been opened, its title or β control would show
            titles = " ".join(plot_titles(page))
            assert "Toy Models" not in titles and "β = " not in titles, (where, titles)
            run_box = page.get_by_role("combobox", name="Run", exact=True).input_value()
            assert run_box == MLP, (where, run_box)
        # the symlinked run is listed as refused, never opened
        side = " ".join(e.text_content() or "" for e in page.get_by_test_id("stSidebar").locator(
            '[data-testid="stAlertContentError"]').all())
        assert "escape-link" in side and "outside the runs folder" in side, side
        watch.check()
    finally:
        ctx.close()


def test_every_page_answers_its_own_path_and_takes_no_typed_path(browser, server, pages):
    """``/spectrum?...`` as well as ``/?...``: no "Page not found" dialog, the link's view shown;
    and no page (expanders open) has a text box for a file, path or folder."""
    ctx, page, watch = new_context(browser, server)
    try:
        for url in (f"{server.url}/spectrum?run={MLP}&top=50", f"{server.url}/?run={MLP}&top=50"):
            open_page(page, url, start=False)
            assert not page.get_by_role("dialog").count(), (url, [d.text_content() for d in page.get_by_role("dialog").all()])
            assert any(re.search(r"eNTK \(\w+\), epoch \d+", t) for t in plot_titles(page)), url
            assert page.get_by_role("spinbutton", name=re.compile(r"^Eigenvalues k")).input_value() == "50", url
            assert urlparse(page.url).path == urlparse(url).path, (url, page.url)
        for path in pages:
            open_page(page, f"{server.url}/{path}?run={PAGE_RUN.get(path, MLP)}", start=False)
            assert not page.get_by_role("dialog").count(), path
            assert urlparse(page.url).path == f"/{path}", (path, page.url)
            # no page offers a text box for a path (files are chosen from the server's folders)
            open_expanders(page)
            boxes = [b.get_attribute("aria-label") or "" for b in page.get_by_role("textbox").all()]
            assert not [b for b in boxes if re.search(r"file|path|folder|director|stories", b, re.I)], (path, boxes)
        watch.check()
    finally:
        ctx.close()
