"""The epoch animation (issue 22 §4): its payload and its frame rate in a real browser.

1. Prepares the Grokking page's results for the run (the sweep of every checkpoint and the
   animation's frames, into the cache given; cold, that is the sweep's time) and builds the
   animation figure exactly as the page does (:func:`entk_core.ui.animation.epoch_animation`'s
   builder), measuring its payload: the JSON that ``st.plotly_chart`` sends to the browser.
2. Starts ``streamlit run app.py`` on a free loopback port over the same runs folder and
   cache, opens the Grokking page in Debian's headless chromium (Playwright; never
   ``playwright install``), and inside the page steps the animation through every frame in
   two ways, ``--passes`` times each: scrubbing, a click on every step of the figure's slider
   in turn (a mouse press on the step's tick: Plotly's slider moves, shows the epoch and runs
   the step's ``method`` and ``args``; the next click once the step is drawn), and
   playing, every frame in one ``Plotly.animate`` call with the Play button's arguments and no
   pause (frames per second, and the median and p95 of painted frame-to-frame intervals from
   ``requestAnimationFrame`` timestamps). The page's CPU time per frame (Chrome's
   ``Performance.getMetrics``: main-thread ``ThreadTime`` and renderer ``ProcessTime``) is
   printed too: on a shared, busy machine wall-clock frame rates measure the contention.
3. Baseline, same run: a step of the sidebar's epoch slider (a server round trip and every
   chart drawn again), median of ``--repeat`` steps. Prints frames/s against the 30 frames/s
   target, the payload against 5 MB, and how many times faster a client-side step is than a
   server round trip.

    python benchmarks/bench_animation.py [--run runs/modadd-mlp-p29-seed0] [--json FILE]

The run is trained first when missing (the demo command: ``python -m entk_core train
modadd-mlp --p 29 --width 512 --epochs 500 --seed 0 --out runs/modadd-mlp-p29-seed0``, ~10 s).
Not a test: nothing is asserted.
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

from browser_util import (ANIMATION_STEP_JS, CHROMIUM, CHROMIUM_ARGS, StreamlitServer,  # noqa: E402
                          after_interaction, open_page)

from entk_core.figures.animation import FRAME_MS  # noqa: E402

TARGET_FPS = 30.0
TARGET_BYTES = 5_000_000

_STEP_JS = ANIMATION_STEP_JS + """async (passes) => {
    const gd = animatedChart();
    if (!gd) return {error: 'no animated chart on the page'};
    if (!window.Plotly || !window.Plotly.animate) return {error: 'window.Plotly is not exposed by the page'};
    const names = gd._transitionData._frames.map(f => f.name);
    const steps = gd.layout.sliders[0].steps;
    const raf = () => new Promise(r => requestAnimationFrame(r));
    const stepTo = i => clickAnimationStep(gd, i);
    // Play's own arguments, without the pause between frames
    const play = gd.layout.updatemenus[0].buttons[0].args[1];
    const noPause = {...play, frame: {...play.frame, duration: 0}};
    await stepTo(0); await raf();
    // 1. play: every frame in one call, as the Play button does with no pause between frames;
    //    a requestAnimationFrame timestamp after each frame is drawn
    const stamps = [];
    let pending = false;
    const onFrame = () => { if (!pending) { pending = true; requestAnimationFrame(t => { stamps.push(t); pending = false; }); } };
    gd.on('plotly_animatingframe', onFrame);
    const t0 = performance.now();
    for (let p = 0; p < passes; p++) await window.Plotly.animate(gd, names, noPause);
    await raf();
    const play_s = (performance.now() - t0) / 1000;
    gd.removeListener('plotly_animatingframe', onFrame);
    const gaps = stamps.slice(1).map((t, i) => t - stamps[i]).sort((a, b) => a - b);
    const q = f => gaps.length ? gaps[Math.min(gaps.length - 1, Math.floor(f * gaps.length))] : null;
    // 2. scrub: a click on every step of the slider in turn, the next once it is drawn (--passes times)
    const s0 = performance.now();
    const missed = [];
    for (let p = 0; p < passes; p++) for (let i = 0; i < steps.length; i++) {
        const r = await stepTo(i);
        if (r === 'timeout' || gd.layout.sliders[0].active !== i) missed.push(i);
    }
    await raf();
    const scrub_s = (performance.now() - s0) / 1000;
    if (missed.length) return {error: `slider steps not taken: ${missed.slice(0, 10)}`};
    return {frames: names.length, passes: passes, fps: passes * names.length / play_s, play_s: play_s,
            painted: stamps.length, p50_ms: q(0.5), p95_ms: q(0.95), step_method: steps[0].method,
            scrub_fps: passes * steps.length / scrub_s, scrub_s: scrub_s};
}"""


def prepare(run_dir: Path) -> dict:
    """Train the run if missing, compute (or read) the Grokking page's sweep and frames, build
    the figure as the page does: ``{"payload_bytes", "build_s", "prepare_s", "frames", ...}``."""
    import plotly.io as pio

    from entk_core.families.run import open_run
    from entk_core.figures.animation import epoch_animation_figure
    from entk_core.workflows.alignment import grokking_sweep
    from entk_core.workflows.dynamics_frames import epoch_frames

    if not (run_dir / "manifest.json").exists():
        from entk_core.families.base import get_family
        from entk_core.workflows.training import train

        fam = get_family("modadd-mlp")
        train(fam, fam.Config(p=29, width=512, epochs=500, seed=0), run_dir)
    run = open_run(run_dir)
    t0 = time.perf_counter()
    sw = grokking_sweep(run, "full")
    vec = sw.windows[sw.primary[0]].start if sw.primary else 0
    fr = epoch_frames(run, sw.spec.group, sw.spec.reduction, sw.spec.top, vector=vec)
    prep = time.perf_counter() - t0
    t1 = time.perf_counter()
    fig = epoch_animation_figure(fr.epochs, fr.eigenvalues, fr.cliffs, vectors=fr.vectors, vector_index=vec,
                                 view=run.family.eigenvector_view(run.config), current=int(fr.epochs[-1]),
                                 title="full eNTK spectrum over training")
    spec = pio.to_json(fig, validate=False)
    build = time.perf_counter() - t1
    return {"run": run.name, "frames": len(fr.epochs), "vector": vec, "payload_bytes": len(spec.encode()),
            "build_s": round(build, 3), "prepare_s": round(prep, 2), "sweep_cache": sw.meta.get("cache")}


def measure(run_name: str, env: dict[str, str], passes: int, repeat: int) -> dict:
    from playwright.sync_api import sync_playwright

    log = Path(env["ENTK_CACHE_DIR"]).parent / "bench_animation_streamlit.log"
    with StreamlitServer(REPO, env, log) as srv, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(300_000)
            # on a cold cache the page first offers its long phases (the PCA baseline): started and waited for
            open_page(page, f"{srv.url}/grokking?run={run_name}&play=on")
            page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].some("
                                   "g => g._transitionData && g._transitionData._frames && "
                                   "g._transitionData._frames.length > 1)", timeout=300_000)
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            m0 = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            out = page.evaluate(_STEP_JS, passes)
            m1 = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            if "error" not in out:  # CPU per frame: what a busy machine inflates least
                n = out["frames"] * 2 * passes + 1
                out["main_thread_cpu_ms_per_frame"] = round(1000 * (m1["ThreadTime"] - m0["ThreadTime"]) / n, 1)
                out["renderer_cpu_ms_per_frame"] = round(1000 * (m1["ProcessTime"] - m0["ProcessTime"]) / n, 1)
            if "error" in out:
                raise RuntimeError(out["error"])
            # baseline: the sidebar's epoch slider, a server round trip with every chart drawn again
            thumb = page.get_by_test_id("stSidebar").get_by_role("slider").first
            steps = []
            for k in range(repeat + 1):
                thumb.focus()
                t0 = time.perf_counter()
                page.keyboard.press("ArrowLeft" if k % 2 == 0 else "ArrowRight")
                after_interaction(page, timeout_s=300)
                if k:  # the first step warms up
                    steps.append(1000 * (time.perf_counter() - t0))
            out["server_step_ms"] = round(statistics.median(steps), 1)
            out["server_steps_ms"] = [round(s, 1) for s in steps]
        finally:
            browser.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/modadd-mlp-p29-seed0", help="run folder (trained when missing)")
    ap.add_argument("--cache-dir", default=os.environ.get("ENTK_CACHE_DIR", str(REPO / ".entk_cache")))
    ap.add_argument("--passes", type=int, default=3, help="passes through every frame")
    ap.add_argument("--repeat", type=int, default=3, help="sidebar epoch steps for the baseline")
    ap.add_argument("--json", nargs="?", const="-", default=None, help="write the results as JSON (FILE, or - for stdout)")
    a = ap.parse_args(argv)
    run_dir = Path(a.run).resolve()
    os.environ["ENTK_CACHE_DIR"] = str(Path(a.cache_dir).resolve())
    prep = prepare(run_dir)
    env = {"ENTK_RUNS_DIR": str(run_dir.parent), "ENTK_CACHE_DIR": os.environ["ENTK_CACHE_DIR"],
           "ENTK_PROGRESS": "off", "BROWSER_PATH": CHROMIUM, "ENTK_OFFER_GGUF_PACKAGE": "0"}
    res = measure(prep["run"], env, a.passes, a.repeat)
    step_ms = 1000.0 / res["scrub_fps"]
    out = {**prep, **res, "payload_mb": round(prep["payload_bytes"] / 1e6, 3),
           "scrub_fps_over_target": round(res["scrub_fps"] / TARGET_FPS, 2),
           "play_fps_over_target": round(res["fps"] / TARGET_FPS, 2),
           "payload_over_target": round(prep["payload_bytes"] / TARGET_BYTES, 3),
           "server_step_over_client_step": round(res["server_step_ms"] / step_ms, 1),
           "machine": {"cpus": os.cpu_count(), "load": os.getloadavg()[0], "python": platform.python_version()}}
    print(f"run {out['run']}: {out['frames']} frames, eigenvector {out['vector']} tracked")
    print(f"payload   {out['payload_mb']:.3f} MB  ({out['payload_over_target']:.3f} x the 5 MB target; "
          f"figure built in {out['build_s']:.2f} s)")
    print(f"frames/s  {res['scrub_fps']:.1f} scrubbing  ({out['scrub_fps_over_target']:.2f} x the 30 frames/s target; "
          f"{res['passes']} x {res['frames']} slider steps ({res['step_method']}) in {res['scrub_s']:.2f} s)")
    print(f"          {res['fps']:.1f} playing  ({out['play_fps_over_target']:.2f} x the target; the Play button's "
          f"frames with no pause, {res['passes']} x {res['frames']} in {res['play_s']:.2f} s; painted frame to frame "
          f"p50 {res['p50_ms']:.1f} ms, p95 {res['p95_ms']:.1f} ms; the button itself shows a frame every "
          f"{FRAME_MS} ms)")
    print(f"cpu       {res['main_thread_cpu_ms_per_frame']:.1f} ms of the page's main thread per frame "
          f"({1000 / res['main_thread_cpu_ms_per_frame']:.0f} frames/s if the CPU were the browser's alone), "
          f"{res['renderer_cpu_ms_per_frame']:.1f} ms of the renderer process")
    print(f"baseline  sidebar epoch step (server round trip) {res['server_step_ms']:.0f} ms median: "
          f"{out['server_step_over_client_step']:.1f} x a client-side frame")
    print(f"(load average {out['machine']['load']:.1f} on {out['machine']['cpus']} CPUs)")
    if a.json:
        text = json.dumps(out, indent=2)
        if a.json == "-":
            print(text)
        else:
            Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
