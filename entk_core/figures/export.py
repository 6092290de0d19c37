"""Static export of figures (PNG, SVG) through Plotly's kaleido, offline.

kaleido 1.x renders in a headless Chrome/Chromium it drives over the DevTools protocol. It
is used here only because it works offline: plotly.js comes from the installed ``plotly``
package (``package_data/plotly.min.js``), MathJax (fetched from a CDN by default) is turned
off, and the browser is the system's (``$BROWSER_PATH``, else ``/usr/bin/chromium`` when it
exists). One browser is started on the first export (about 2-10 s) and kept for the
process; later images take well under a second. Without kaleido or a browser,
:func:`static_export_reason` says why and :func:`figure_bytes` raises ``RuntimeError``
with that reason; data exports (CSV, NPZ) never need it.
"""
from __future__ import annotations

import os
import shutil
import threading

import plotly.graph_objects as go

__all__ = ["FORMATS", "static_export_reason", "figure_bytes", "close"]

FORMATS = ("png", "svg")
_lock = threading.Lock()
_started = False


def _browser() -> str | None:
    env = os.environ.get("BROWSER_PATH")
    if env and os.access(env, os.X_OK):
        return env
    for name in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"):
        if os.access(name, os.X_OK):
            return name
    return shutil.which("chromium") or shutil.which("google-chrome")


def static_export_reason() -> str | None:
    """Why PNG/SVG export cannot run here (``None`` when it can)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "PNG/SVG export needs the kaleido package (pip install -r requirements.txt)"
    if _browser() is None:
        return "PNG/SVG export needs Chromium or Chrome (apt-get install chromium); kaleido renders with it"
    return None


def _ensure_server() -> None:
    global _started
    import kaleido
    import plotly.io as pio

    if _started:
        return
    os.environ.setdefault("BROWSER_PATH", _browser() or "")
    pio.defaults.mathjax = None
    kaleido.start_sync_server(mathjax=False, silence_warnings=True)
    _started = True


def figure_bytes(fig: go.Figure, fmt: str, *, width: int = 1100, height: int | None = None, scale: float = 2.0) -> bytes:
    """``fig`` as a PNG or SVG file (bytes), rendered offline (module docstring)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    why = static_export_reason()
    if why:
        raise RuntimeError(why)
    import warnings

    import plotly.io as pio

    h = height or int(fig.layout.height or 480)
    with _lock:
        _ensure_server()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The kopts argument is ignored")
            return pio.to_image(fig, format=fmt, width=width, height=h, scale=scale if fmt == "png" else 1)


def close() -> None:
    """Stop the export browser (it is also stopped when the process exits)."""
    global _started
    import kaleido

    with _lock:
        if _started:
            kaleido.stop_sync_server(silence_warnings=True)
            _started = False
