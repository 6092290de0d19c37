"""Helpers for the real-browser end-to-end tests (tests/acceptance/test_browser*.py): a
Streamlit server in a subprocess, Debian's chromium driven by Playwright, a watch on each
tab (requests to other hosts, console errors), and waits that understand
Streamlit's script runs and Plotly's asynchronous drawing. The session fixtures (runs, the
result cache, the browser) are in ``tests/acceptance/conftest.py``."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / os.environ.get("ENTK_SCREENSHOTS", "screenshots")
MLP, TMS, TF = "modadd-mlp-p29-seed0", "tms-m10-s0.3-seed0", "modadd-transformer-p29-seed2"

#: Runs trained once per session for the browser suite: (family, run name, config overrides).
RUNS = [
    ("modadd-mlp", MLP, {"p": 29, "width": 512, "epochs": 500, "checkpoint_every": 50, "seed": 0}),
    ("tms", TMS, {"m": 10, "sparsity": 0.3, "epochs": 1500, "checkpoint_every": 500, "seed": 0}),
    ("modadd-transformer", TF, {"p": 29, "epochs": 40, "checkpoint_every": 20, "seed": 2}),
]
#: The run each page is for (by URL path; the others show the MLP).
PAGE_RUN = {"tms": TMS, "transformer": TF}
PROBE_404 = re.compile(r"/[\w-]+/_stcore/(health|host-config)$")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def chromium_missing_reason() -> str | None:
    """Why the browser tests cannot run here (``None`` when they can)."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -r requirements-dev.txt)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StreamlitServer:
    """``python -m streamlit run app.py`` on 127.0.0.1:<free port>; logs in ``log_path``."""

    def __init__(self, repo: Path, env: dict[str, str], log_path: Path, extra_args: list[str] | None = None):
        self.repo, self.env, self.log_path = repo, env, log_path
        self.extra_args = list(extra_args or [])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "StreamlitServer":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(self.port), "--server.address", "127.0.0.1",
             "--browser.gatherUsageStats", "false", *self.extra_args],
            cwd=self.repo, env={**os.environ, **self.env}, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError(f"streamlit did not answer /_stcore/health within 60 s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def browser_env(runs: Path, cache: Path, lm: Path | None = None, **extra: str) -> dict[str, str]:
    """The server's environment: its runs folder, result cache and (``lm``) models/probes folders."""
    env = {"ENTK_RUNS_DIR": str(runs), "ENTK_CACHE_DIR": str(cache), "ENTK_PROGRESS": "off",
           "BROWSER_PATH": CHROMIUM, "ENTK_OFFER_GGUF_PACKAGE": "0"}  # never the real Gemma here
    if lm is not None:
        env.update({"ENTK_MODELS_DIR": str(lm / "models"), "ENTK_PROBES_DIR": str(lm / "probes")})
    return {**env, **extra}


class Watch:
    """Requests to other hosts and console errors of one browser tab, until :meth:`detach`."""

    def __init__(self, page, base: str):
        self.base, self.foreign, self.console, self.probes = base, [], [], []
        self.page = page
        page.on("request", self._request)
        page.on("response", self._response)
        page.on("console", self._console)

    def _request(self, req) -> None:
        u = req.url
        if not (u.startswith(self.base) or u.startswith("data:") or u.startswith("blob:") or u == "about:blank"):
            self.foreign.append(u)

    def _response(self, resp) -> None:
        if resp.status == 404 and PROBE_404.search(urlparse(resp.url).path):
            self.probes.append(resp.url)

    def _console(self, m) -> None:
        if m.type == "error":
            self.console.append(m.text)

    def detach(self) -> None:
        for event, fn in (("request", self._request), ("response", self._response), ("console", self._console)):
            try:
                self.page.remove_listener(event, fn)
            except Exception:  # noqa: BLE001 - not attached, or the page is gone
                pass

    def check(self) -> None:
        assert not self.foreign, f"requests to other hosts: {sorted(set(self.foreign))[:5]}"
        errors = [m for m in self.console if not m.startswith("Failed to load resource: the server responded with a "
                                                                "status of 404")]
        n404 = len(self.console) - len(errors)
        assert n404 <= len(self.probes), f"404 resources beyond Streamlit's deep-link probes: {self.console}"
        assert not errors, f"console errors: {errors[:5]}"


#: The benchmarks' "page done" check: no script run, no spinner, every chart drawn (an SVG).
DONE_JS = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
    if (document.querySelector('[data-testid="stSpinner"]')) return false;
    for (const c of document.querySelectorAll('[data-testid="stPlotlyChart"]'))
        if (!c.querySelector('.js-plotly-plot .main-svg')) return false;
    return true;
}"""
RUNNING_JS = """() => { const a = document.querySelector('[data-testid="stApp"]');
                        return a && a.getAttribute('data-test-script-state') === 'running'; }"""

VIEWPORT = {"width": 1400, "height": 1000}

_PROFILES: dict = {}
"""Per (browser, server, profile): its browser context and its idle tabs (:func:`new_context`)."""


class Tab:
    """What :func:`new_context` hands out in place of a context: ``close()`` stops watching the
    tab and leaves it on ``about:blank`` (its Streamlit session ends) for the next test."""

    def __init__(self, page, watch: Watch, idle: list):
        self.page, self.watch, self._idle = page, watch, idle

    def close(self) -> None:
        self.watch.detach()
        try:
            self.page.goto("about:blank")
            self.page.set_viewport_size(VIEWPORT)
        except Exception:  # noqa: BLE001 - a tab that cannot go blank is not reused
            self.page.close()
            return
        self._idle.append(self.page)


def new_context(browser, server, profile: str = "visitor", fresh: bool = False):
    """``(tab, page, watch)``: a watched tab on ``server`` in the browser context of
    ``profile`` (one context per browser, server and profile; a test that opens a link "in
    another browser", a collaborator's, asks for another profile).

    A tab is reused from test to test (left on ``about:blank`` in between): each page it opens
    is a fresh Streamlit session, and a reused tab loads a page for ~2.2 s of machine CPU where a
    new tab or a new context took ~5 s (four loads of the Spectrum page each way, 2 cores,
    2026-12-05). ``fresh``: a new tab, with an empty history (Chrome keeps at most 50 entries
    per tab, so a test that counts them needs one)."""
    key = (id(browser), server.url, profile)
    prof = _PROFILES.get(key)
    if prof is None or prof["ctx"].browser is not browser or not browser.is_connected():
        ctx = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        ctx.add_init_script(_RUN_WATCH_JS)
        prof = _PROFILES[key] = {"ctx": ctx, "idle": []}
    idle = prof["idle"]
    pg = None
    while idle and pg is None and not fresh:
        cand = idle.pop()
        pg = None if cand.is_closed() else cand
    if pg is None:
        pg = prof["ctx"].new_page()
    watch = Watch(pg, server.url)
    pg.set_default_timeout(90_000)
    return Tab(pg, watch, idle), pg, watch


def open_page(page, url: str, start: bool = True) -> None:
    """Open ``url``; with ``start``, also start the long work a page offers with its estimate
    ("Start (~35 s)": an uncached sweep or PCA baseline) and wait for it."""
    page.goto(url)
    wait_idle(page)
    for _ in range(3 if start else 0):
        offer = page.get_by_role("button", name=re.compile(r"^Start \("))
        if not offer.count():
            break
        offer.first.click()
        after_interaction(page, timeout_s=900)


# ---------------------------------------------------------------- page helpers
_RUN_WATCH_JS = """(() => {
    // window.__entkRunSeen: a script run has started since the last time wait_idle saw the
    // app idle, so after_interaction need not catch the (often brief) running state itself
    window.__entkRunSeen = false;
    new MutationObserver(ms => {
        for (const m of ms) {
            if (m.target.getAttribute('data-test-script-state') !== 'notRunning') window.__entkRunSeen = true;
        }
    }).observe(document, {subtree: true, attributes: true, attributeFilter: ['data-test-script-state']});
})();"""
"""Installed in every page of :func:`new_context` before the app's own scripts."""

_IDLE_JS = """(ms) => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (!app) return false;
    const state = app.getAttribute('data-test-script-state');
    const busy = state !== 'notRunning'
        || document.querySelector('[data-testid="stSkeleton"], [data-testid="stSpinner"]') !== null;
    if (busy) { window.__entkIdle = null; return false; }
    if (window.__entkIdle == null) window.__entkIdle = Date.now();
    // every Plotly chart element has drawn its SVG
    const charts = document.querySelectorAll('[data-testid="stPlotlyChart"]');
    for (const c of charts) { if (!c.querySelector('.js-plotly-plot .main-svg')) return false; }
    if (Date.now() - window.__entkIdle < ms) return false;
    window.__entkRunSeen = false;  // the next run after this idle is the next interaction's
    return true;
}"""


#: How long the app must stay idle before a wait ends (ms); ``ENTK_BROWSER_QUIET_MS`` overrides.
QUIET_MS = int(os.environ.get("ENTK_BROWSER_QUIET_MS", "250"))
WAITS = {"idle": [0, 0.0], "rerun": [0, 0.0]}
"""Count and seconds of the waits (reported at the end of a browser session, tests/acceptance/conftest.py)."""


def wait_idle(page, timeout_s: float = 150, quiet_ms: int | None = None) -> None:
    """Wait until Streamlit has finished the current script run (state ``notRunning``, no
    spinner, for ``quiet_ms``, default :data:`QUIET_MS`) and every Plotly chart has drawn."""
    t0 = time.perf_counter()
    page.wait_for_function(_IDLE_JS, arg=QUIET_MS if quiet_ms is None else quiet_ms, timeout=timeout_s * 1000,
                           polling=100)
    WAITS["idle"][0] += 1
    WAITS["idle"][1] += time.perf_counter() - t0


def after_interaction(page, timeout_s: float = 150) -> None:
    """Wait for the rerun an interaction triggers (if it starts within 3 s: seen running now,
    or already started and maybe over since the last idle, :data:`_RUN_WATCH_JS`), then for idle."""
    t0 = time.perf_counter()
    try:
        page.wait_for_function(
            """() => { const a = document.querySelector('[data-testid="stApp"]');
                       return window.__entkRunSeen === true
                           || (a && a.getAttribute('data-test-script-state') !== 'notRunning'); }""",
            timeout=3000, polling=20)
    except Exception:  # noqa: BLE001 - the rerun may already be over
        pass
    WAITS["rerun"][0] += 1
    WAITS["rerun"][1] += time.perf_counter() - t0
    page.evaluate("() => { window.__entkIdle = null; }")
    wait_idle(page, timeout_s)


def plot_titles(page) -> list[str]:
    """The titles of every Plotly chart (SVG text: read with text_content)."""
    return [t.text_content() or "" for t in page.locator(".js-plotly-plot .gtitle").all()]


def chart_count(page) -> int:
    return page.locator(".js-plotly-plot .main-svg").count()


def error_texts(page) -> list[str]:
    """Exceptions and st.error boxes on the page (main area and sidebar)."""
    out = [("exception: " + (e.text_content() or "")) for e in page.locator('[data-testid="stException"]').all()]
    out += [("error: " + (e.text_content() or "")) for e in page.locator('[data-testid="stAlertContentError"]').all()]
    return out


def info_texts(page) -> list[str]:
    return [e.text_content() or "" for e in page.locator('[data-testid="stAlertContentInfo"]').all()]


def nav_links(page) -> list[tuple[str, str]]:
    """``(title, href)`` of every page link in the sidebar navigation (from app.py's pages)."""
    sel = '[data-testid="stSidebar"] a[data-testid="stPageLink-NavLink"]'  # app.py's page menu (st.page_link)
    page.wait_for_selector(sel, timeout=60_000)
    out = []
    for a in page.locator(sel).all():
        title = (a.locator('[data-testid="stMarkdownContainer"]').first.text_content() or "").strip()
        href = a.evaluate("e => e.href")  # absolute
        out.append((title, href))
    return out


def select_option(page, label: str, option: str) -> list[str]:
    """Pick ``option`` in the selectbox (a combobox) labelled ``label``; return the options
    the open list showed."""
    page.get_by_role("combobox", name=label).click()
    page.get_by_role("option").first.wait_for()
    shown = [o.text_content() or "" for o in page.get_by_role("option").all()]
    page.get_by_role("option", name=option, exact=True).click()
    return shown


def sliders(page, where: str = "main") -> list:
    """Slider thumbs (role=slider) in the sidebar or the main area."""
    root = page.get_by_test_id("stSidebar") if where == "sidebar" else page.get_by_test_id("stMain")
    return root.get_by_role("slider").all()


def press_slider(page, thumb, key: str) -> tuple[str | None, str | None]:
    """Focus a slider thumb, press ``key``; return its aria-valuetext/now before and after."""
    def value():
        return thumb.get_attribute("aria-valuetext") or thumb.get_attribute("aria-valuenow")

    before = value()
    thumb.focus()
    page.keyboard.press(key)
    after_interaction(page)
    return before, value()


def screenshot(page, path: Path) -> None:
    """A screenshot of the whole page: the viewport grows to the main column's height first
    (Streamlit scrolls inside its main container, so full_page alone would cut it)."""
    h = page.evaluate("""() => {
        const m = document.querySelector('[data-testid="stMainBlockContainer"]');
        return m ? m.scrollHeight + 160 : document.body.scrollHeight; }""")
    vp = page.viewport_size or VIEWPORT
    page.set_viewport_size({"width": vp["width"], "height": int(min(max(h, vp["height"]), 7000))})
    wait_idle(page, 60, quiet_ms=300)  # Plotly redraws on resize
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(vp)


def open_expanders(page) -> None:
    """Open every collapsed expander (their widgets are hidden from the accessibility tree)."""
    closed = page.locator('[data-testid="stExpander"] details:not([open]) > summary')
    for _ in range(20):
        if not closed.count():
            break
        closed.first.click()
    page.wait_for_timeout(300)


ANIMATION_STEP_JS = """
// The page's epoch animation (the Plotly chart with more than one frame), and a click on step i
// of its own slider, as a user's: a mouse press on the step's tick. Plotly's slider moves, shows
// the epoch and runs the step (its method and args) in the next animation frame, which the browser
// paints once it is drawn (so at most one step a frame); the promise resolves once the step is
// drawn ('same' when the slider is already there, 'timeout' when nothing is drawn in 10 s).
const animatedChart = () => [...document.querySelectorAll('.js-plotly-plot')]
    .find(g => g._transitionData && g._transitionData._frames && g._transitionData._frames.length > 1);
const clickAnimationStep = (gd, i) => {
    const steps = gd.layout.sliders[0].steps;
    if (gd.layout.sliders[0].active === i) return Promise.resolve('same');
    const touch = gd.querySelector('.slider-rail-touch-rect');
    const t = gd.querySelectorAll('.slider-tick-rect')[i].getBoundingClientRect();
    const r = touch.getBoundingClientRect();
    const at = {clientX: t.x + t.width / 2, clientY: r.y + r.height / 2, bubbles: true, view: window, button: 0};
    const event = {restyle: 'plotly_restyle', relayout: 'plotly_relayout'}[steps[i].method] || 'plotly_animated';
    const done = new Promise(res => gd.once(event, res));
    touch.dispatchEvent(new MouseEvent('mousedown', at));
    window.dispatchEvent(new MouseEvent('mouseup', at));
    return Promise.race([done, new Promise(res => setTimeout(() => res('timeout'), 10000))]);
};
"""
"""JavaScript defining ``animatedChart()`` and ``clickAnimationStep(gd, i)``: prefix a page
script with it (the browser tests, ``benchmarks/bench_animation.py``, the docs' screenshots)."""
