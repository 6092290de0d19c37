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
The Grokking view of the p = 29 run (its sweep and PCA baseline) is computed first when the
cache lacks it, and timed ("first visit").

"families (Grokking)" times a change of the Families control (remove one, add it back): it is
answered from the cached PCA baseline, with no worker started.

``--sessions N``: many viewers at once instead (``benchmarks/bench_sessions.py``): one
session alone, N at once, N at once beside a long computation, and the server's memory with
N sessions held open ``--hold`` seconds.

    python benchmarks/bench_dashboard.py --repeat 5 [--baseline] [--json FILE]
    python benchmarks/bench_dashboard.py --sessions 6 [--steps 20] [--hold 120] --json FILE
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
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_sessions import WARMUP_STEPS, print_sessions, run_sessions  # noqa: E402
from browser_util import CHROMIUM, CHROMIUM_ARGS, DONE_JS, RUNNING_JS, StreamlitServer, wait_idle  # noqa: E402


def _timed(page, act) -> float:
    t0 = time.perf_counter()
    act()
    try:
        page.wait_for_function(RUNNING_JS, timeout=3000, polling=5)
    except Exception:  # noqa: BLE001 - a very fast run may be over before we look
        pass
    page.wait_for_function(DONE_JS, timeout=120_000, polling=10)
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

        def families_box():
            return page.get_by_test_id("stMultiSelect").filter(has_text="Families").first

        def drop_family(name):  # the tag's own remove button
            def act():
                families_box().get_by_role("button", name=f"Remove {name}").click()
            return act

        def add_family(name):  # pick it in the dropdown, then close the dropdown
            def act():
                families_box().locator("input").first.click()
                page.get_by_role("option", name=name, exact=True).click()
                page.keyboard.press("Escape")
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
            ("families (Grokking)", "/grokking?run=modadd-mlp-p29-seed0", [drop_family("a"), add_family("a")]),
        ]
        for name, url, acts in cases:
            if only and only.lower() not in name.lower():
                continue
            go(url)
            for _ in range(2):  # warm-up: every view (caches, figures); in order, so a removal is undone
                for a in acts:
                    _timed(page, a)
            times = [_timed(page, acts[i % len(acts)]) for i in range(repeat)]
            rows.append((name, times))
        b.close()
    return rows


def first_visit(env: dict[str, str]) -> dict:
    """The Grokking view of the p = 29 run, computed as the page computes it when the cache
    lacks it (a worker: the sweep, then the PCA baseline): each phase's estimate beside the
    time it took (both 0 when cached)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from entk_core.families.run import open_run
        from entk_core.workflows import estimates
        from entk_core.workflows.jobs import Job

        run = open_run(Path(env["ENTK_RUNS_DIR"]) / "modadd-mlp-p29-seed0")
        out = {}
        for name, est, target, kw in (
                ("sweep", lambda: estimates.sweep_seconds(run, group="full"),
                 "entk_core.workflows.alignment:grokking_sweep", {"group": "full"}),
                ("pca", lambda: estimates.pca_over_training_seconds(run), "entk_core.workflows.baselines:pca_profile", {})):
            e = est()
            t0 = time.perf_counter()
            if e:
                Job(target=target, run=str(run.path), kwargs=kw).start().wait()
            out[name] = {"estimate_s": round(e, 1) if e else e, "measured_s": round(time.perf_counter() - t0, 1) if e else 0.0}
            print(f"first visit, {name}: estimate {out[name]['estimate_s']} s, measured {out[name]['measured_s']} s",
                  file=sys.stderr)
        return out
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline", action="store_true",
                    help="also measure Streamlit's default runner.postScriptGC = true, in the same run")
    ap.add_argument("--json", type=Path, help="write every time to this file")
    ap.add_argument("--only", help="measure only the controls whose name contains this text (e.g. Grokking)")
    ap.add_argument("--sessions", type=int, help="many viewers: N browser sessions stepping the epoch at once")
    ap.add_argument("--steps", type=int, default=20, help="with --sessions: steps (rounds) per phase")
    ap.add_argument("--warmup", type=int, default=WARMUP_STEPS,
                    help="with --sessions: steps each session takes, one at a time, before anything is measured")
    ap.add_argument("--hold", type=float, default=120.0,
                    help="with --sessions: seconds the N sessions stay open while the server's RSS is sampled")
    args = ap.parse_args(argv)

    env = {"ENTK_RUNS_DIR": os.environ.get("ENTK_RUNS_DIR", str(REPO / "runs")),
           "ENTK_CACHE_DIR": os.environ.get("ENTK_CACHE_DIR", str(REPO / ".entk_cache")), "ENTK_PROGRESS": "off"}
    first = first_visit(env)
    if args.sessions:
        res = run_sessions(args.sessions, args.steps, args.hold, env, REPO, log=lambda m: print(m, file=sys.stderr),
                           warmup=args.warmup)
        res["first_visit"] = first
        print_sessions(res)
        if args.json:
            args.json.write_text(json.dumps(res, indent=1))
        return 0
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
               "first_visit": first, "load_average": os.getloadavg(),
               "target_ms": TARGET_MS, "seconds": {n: t for n, t in rows},
               "baseline_postScriptGC_seconds": {n: t for n, t in base.items()}}
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
