"""Screenshots of the Training dynamics page and the animated Grokking page, for the docs.

    python benchmarks/shot_dynamics_pages.py [--runs runs] [--out docs/screenshots] [--epoch 100]

Serves the dashboard over ``--runs`` (``ENTK_CACHE_DIR`` or ``./.entk_cache`` as the cache) in
headless chromium and writes ``dynamics-mlp.png`` (run ``modadd-mlp-p29-seed0``),
``grokking-animation.png`` (the same run; the animation stepped to ``--frame``) and, when a
run ``toy-xor-seed0`` of the example plug-in exists (``pip install ./examples/entk-toy-family``,
``python -m entk_core train toy-xor --epochs 60 --out runs/toy-xor-seed0``),
``dynamics-plugin.png``. Long work a page offers (its Start button) is started and waited for.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from browser_util import (ANIMATION_STEP_JS, CHROMIUM, CHROMIUM_ARGS, StreamlitServer, after_interaction, error_texts,  # noqa: E402
                          screenshot, wait_idle)

_STEP = ANIMATION_STEP_JS + """async (name) => {  // a click on the step of the chart's slider
    const gd = animatedChart();
    return await clickAnimationStep(gd, gd.layout.sliders[0].steps.findIndex(s => s.label === name));
}"""


def _open(page, url: str) -> None:
    page.goto(url)
    wait_idle(page, timeout_s=900)
    for _ in range(4):
        offer = page.get_by_role("button", name=re.compile(r"^Start \("))
        if not offer.count():
            break
        offer.first.click()
        after_interaction(page, timeout_s=1800)
    errs = error_texts(page)
    if errs:
        raise SystemExit(f"{url}: {errs}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default="docs/screenshots")
    ap.add_argument("--epoch", type=int, default=100, help="the sidebar's checkpoint in the shots")
    ap.add_argument("--frame", default="70", help="the Grokking animation's frame in its shot")
    a = ap.parse_args(argv)
    runs, out = Path(a.runs).resolve(), Path(a.out).resolve()
    env = {"ENTK_RUNS_DIR": str(runs), "ENTK_CACHE_DIR": os.environ.get("ENTK_CACHE_DIR", str(REPO / ".entk_cache")),
           "ENTK_PROGRESS": "off", "BROWSER_PATH": CHROMIUM, "ENTK_OFFER_GGUF_PACKAGE": "0"}
    from playwright.sync_api import sync_playwright

    mlp = "modadd-mlp-p29-seed0"
    log = Path(tempfile.gettempdir()) / "shot_dynamics_streamlit.log"
    with StreamlitServer(REPO, env, log) as srv, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(900_000)
            _open(page, f"{srv.url}/dynamics?run={mlp}&epoch={a.epoch}")
            screenshot(page, out / "dynamics-mlp.png")
            _open(page, f"{srv.url}/grokking?run={mlp}&epoch={a.epoch}&play=on")
            page.evaluate(_STEP, a.frame)
            page.get_by_text("played in the browser").first.scroll_into_view_if_needed()
            screenshot(page, out / "grokking-animation.png")
            if (runs / "toy-xor-seed0" / "manifest.json").exists():
                _open(page, f"{srv.url}/dynamics?run=toy-xor-seed0")
                screenshot(page, out / "dynamics-plugin.png")
        finally:
            browser.close()
    print("\n".join(str(f) for f in sorted(out.glob("*.png"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
