"""Real-browser end-to-end tests: Debian's chromium, driven by Playwright, against the
dashboard served by ``python -m streamlit run app.py`` on a free loopback port.

Runs are trained once per session into a temporary runs folder (a modular-addition MLP,
p = 29, a TMS run and a short Transformer run). What is checked:

* every page listed in the sidebar navigation renders its charts for its family, reacts to
  the checkpoint slider and its own sliders, with no exception and no st.error; a screenshot
  of each goes to ``screenshots/`` (``ENTK_SCREENSHOTS=docs/screenshots`` to refresh the README's);
* every page makes no request to another host and logs no console error (the two 404 probes of
  ``<page>/_stcore/health|host-config`` that Streamlit's frontend sends before the root ones on a
  deep link are upstream behaviour and are told apart by their URL);
* the first deep link right after a server start opens no "Page not found" dialog;
* each URL-mirrored control round-trips: set it in the page, open the resulting link in
  another browser profile (a collaborator's), read the widget back;
* Back and Forward step through views, one history entry per action;
* clicking an eigenvalue shows its eigenvector on every page with a spectrum;
* compare (principal angles) and export (CSV, NPZ, PNG, SVG) work;
* Stop ends a long computation: its worker process is gone and the CPU idle within seconds.

Without chromium the tests are skipped locally, and FAIL under CI (``CI=true``).
``ENTK_BROWSER_RUNS=DIR`` copies already trained runs from DIR (training then only
completes what is missing) and ``ENTK_BROWSER_CACHE=DIR`` reuses a result cache, to iterate
on the pages quickly.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from browser_util import (ANIMATION_STEP_JS, MLP, REPO, SHOTS, TF, TMS, StreamlitServer, after_interaction, chart_count, error_texts,
                          info_texts, nav_links, plot_titles, press_slider, screenshot, sliders)
from browser_util import browser_env as _env
from browser_util import new_context as _context
from browser_util import open_page as _open

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: Title fragments expected on each page (by URL path), with the run that page is for.
EXPECTED = {
    "spectrum": (MLP, [r"eNTK \(\w+\), epoch \d+", r"^eigenvector \d+"]),
    "grokking": (MLP, [r"eNTK spectrum at epoch \d+", r"Overlap of .* and accuracy", r"^eigenvector \d+ at epoch"]),
    "alignment": (MLP, [r"eNTK spectrum", r"phase-insensitive correlation"]),
    "tms": (TMS, [r"Flattened eNTK spectrum, β = ", r"over the features"]),
    "transformer": (TF, [r"Fourier power of W_E", r"eigenvector \d+ over the \(a, b\) pairs"]),
    "language-model": (MLP, [r"K̃ spectrum, layer 1 ", r"Direction \d+: scores by tag"]),
}


@pytest.fixture(scope="session")
def server(browser_runs, browser_world):
    cache, lm = browser_world
    with StreamlitServer(REPO, _env(browser_runs, cache, lm), cache.parent / "streamlit.log") as srv:
        yield srv


@pytest.fixture
def page(browser, server):
    ctx, pg, watch = _context(browser, server)
    yield pg
    watch.check()
    ctx.close()


@pytest.fixture
def fresh_page(browser, server):
    """A new tab, with an empty history."""
    ctx, pg, watch = _context(browser, server, fresh=True)
    yield pg
    watch.check()
    ctx.close()


def _check_page(page, where: str, server) -> list[str]:
    dialogs = [d.text_content() or "" for d in page.get_by_role("dialog").all()]
    assert not dialogs, f"{where}: a dialog is open: {dialogs}"
    errs = error_texts(page)
    assert not errs, f"{where}: {errs}\nserver log:\n{server.log_tail(15)}"
    return plot_titles(page)


def _query(page) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlparse(page.url).query, keep_blank_values=True).items()}


# --------------------------------------------------------------------- tests
def test_first_deep_link_after_server_start_opens_no_dialog(browser, browser_runs, browser_world, tmp_path):
    """streamlit#8860: the very first visit of a fresh server is a deep link to a non-default page
    (the server is new; its result cache is the suite's, so the page draws without recomputing)."""
    with StreamlitServer(REPO, _env(browser_runs, browser_world[0]), tmp_path / "st.log") as srv:
        ctx, pg, watch = _context(browser, srv)
        try:
            _open(pg, f"{srv.url}/transformer?run={TF}&epoch=20")
            assert not pg.get_by_role("dialog").count(), [d.text_content() for d in pg.get_by_role("dialog").all()]
            assert any("Fourier power of W_E" in t for t in _check_page(pg, "first deep link", srv))
            _open(pg, f"{srv.url}/tms?run={TMS}")  # a later deep link too
            assert not pg.get_by_role("dialog").count()
            watch.check()
        finally:
            ctx.close()


_STALE_FADE_JS = """() => {
    // an element container and an expander's summary styled as Streamlit styles stale ones
    // (a 1 s fade after 0.5 s): [duration, delay] of each
    const d = document.createElement('div');
    d.setAttribute('data-testid', 'stElementContainer');
    const x = document.createElement('div');
    x.setAttribute('data-testid', 'stExpander');
    x.innerHTML = '<details><summary>s</summary></details>';
    document.body.append(d, x);
    const out = [d, x.querySelector('summary')].flatMap(e => {
        e.style.transition = 'opacity 1s ease-in 0.5s';
        const s = getComputedStyle(e);
        return [s.transitionDuration, s.transitionDelay];
    });
    d.remove(); x.remove();
    return out;
}"""


def test_every_page_renders_and_reacts(page, server):
    t_start = time.perf_counter()
    _open(page, server.url + "/")
    links = nav_links(page)
    assert len(links) >= 5, links
    report = []
    for label, href in links:
        path = urlparse(href).path.strip("/") or "spectrum"
        run, expected = EXPECTED.get(path, (MLP, [r"\S"]))
        t0 = time.perf_counter()
        _open(page, href.split("?")[0] + f"?run={run}")
        where = f"page {label!r}"
        titles = _check_page(page, where, server)
        for pattern in expected:
            assert any(re.search(pattern, t) for t in titles), f"{where}: no title matching {pattern!r} in {titles}"
        # stale elements dim after Streamlit's 0.5 s with no fade (entk_core.ui.style)
        assert page.evaluate(_STALE_FADE_JS) == ["0s", "0.5s"] * 2, where
        side = sliders(page, "sidebar")
        if side:
            before, after = press_slider(page, side[0], "ArrowLeft")
            assert before != after, f"{where}: the checkpoint slider did not move"
            _check_page(page, f"{where} after the checkpoint moved to {after}", server)
            assert chart_count(page) > 0
            assert _query(page).get("epoch") == str(after), f"{where}: the URL does not follow ({page.url})"
        for i, thumb in enumerate(sliders(page, "main")[:2]):
            before, after = press_slider(page, thumb, "ArrowRight" if i % 2 == 0 else "ArrowLeft")
            _check_page(page, f"{where} after slider {i} moved {before} -> {after}", server)
        screenshot(page, SHOTS / f"{path}.png")
        report.append(f"{label}: {chart_count(page)} charts, {time.perf_counter() - t0:.1f} s")
    print("\n" + "\n".join(report) + f"\ntotal {time.perf_counter() - t_start:.1f} s")


def test_other_families_say_not_available(page, server):
    for path, run in (("grokking", TMS), ("tms", MLP), ("transformer", MLP)):
        _open(page, f"{server.url}/{path}?run={run}")
        _check_page(page, path, server)
        assert any("not available for this family" in t for t in info_texts(page)), (path, info_texts(page))


def test_alignment_is_generic_over_families(page, server):
    """The Alignment page asks the run's family: the Transformer's key-frequency families, TMS's
    feature indicators with its β control, the rotation control only for the MLP (which
    declares a rotation inside a cliff)."""
    main = page.get_by_test_id("stMain")
    for run, families, rotation, beta in ((TF, ["axis_diff", "axis_sum", "diff", "sum"], False, False),
                                          (TMS, ["features"], False, True), (MLP, ["a", "b", "diff", "sum"], True, False)):
        _open(page, f"{server.url}/alignment?run={run}")
        titles = _check_page(page, f"alignment of {run}", server)
        assert any("phase-insensitive correlation" in t for t in titles), (run, titles)
        assert _widget_value(page, "multi", "Families (stacked rows)") == families, run
        assert main.get_by_role("switch", name="After rotation", exact=True).count() == int(rotation), run
        assert main.get_by_test_id("stSlider").filter(has_text="Importance β").count() == int(beta), run


# -------------------------------------------------- URL round trips
def _widget_value(page, kind: str, label: str):
    main = page.get_by_test_id("stMain")
    if kind == "select":
        return page.get_by_role("combobox", name=label, exact=True).input_value()
    if kind == "number":
        return main.get_by_role("spinbutton", name=label, exact=True).input_value()
    if kind == "toggle":
        return main.get_by_role("switch", name=label, exact=True).is_checked()
    if kind == "slider":
        return main.get_by_role("slider").first.get_attribute("aria-valuetext")
    if kind == "multi":
        box = main.get_by_test_id("stMultiSelect").filter(has_text=label)
        return sorted(box.locator(".react-aria-ComboBox [data-tag] > span[title]").all_text_contents())
    raise ValueError(kind)


def _set_widget(page, kind: str, label: str, value) -> None:
    main = page.get_by_test_id("stMain")
    if kind == "select":  # type to filter: long option lists are virtualised
        box = page.get_by_role("combobox", name=label, exact=True)
        box.click()
        box.fill(value)
        page.get_by_role("option", name=value, exact=True).click()
    elif kind == "number":
        box = main.get_by_role("spinbutton", name=label, exact=True)
        box.fill(str(value))
        box.press("Enter")
    elif kind == "toggle":
        main.get_by_test_id("stCheckbox").filter(has_text=label).locator("label").first.click()
    elif kind == "slider":
        main.get_by_role("slider").first.focus()
        page.keyboard.press(value)
    elif kind == "multi":  # remove the first selected tag
        box = main.get_by_test_id("stMultiSelect").filter(has_text=label)
        box.locator(".react-aria-ComboBox [data-tag] button").first.click()
    after_interaction(page)


#: (page, run, widget kind, label, new value, URL parameter)
ROUND_TRIPS = [
    ("spectrum", MLP, "select", "Layer group", "net.3 · W2, hidden → output", "group"),
    ("spectrum", MLP, "select", "Reduction", "mean", "reduction"),
    ("spectrum", MLP, "number", "Eigenvalues k (1–841)", 150, "top"),
    ("spectrum", MLP, "toggle", "Log scale", None, "log"),
    ("spectrum", MLP, "number", "Eigenvector index", 7, "vector"),
    ("spectrum", MLP, "select", "Compare with", "epoch 250 of this run", "compare"),
    ("grokking", MLP, "select", "Window", "cliff 1 [1–56]", "window"),
    ("grokking", MLP, "multi", "Families", None, "families"),
    ("alignment", MLP, "select", "Cliff", None, "cliff"),
    ("alignment", MLP, "toggle", "After rotation", None, "rotation"),
    ("alignment", MLP, "select", "Cliffs detected in", "net.0 · W1, input → hidden", "windows"),
    ("alignment", TMS, "slider", "Importance β", "ArrowRight", "beta"),
    ("tms", TMS, "slider", "β", "ArrowRight", "beta"),
    ("tms", TMS, "number", "Eigenvalues k (10–300)", 60, "top"),
    ("transformer", TF, "select", "Layer group", "attn.OV · W_O + W_V, the OV circuit", "group"),
    ("transformer", TF, "select", "Modes", None, "window"),  # the second block (its bounds depend on the key frequencies found)
    ("language-model", MLP, "number", "Contexts shown", 10, "contexts"),
]


def test_every_control_round_trips_through_the_url(browser, server):
    """Per page and run: each control is set in turn (its widget changes and its parameter
    enters the URL), then the page's final link opens in another browser profile (a
    collaborator's) with every control as it was left."""
    groups: dict[tuple[str, str], list[tuple]] = {}
    for path, run, *control in ROUND_TRIPS:
        groups.setdefault((path, run), []).append(tuple(control))
    ctx, page, watch = _context(browser, server)
    try:
        for (path, run), controls in groups.items():
            _open(page, f"{server.url}/{'' if path == 'spectrum' else path}?run={run}")
            for kind, label, value, param in controls:
                before = _widget_value(page, kind, label)
                if kind == "select" and value is None:  # the next option
                    box = page.get_by_role("combobox", name=label, exact=True)
                    box.click()
                    page.wait_for_timeout(300)
                    if not page.get_by_role("option").count():  # a click on a focused box may not open it
                        box.press("ArrowDown")
                    page.get_by_role("option").first.wait_for()
                    opts = [o.text_content() for o in page.get_by_role("option").all()]
                    page.keyboard.press("Escape")
                    others = [o for o in opts if o != before]
                    assert others, (path, label, before, opts)
                    value = others[0]
                _set_widget(page, kind, label, value)
                _check_page(page, f"{path}: {label}", server)
                set_to = _widget_value(page, kind, label)
                assert set_to != before, (path, label, before, set_to)
                assert param in _query(page), (path, label, param, page.url)
            link = page.url
            final = {label: _widget_value(page, kind, label) for kind, label, _, _ in controls}
            ctx2, page2, watch2 = _context(browser, server, profile="collaborator")
            try:
                _open(page2, link)
                restored = {label: _widget_value(page2, kind, label) for kind, label, _, _ in controls}
                assert restored == final, (path, run, link)
                watch2.check()
            finally:
                ctx2.close()
        watch.check()
    finally:
        ctx.close()


def test_invalid_link_values_show_one_message_and_the_default(page, server):
    _open(page, f"{server.url}/?run={MLP}&top=99999&group=nope")
    warnings = [w.text_content() for w in page.get_by_test_id("stAlertContentWarning").all()]
    assert len([w for w in warnings if "top=99999" in w]) == 1 and any("group=nope" in w for w in warnings), warnings
    assert page.get_by_role("combobox", name="Layer group").input_value().startswith("full")
    assert not page.locator('[data-testid="stException"]').count()


def test_bad_link_shows_an_error_not_a_traceback(page, server):
    _open(page, server.url + "/?run=..%2F..%2Fetc&epoch=7")
    msgs = [e.text_content() or "" for e in page.get_by_test_id("stAlertContentWarning").all()]
    assert any("not a run name inside the runs folder" in e for e in msgs), msgs
    assert not page.locator('[data-testid="stException"]').count()
    assert chart_count(page) > 0


def test_back_and_forward_step_through_views(fresh_page, server):
    page = fresh_page
    _open(page, f"{server.url}/?run={MLP}")
    start = page.evaluate("history.length")
    _set_widget(page, "select", "Layer group", "net.3 · W2, hidden → output")
    _set_widget(page, "number", "Eigenvalues k (1–841)", 120)
    assert page.evaluate("history.length") == start + 2, "one history entry per action"
    page.go_back()
    after_interaction(page)
    assert _query(page).get("group") == "net.3" and "top" not in _query(page)
    assert _widget_value(page, "number", "Eigenvalues k (1–841)") == "200"
    page.go_back()
    after_interaction(page)
    assert _widget_value(page, "select", "Layer group", ).startswith("full")
    page.go_forward()
    after_interaction(page)
    assert _widget_value(page, "select", "Layer group").startswith("net.3")
    # a page switch keeps the view, and Back returns to the page before
    page.get_by_test_id("stSidebar").get_by_test_id("stPageLink-NavLink").filter(has_text="Alignment").click()
    after_interaction(page)
    assert urlparse(page.url).path == "/alignment" and _query(page).get("group") == "net.3", page.url
    page.go_back()
    after_interaction(page)
    assert urlparse(page.url).path == "/" and _query(page).get("group") == "net.3", page.url


def _click_an_eigenvalue(page, chart_index: int = 0) -> int:
    """Click the 6th point of the clickable spectrum (the chart whose legend names the selected
    eigenvalue; its trace with the most points), where Plotly draws it (long spectra are drawn as
    a line without markers, so the point's pixel comes from the chart's own axes); returns that
    point's index."""
    charts = page.locator(".js-plotly-plot")
    chart = next(charts.nth(i) for i in range(charts.count())
                 if "selected: #" in (charts.nth(i).text_content() or ""))
    chart.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    xy = chart.evaluate("""gd => {
        const cds = gd.calcdata.filter(cd => cd.length > 1);
        const cd = cds.reduce((a, b) => (b.length > a.length ? b : a));
        const t = cd[0].trace, xa = gd._fullLayout[t.xaxis.replace('x', 'xaxis')],
              ya = gd._fullLayout[t.yaxis.replace('y', 'yaxis')], p = cd[5];
        const r = gd.getBoundingClientRect();
        return [r.left + xa._offset + xa.c2p(p.x), r.top + ya._offset + ya.c2p(p.y), p.i ?? 5];
    }""")
    page.mouse.move(xy[0] - 3, xy[1])
    page.mouse.click(xy[0], xy[1])
    after_interaction(page)
    return int(xy[2])


def test_clicking_an_eigenvalue_shows_its_vector_on_every_spectrum_page(page, server):
    for path, run, chart in (("spectrum", MLP, 0), ("grokking", MLP, 1), ("alignment", MLP, 1), ("tms", TMS, 0),
                             ("transformer", TF, 1)):
        _open(page, f"{server.url}/{'' if path == 'spectrum' else path}?run={run}&vector=0")
        target = _click_an_eigenvalue(page, chart)
        _check_page(page, path, server)
        shown = page.get_by_test_id("stMain").get_by_role("spinbutton", name="Eigenvector index").input_value()
        assert abs(int(shown) - target) <= 2 and int(shown) > 0, (path, target, shown)  # the nearest point wins
        assert _query(page).get("vector") == shown, (path, page.url)
        titles = plot_titles(page)
        assert any(re.search(rf"(eigenvector {shown}\b|position {shown}\)|direction {shown}\b)", t) for t in titles), (path, titles)
        if path == "grokking":  # typed elsewhere, then the same eigenvalue clicked again: it is shown again
            _set_widget(page, "number", "Eigenvector index", 0)
            after_interaction(page)
            assert _widget_value(page, "number", "Eigenvector index") == "0", path
            again = _click_an_eigenvalue(page, chart)
            assert again == target and _widget_value(page, "number", "Eigenvector index") == shown, (path, again, shown)


def test_compare_and_export(page, server):
    _open(page, f"{server.url}/?run={MLP}&epoch=500&compare=250")
    titles = _check_page(page, "compare", server)
    assert any("Principal angles" in t for t in titles), titles
    page.get_by_text("Export this view (CSV, NPZ, PNG, SVG)").click()
    got = {}
    for label in ("CSV: eigenvalues", "NPZ (all arrays)", "PNG: spectrum", "SVG: spectrum"):
        with page.expect_download(timeout=120_000) as dl:
            page.get_by_role("button", name=label).click()
        got[label] = Path(dl.value.path()).read_bytes()
    assert got["CSV: eigenvalues"].startswith(b"index,value\n0,")
    assert got["NPZ (all arrays)"][:2] == b"PK"
    assert got["PNG: spectrum"][:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in got["SVG: spectrum"][:200]


def _jobs_of(pid: int) -> list[int]:
    """The job workers under the server ``pid`` (forked by its jobs' forkserver, named entk-job)."""
    from entk_core.workflows.jobs import JOB_PROCESS_NAME

    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                kids.setdefault(int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            todo.append(c)
            try:
                if (Path("/proc") / str(c) / "comm").read_text().strip() == JOB_PROCESS_NAME:
                    out.append(c)
            except OSError:
                continue
    return out


def _cpu_s(pid: int) -> float:
    f = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def test_stop_ends_the_work(page, server):
    """The flat-reduction spectrum of the p = 29 MLP is estimated above a minute: it asks first,
    runs in a worker with progress, and Stop kills the worker at once."""
    _open(page, f"{server.url}/?run={MLP}&reduction=flat", start=False)
    info = " ".join(info_texts(page))
    assert "estimated at about" in info, info
    page.get_by_role("button", name=re.compile(r"^Start")).click()
    page.get_by_role("button", name="Stop").wait_for(timeout=60_000)
    deadline = time.time() + 60
    while not _jobs_of(server.proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert _jobs_of(server.proc.pid), "no worker process started"
    time.sleep(2)
    page.get_by_role("button", name="Stop").click()
    t0 = time.time()
    while _jobs_of(server.proc.pid) and time.time() - t0 < 10:
        time.sleep(0.1)
    assert not _jobs_of(server.proc.pid), "the worker survived Stop"
    after_interaction(page)
    c0 = _cpu_s(server.proc.pid)
    time.sleep(2.0)
    assert _cpu_s(server.proc.pid) - c0 < 1.0, "the server still burns CPU after Stop"
    assert any("Stopped" in (w.text_content() or "") for w in page.get_by_test_id("stAlertContentWarning").all())


_SHOWN = ANIMATION_STEP_JS + """
// where the animation's slider is: [its active step, the epoch label it shows]
const animationShown = gd => [gd.layout.sliders[0].active, [...gd.querySelectorAll('.slider-container text')]
    .map(t => t.textContent).find(t => t.startsWith('epoch'))];
"""
_ANIMATION_JS = _SHOWN + """async () => {
    const gd = animatedChart();
    if (!gd) return null;
    const names = gd._transitionData._frames.map(f => f.name);
    const app = document.querySelector('[data-testid="stApp"]');
    let runs = 0;
    const seen = new MutationObserver(() => { if (app.getAttribute('data-test-script-state') === 'running') runs++; });
    seen.observe(app, {attributes: true});
    const steps = gd.layout.sliders[0].steps;
    const lines = [], shown = [];
    for (const i of [0, Math.floor(steps.length / 2)]) {  // clicks on the chart's own slider
        const r = await clickAnimationStep(gd, i);
        // the spectrum's picture as drawn: the href of the first layout image's element
        const href = gd.querySelector('.imagelayer image').getAttribute('href');
        lines.push(href.length + ':' + [...href].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7));
        shown.push([r, ...animationShown(gd)]);
    }
    seen.disconnect();
    return {frames: names, lines: lines, runs: runs, shown: shown};
}"""
_SHOWN_JS = _SHOWN + "() => animationShown(animatedChart())"


def test_dynamics_page_and_the_epoch_animation(page, server):
    """/dynamics draws the MLP's kernel over training; it and Grokking carry the epoch animation,
    one frame per checkpoint, stepped in the page with no script run on the server."""
    for path, shot in (("dynamics", "dynamics-mlp"), ("grokking", "grokking-animation")):
        _open(page, f"{server.url}/{path}?run={MLP}&play=on")  # off by default on Grokking (fast epoch steps)
        titles = _check_page(page, path, server)
        if path == "dynamics":
            for pattern in (r"spectrum over training \(trace, top 200 of 841\)", r"How the kernel moves",
                            r"kernel-regression predictor", r"^Overlap of cliff \d"):
                assert any(re.search(pattern, t) for t in titles), f"{path}: no {pattern!r} in {titles}"
        assert any("played in the browser" in t for t in titles), titles
        out = page.evaluate(_ANIMATION_JS)
        assert out is not None, f"{path}: no animated chart"
        assert out["frames"] == ["0", "50", "100", "150", "200", "250", "300", "350", "400", "450", "500"]
        assert out["lines"][0] != out["lines"][1], out  # the frames hold different spectra
        assert [s[1:] for s in out["shown"]] == [[0, "epoch 0"], [5, "epoch 250"]], out  # the slider follows
        assert out["runs"] == 0, f"{path}: stepping the animation ran the script {out['runs']} times"
        assert _check_page(page, f"{path} after stepping the animation", server)
        screenshot(page, SHOTS / f"{shot}.png")
    # a step of the sidebar leaves the animation where the visitor left it (the figure is not
    # drawn again); turned off and on, it opens on the sidebar's checkpoint
    before, after = press_slider(page, sliders(page, "sidebar")[0], "ArrowLeft")
    assert before != after and _query(page).get("epoch") == after, (before, after, page.url)
    assert page.evaluate(_SHOWN_JS) == [5, "epoch 250"]
    play = page.get_by_text(re.compile("Play through training in the browser"))
    for _ in range(2):
        play.click()
        after_interaction(page)
    assert page.evaluate(_SHOWN_JS) == [int(after) // 50, f"epoch {after}"], after
