"""Warm end-to-end latencies of the dashboard's controls, in a real browser.

Starts ``streamlit run app.py`` on a free loopback port with the runs folder and cache
given (``ENTK_RUNS_DIR`` / ``ENTK_CACHE_DIR``, defaults ``./runs`` and ``./.entk_cache``),
drives Debian's chromium with Playwright, and for each control measures, ``--repeat``
times after one warm-up, the time from the key press (or option click) to the end of the
script run with every Plotly chart drawn again. Prints a table (median, min, max in ms) and,
for the epoch steps, the ratio to the 300 ms target. ``--baseline`` measures, in the same
run, a second server with Streamlit's default ``runner.postScriptGC = true`` (a full
``gc.collect`` after every script run, which ``.streamlit/config.toml`` turns off) and prints
the ratio of each median to it. ``--json FILE`` writes every time.
Needs the runs ``modadd-mlp-p29-seed0`` and ``tms-m10-s0.3-seed0`` (train them with
``python -m entk_core train ...`` or from the dashboard). Not a test: nothing is asserted.

    python benchmarks/bench_dashboard.py --repeat 5 [--baseline] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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


TARGET_MS = 300.0
"""Issue #14's target for a warm epoch step, end to end."""


def measure(env: dict[str, str], repeat: int, extra_args: list[str] | None = None,
            only: str | None = None) -> list[tuple[str, list[float]]]:
    """``[(control, [seconds, ...])]`` for every control, on a fresh server."""
    from playwright.sync_api import sync_playwright

    rows = []
    with StreamlitServer(REPO, env, Path("/tmp/entk_bench_dashboard.log"), extra_args) as srv, \
            sync_playwright() as p:
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
            if only and only.lower() not in name.lower():
                continue
            go(url)
            for a in acts:  # warm-up: every view once (caches, figures)
                _timed(page, a)
                _timed(page, a)
            times = [_timed(page, acts[i % len(acts)]) for i in range(repeat)]
            rows.append((name, times))
        b.close()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline", action="store_true",
                    help="also measure Streamlit's default runner.postScriptGC = true, in the same run")
    ap.add_argument("--json", type=Path, help="write every time to this file")
    ap.add_argument("--only", help="measure only the controls whose name contains this text (e.g. Grokking)")
    args = ap.parse_args(argv)

    env = {"ENTK_RUNS_DIR": os.environ.get("ENTK_RUNS_DIR", str(REPO / "runs")),
           "ENTK_CACHE_DIR": os.environ.get("ENTK_CACHE_DIR", str(REPO / ".entk_cache")), "ENTK_PROGRESS": "off"}
    rows = measure(env, args.repeat, only=args.only)
    base = dict(measure(env, args.repeat, ["--runner.postScriptGC", "true"], only=args.only)) if args.baseline else {}
    med = {name: 1000 * statistics.median(t) for name, t in rows}
    head = f"{'control':42s} {'median ms':>10s} {'min':>7s} {'max':>7s} {'/target':>8s}"
    if base:
        head += f" {'GC-on ms':>9s} {'speed-up':>9s}"
    print(head + f"  (n = {args.repeat}, warm)")
    for name, t in rows:
        line = f"{name:42s} {med[name]:10.0f} {1000 * min(t):7.0f} {1000 * max(t):7.0f}"
        line += f" {med[name] / TARGET_MS:8.2f}" if name.startswith("epoch step") else f" {'':8s}"
        if base:
            b = 1000 * statistics.median(base[name])
            line += f" {b:9.0f} {b / med[name]:8.2f}×"
        print(line)
    if args.json:
        out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "repeat": args.repeat,
               "target_ms": TARGET_MS, "seconds": {n: t for n, t in rows},
               "baseline_postScriptGC_seconds": {n: t for n, t in base.items()}}
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
