"""Who the server is for: the owner (default) or visitors (viewer mode).

Viewer mode (``ENTK_VIEWER=1``, or ``streamlit run app.py -- --viewer``) makes the
dashboard read-only: no training, import, probe-set building, cache clearing, deletion or
upload; cached views all work, and an uncached computation runs only when its estimate is
under ``ENTK_VIEWER_MAX_SECONDS`` (default 30 s). Pages ask :func:`viewer_mode` before
drawing an owner's control and :func:`compute_allowed` before starting work.
"""
from __future__ import annotations

import os
import sys

__all__ = ["VIEWER_MAX_SECONDS_DEFAULT", "compute_allowed", "viewer_max_seconds", "viewer_mode"]

VIEWER_MAX_SECONDS_DEFAULT = 30.0


def viewer_mode() -> bool:
    """True when the server runs read-only for visitors."""
    env = os.environ.get("ENTK_VIEWER", "").strip().lower()
    return env in ("1", "true", "yes", "on") or "--viewer" in sys.argv[1:]


def viewer_max_seconds() -> float:
    """The largest estimated computation a visitor may start (``ENTK_VIEWER_MAX_SECONDS``)."""
    raw = os.environ.get("ENTK_VIEWER_MAX_SECONDS", "").strip()
    try:
        v = float(raw) if raw else VIEWER_MAX_SECONDS_DEFAULT
    except ValueError:
        return VIEWER_MAX_SECONDS_DEFAULT
    return v if v >= 0 else VIEWER_MAX_SECONDS_DEFAULT


def compute_allowed(estimate_s: float | None, what: str) -> tuple[bool, str]:
    """Whether an uncached computation may start now, and the one-line reason when not.
    Always allowed outside viewer mode; in viewer mode, only with an estimate under the limit
    (no estimate: refused)."""
    if not viewer_mode():
        return True, ""
    limit = viewer_max_seconds()
    if estimate_s is None:
        return False, f"viewer mode: {what} is not cached and its cost cannot be estimated here; ask the owner to compute it"
    if estimate_s > limit:
        return False, (f"viewer mode: {what} is not cached and would take about {estimate_s:.0f} s "
                       f"(limit {limit:.0f} s); ask the owner to compute it")
    return True, ""
