"""Screenshot of the Language model page on the real model (docs/screenshots/language-model.png).

Serves the dashboard from this checkout on a free loopback port with the default folders
(./models, ./probes, ./.entk_cache), opens the page on MODEL/PROBES/LAYER and saves a
full-page screenshot. The layer must already be in the cache (``lm-align ... --layer L``),
so the page shows tables at once. ``ENTK_MODELS_DIR``/``ENTK_PROBES_DIR``/``ENTK_CACHE_DIR`` choose
other folders and ``SHOT_OUT`` another output file. Usage:

    python benchmarks/shot_lm_page.py gemma-3-270m gemma-3-270m-512 16 [VECTOR]
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from browser_util import CHROMIUM, CHROMIUM_ARGS, StreamlitServer, error_texts, screenshot, wait_idle  # noqa: E402


def main(model: str, probes: str, layer: str, vector: str = "0") -> int:
    from playwright.sync_api import sync_playwright

    log = Path(tempfile.mkdtemp()) / "streamlit.log"
    out = Path(os.environ.get("SHOT_OUT") or REPO / "docs" / "screenshots" / "language-model.png")
    with StreamlitServer(REPO, {"ENTK_OFFER_GGUF_PACKAGE": "0"}, log) as srv, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{srv.url}/language-model?model={model}&probes={probes}&layer={layer}&vector={vector}")
        page.get_by_test_id("stApp").wait_for()
        wait_idle(page, 300)
        errs = error_texts(page)
        screenshot(page, out)
        print(f"wrote {out}; errors on the page: {errs or 'none'}")
        browser.close()
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
