"""Warm end-to-end latencies of the dashboard's controls, in a real browser.

Starts ``streamlit run app.py`` on a free loopback port with the runs folder and cache
given (``ENTK_RUNS_DIR`` / ``ENTK_CACHE_DIR``, defaults ``./runs`` and ``./.entk_cache``),
drives Debian's chromium with Playwright, and for each control measures, ``--repeat``
times after one warm-up, the time from the key press (or option click) to the end of the
script run with every Plotly chart drawn again. Prints a table (median, min, max in ms).
Needs the runs ``modadd-mlp-p29-seed0`` and ``tms-m10-s0.3-seed0`` (train them with
``python -m entk_core train ...`` or from the dashboard). Not a test: nothing is asserted.

    python benchmarks/bench_dashboard.py --repeat 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from browser_util import CHROMIUM, CHROMIUM_ARGS, StreamlitServer, wait_idle  # noqa: E402

_DONE_JS = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
    if (document.querySelector('[data-testid="stSpinner"]')) return false;
    for (const c of document.querySelectorAll('[data-testid="stPlotlyChart"]'))
        if (!c.querySelector('.js-plotly-plot .main-svg')) return false;
    return true;
}"""
_RUNNING_JS = """() => { const a = document.querySelector('[data-testid="stApp"]');
                        return a && a.getAttribute('data-test-script-state') === 'running'; }"""


def _timed(page, act) -> float:
    t0 = time.perf_counter()
    act()
    try:
        page.wait_for_function(_RUNNING_JS, timeout=3000, polling=5)
    except Exception:  # noqa: BLE001 - a very fast run may be over before we look
        pass
    page.wait_for_function(_DONE_JS, timeout=120_000, polling=10)
    dt = time.perf_counter() - t0
    page.wait_for_timeout(400)
    return dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    env = {"ENTK_RUNS_DIR": os.environ.get("ENTK_RUNS_DIR", str(REPO / "runs")),
           "ENTK_CACHE_DIR": os.environ.get("ENTK_CACHE_DIR", str(REPO / ".entk_cache")), "ENTK_PROGRESS": "off"}
    rows = []
    with StreamlitServer(REPO, env, Path("/tmp/entk_bench_dashboard.log")) as srv, sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = b.new_page(viewport={"width": 1400, "height": 1000})

        def go(url):
            page.goto(srv.url + url)
            wait_idle(page, 300)

        def slider_press(where, key):
            def act():
                page.get_by_test_id(where).get_by_role("slider").first.focus()
                page.keyboard.press(key)
            return act

        def pick(label, options):
            state = {"i": 0}

            def act():
                state["i"] = (state["i"] + 1) % len(options)
                box = page.get_by_role("combobox", name=label, exact=True)
                box.click()
                page.get_by_role("option", name=options[state["i"]], exact=True).click()
            return act

        cases = [
            ("epoch step (Spectrum, sidebar slider)", "/?run=modadd-mlp-p29-seed0",
             [slider_press("stSidebar", "ArrowLeft"), slider_press("stSidebar", "ArrowRight")]),
            ("epoch step (Grokking)", "/grokking?run=modadd-mlp-p29-seed0",
             [slider_press("stSidebar", "ArrowLeft"), slider_press("stSidebar", "ArrowRight")]),
            ("group (Spectrum)", "/?run=modadd-mlp-p29-seed0",
             [pick("Layer group", ["full · all parameters", "net.0 · W1, input → hidden", "net.3 · W2, hidden → output"])]),
            ("β (TMS, fragment)", "/tms?run=tms-m10-s0.3-seed0",
             [slider_press("stMain", "ArrowRight"), slider_press("stMain", "ArrowLeft")]),
            ("cliff (Alignment)", "/alignment?run=modadd-mlp-p29-seed0",
             [pick("Cliff", ["cliff 1 [1–56], drop ×2.03", "cliff 2 [57–112], drop ×1.46"])]),
        ]
        for name, url, acts in cases:
            go(url)
            for a in acts:  # warm-up: every view once (caches, figures)
                _timed(page, a)
                _timed(page, a)
            times = [_timed(page, acts[i % len(acts)]) for i in range(args.repeat)]
            rows.append((name, times))
        b.close()
    print(f"{'control':42s} {'median ms':>10s} {'min':>7s} {'max':>7s}  (n = {args.repeat}, warm)")
    for name, t in rows:
        print(f"{name:42s} {1000 * statistics.median(t):10.0f} {1000 * min(t):7.0f} {1000 * max(t):7.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
