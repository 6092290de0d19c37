"""Plain-text formatting shared by the pages: durations, sizes, percentages and the honest
cache caption. Pure functions (no Streamlit), so they are tested like any other."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

__all__ = ["fmt_seconds", "fmt_elapsed", "fmt_pct", "fmt_size", "cache_caption", "timed"]


def fmt_seconds(s: float | None) -> str:
    """An estimate for people: ``"38 s"`` below 90 s, ``"3.5 min"`` below 90 min, else
    ``"2.1 h"``; ``"?"`` when unknown."""
    if s is None or not np.isfinite(s):
        return "?"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def fmt_elapsed(s: float) -> str:
    """A measured time: ``"9 ms"`` below a second, else ``"0.61 s"`` style."""
    return f"{1000 * s:.0f} ms" if s < 1 else f"{s:.2f} s"


def fmt_pct(x: Any) -> str:
    """``"97.3%"``; ``"–"`` for a missing or non-finite value."""
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.1%}"


def fmt_size(n: float) -> str:
    """``"512 B"``, ``"3.4 MB"`` (decimal units, at most GB)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def cache_caption(meta: dict[str, Any], elapsed_s: float, computed_s: float | None) -> str:
    """``"from the cache in 9 ms; computed in 0.61 s on 2026-12-01"`` or
    ``"computed now in 0.61 s and cached"`` (``meta``: a result's ``cache`` and
    ``computed_at``; ``computed_s``: what computing it took, when known)."""
    when = meta.get("computed_at")
    on = f" on {str(when)[:10]}" if when else ""
    comp = "" if computed_s is None else f"; computed in {fmt_elapsed(computed_s)}{on}"
    if meta.get("cache") == "hit":
        return f"from the cache in {fmt_elapsed(elapsed_s)}{comp}"
    return f"computed now in {fmt_elapsed(elapsed_s)} and cached"


def timed(fn: Callable, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
