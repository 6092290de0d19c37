"""The dashboard's own CSS, added once per script run by ``app.py`` (:func:`page_style`).

One rule today. While a script runs, Streamlit marks what the run has not redrawn yet as stale
and fades it to a third of its opacity: a one-second CSS transition that starts after half a
second (``opacity 1s ease-in 0.5s``). A fade repaints and recomposites the element every frame
for that second, on the visitor's CPU where the browser composites in software. Here stale
elements dim at once after the same half second instead: a quick step (under 0.5 s) still shows
no dimming, a slow one is still marked, and nothing animates. With six viewers stepping the
epoch at once on two cores, the fades cost 10-25 % of each step's CPU (four before/after
pairs of ``benchmarks/bench_dashboard.py --sessions 6``; README, "Many viewers at once"). An
expander's summary fades the same way (CDP's Animation domain: 5 one-second fades in three
rounds of six steps on Grokking, none with it in the rule).
"""
from __future__ import annotations

import streamlit as st

__all__ = ["STALE_CSS", "page_style"]

STALE_CSS = """[data-testid="stElementContainer"], [data-testid="stExpander"] details,
[data-testid="stExpander"] summary {
  transition-duration: 0s !important;
}"""
"""Stale elements keep Streamlit's delay (0.5 s) and opacity, with no fade."""


def page_style() -> None:
    """Add :data:`STALE_CSS` to the page (a style-only ``st.html``: it takes no space)."""
    st.html(f"<style>{STALE_CSS}</style>")
