"""The epoch animation: one Plotly figure with one frame per checkpoint, scrubbed and played in
the browser with no server round trip (Plotly's own slider and play button).

Each frame holds the checkpoint's spectrum (log scale, fixed axes across frames) with its
detected cliffs shaded and labelled, and the tracked eigenvector's picture where the family has
one: for a pair-indexed kernel (``view="grid"``, ``p²`` rows) the ``p × p`` image beside its
2-D Fourier power, otherwise the vector over the kernel rows (``view="vector"``).

What changes from frame to frame is drawn as layout images over fixed axes: the spectrum, its
shading and labels (and a plain vector) as a small SVG, a picture as a PNG (colours sampled
from Plotly's own colour scale, each cell an exact block of pixels). A slider step replaces
the images' sources (``Plotly.relayout`` of ``images[j].source``), which Plotly draws by
itself with no layout, calc or axis pass. Traces would need a full redraw of the figure on
every step wherever a frame holds a heatmap (~23 ms of the browser's main thread per step
for the demo run, against ~2 ms). The price: the animation has no hover readout (the page's
charts of the sidebar's checkpoint have it). Play animates the frames, each carrying the same
images and the slider's position.

For the 51-checkpoint p = 29 demo run with the grid picture the figure is about 1 MB
(``tests/unit/test_animation.py`` bounds it, ``benchmarks/bench_animation.py`` prints it with
the frame rates in headless Chromium).
"""
from __future__ import annotations

import base64
import functools
import html
import io
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.colors import sample_colorscale, unlabel_rgb

from .style import block_label, cliff_colors, fixed_margins
from .vectors import grid_image

__all__ = ["epoch_animation_figure", "FRAME_MS"]

FRAME_MS = 150
"""Milliseconds a frame stays on screen when playing (about 7 frames a second: 51 checkpoints in 8 s)."""

_SPEC_DOMAIN = [0.0, 0.42]
_PICTURE_PX = 360
"""A picture's PNG is at least this many pixels wide (each cell a block of whole pixels), so
the browser scales it little and its cells stay sharp."""
_FONT = "'Open Sans', verdana, arial, sans-serif"


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)}, {alpha})"


def _uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


@functools.lru_cache(maxsize=8)
def _lut(scale: str) -> np.ndarray:
    """Plotly's colour scale ``scale`` at 256 evenly spaced points: ``(256, 3)`` uint8."""
    return np.array([unlabel_rgb(c) for c in sample_colorscale(scale, list(np.linspace(0.0, 1.0, 256)))],
                    dtype=np.float64).round().astype(np.uint8)


def picture_png(z: np.ndarray, lo: float, hi: float, scale: str) -> str:
    """``z`` ``(p, q)`` as a PNG data URI, row 0 on top: values from ``lo`` to ``hi`` onto the
    colour scale (clipped), each cell a square block of pixels (:data:`_PICTURE_PX`)."""
    z = np.asarray(z, dtype=np.float64)
    t = (z - lo) / (hi - lo) if hi > lo else np.full(z.shape, 0.5)
    idx = np.clip(np.nan_to_num(t, nan=0.5) * 255 + 0.5, 0, 255).astype(np.uint8)
    up = max(1, -(-_PICTURE_PX // max(z.shape)))
    img = Image.fromarray(np.ascontiguousarray(idx.repeat(up, axis=0).repeat(up, axis=1)))  # "L", "P" once paletted
    img.putpalette(_lut(scale).tobytes())  # one byte a pixel: a smaller PNG, encoded faster
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return _uri("image/png", buf.getvalue())


def _polylines(x: np.ndarray, y: np.ndarray, color: str, width: float) -> str:
    """SVG polylines through the finite points of ``(x, y)`` (in the 0..1000 box), broken at gaps."""
    ok = np.isfinite(y)
    out, run = [], []
    for xi, yi, good in zip(x.tolist(), y.tolist(), ok.tolist()):
        if good:
            run.append(f"{xi:.1f},{yi:.1f}")
        elif run:
            out.append(run)
            run = []
    if run:
        out.append(run)
    return "".join(f'<polyline points="{" ".join(r)}" fill="none" stroke="{color}" stroke-width="{width}" '
                   'vector-effect="non-scaling-stroke" stroke-linejoin="round"/>' for r in out)


def _svg(body: str, labels: str = "") -> str:
    """An SVG data URI: ``body`` in a 0..1000 box stretched over the image's place (lines keep
    their width), ``labels`` on top in the image's own pixels (text is not stretched)."""
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="100%" height="100%">'
           f'<svg viewBox="0 0 1000 1000" preserveAspectRatio="none" width="100%" height="100%">{body}</svg>'
           f'{labels}</svg>')
    return _uri("image/svg+xml", svg.encode())


def spectrum_svg(log_ev: np.ndarray, cliffs: Sequence[tuple[int, int, str]], y_range: Sequence[float]) -> str:
    """One checkpoint's spectrum (``log10`` eigenvalues ``(k,)``, NaN where not drawn) over the
    axis box ``x ∈ [-0.5, k - 0.5]``, ``y ∈ y_range``, each cliff shaded in its colour and
    labelled with its size at the top."""
    k = len(log_ev)
    X = lambda x: (np.asarray(x, dtype=np.float64) + 0.5) / k * 1000.0  # noqa: E731
    y0, y1 = float(y_range[0]), float(y_range[1])
    ys = (y1 - np.asarray(log_ev, dtype=np.float64)) / (y1 - y0) * 1000.0
    rects, labels = [], []
    for (s, e, lab), color in zip(cliffs, cliff_colors([c[2] for c in cliffs])):
        a, b = float(X(s - 0.5)), float(X(e + 0.5))
        rects.append(f'<rect x="{a:.1f}" y="0" width="{b - a:.1f}" height="1000" fill="{_rgba(color, 0.22)}"/>')
        if lab != "constant":  # the constant mode is the grey band at index 0, too narrow for a label
            text = html.escape(f"{block_label(lab)}: {e - s + 1}")
            labels.append(f'<text x="{(a + b) / 20:.2f}%" y="15" text-anchor="middle" font-family="{_FONT}" '
                          f'font-size="11" fill="#333333">{text}</text>')
    return _svg("".join(rects) + _polylines(X(np.arange(k)), ys, "#1f2d3d", 1.5), "".join(labels))


def vector_svg(v: np.ndarray, m: float) -> str:
    """A vector over the kernel rows as a line over ``x ∈ [-0.5, n - 0.5]``, ``y ∈ [-m, m]``."""
    v = np.asarray(v, dtype=np.float64)
    x = (np.arange(v.size) + 0.5) / v.size * 1000.0
    return _svg(_polylines(x, (m - v) / (2 * m) * 1000.0, "#636EFA", 1.0))


def epoch_animation_figure(
    epochs: Sequence[int],
    eigenvalues: np.ndarray,
    cliffs: Sequence[Sequence[tuple[int, int, str]]],
    *,
    vectors: np.ndarray | None = None,
    vector_index: int | None = None,
    view: str = "vector",
    current: int | None = None,
    title: str = "eNTK spectrum over training",
    frame_ms: int = FRAME_MS,
    height: int = 500,
) -> go.Figure:
    """One frame per checkpoint (module docstring).

    Args:
      epochs: ``(E,)``; eigenvalues: ``(E, k)`` descending (NaN past a short spectrum).
      cliffs: per checkpoint, ``[(start, end, label)]`` (labels as
        :func:`entk_core.engine.spectra.label_cliffs`: ``"constant"``, ``"cliff 1"``...).
      vectors: ``(E, n)`` the tracked eigenvector ``vector_index`` at each checkpoint (signs
        aligned), or ``None`` for the spectrum alone; ``view``: ``"grid"`` (``n = p²``: image
        and Fourier power) or anything else (the vector over the kernel rows).
      current: the epoch the figure opens on (default the last).
      frame_ms: how long each frame shows when playing.

    Returns a figure whose ``layout.images`` are the frame's pictures (the spectrum first),
    whose slider steps set their sources and whose frames (what Play steps through) carry them.
    """
    ep = [int(e) for e in epochs]
    E = len(ep)
    if E == 0:
        raise ValueError("no checkpoints to animate")
    ev = np.asarray(eigenvalues, dtype=np.float64)
    if ev.ndim != 2 or ev.shape[0] != E or len(cliffs) != E:
        raise ValueError(f"need eigenvalues (E, k) and cliffs for E = {E} checkpoints, got {ev.shape} and {len(cliffs)}")
    k = ev.shape[1]
    pos = np.where(np.isfinite(ev) & (ev > 0), ev, np.nan)
    finite = pos[np.isfinite(pos)]
    y_range = ([float(np.log10(finite.min())) - 0.15, float(np.log10(finite.max())) + 0.15] if finite.size
               else [-1.0, 1.0])
    i0 = ep.index(int(current)) if current is not None and int(current) in ep else E - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ev = np.log10(pos)

    grid = False
    p = 0
    if vectors is not None:
        vectors = np.nan_to_num(np.asarray(vectors, dtype=np.float64))
        if vectors.shape[0] != E:
            raise ValueError(f"need one vector per checkpoint ({E}), got {vectors.shape[0]}")
        p = int(np.sqrt(vectors.shape[1]))
        grid = view == "grid" and p * p == vectors.shape[1]
    wide = vectors is None

    # every frame's images: the spectrum, then the picture(s)
    sources = [[spectrum_svg(log_ev[i], cliffs[i], y_range)] for i in range(E)]
    place = [{"xref": "x", "yref": "y", "x": -0.5, "y": y_range[1], "sizex": k, "sizey": y_range[1] - y_range[0]}]
    layout: dict = {
        "height": height, "margin": {"l": 70, "r": 20, "t": 90, "b": 158}, "showlegend": False,
        "hovermode": False,
        "xaxis": {"domain": [0.0, 1.0] if wide else _SPEC_DOMAIN, "anchor": "y", "title": {"text": "eigenvalue index"},
                  "range": [-0.5, k - 0.5]},
        "yaxis": {"anchor": "x", "type": "log", "range": y_range, "dtick": 1, "exponentformat": "power",
                  "title": {"text": "eigenvalue"}},
    }
    extra = f" · eigenvector {vector_index}" if vectors is not None and vector_index is not None else ""
    panel = {"y": 1.0, "xref": "paper", "yref": "paper", "xanchor": "center", "yanchor": "bottom",
             "showarrow": False, "font": {"size": 13}}
    bare = {"showgrid": False, "zeroline": False}
    if grid:
        pics = [grid_image(v, p)[:2] for v in vectors]
        m_img = float(max(np.abs(img).max() for img, _ in pics)) or 1.0
        freqs = np.fft.fftshift(np.fft.fftfreq(p, d=1.0 / p)).round().astype(int)
        f0, f1 = float(freqs[0]) - 0.5, float(freqs[-1]) + 0.5
        for i, (img, power) in enumerate(pics):
            # the power's colour scale follows each frame (early frames spread their power thinly)
            sources[i] += [picture_png(img, -m_img, m_img, "RdBu"), picture_png(power, float(power.min()),
                                                                                 float(power.max()), "Viridis")]
        place += [{"xref": "x2", "yref": "y2", "x": -0.5, "y": -0.5, "sizex": p, "sizey": p},
                  {"xref": "x3", "yref": "y3", "x": f0, "y": f0, "sizex": f1 - f0, "sizey": f1 - f0}]
        layout.update({
            "xaxis2": {"domain": [0.50, 0.71], "anchor": "y2", "title": {"text": "b"}, "constrain": "domain",
                       "range": [-0.5, p - 0.5], **bare},
            "yaxis2": {"anchor": "x2", "title": {"text": "a"}, "range": [p - 0.5, -0.5], "scaleanchor": "x2",
                       "constrain": "domain", **bare},
            "xaxis3": {"domain": [0.79, 1.0], "anchor": "y3", "title": {"text": "k_b"}, "constrain": "domain",
                       "range": [f0, f1], **bare},
            "yaxis3": {"anchor": "x3", "title": {"text": "k_a"}, "range": [f1, f0], "scaleanchor": "x3",
                       "constrain": "domain", **bare},
            "annotations": [{**panel, "x": 0.605, "text": "eigenvector over (a, b)"},
                            {**panel, "x": 0.895, "text": "its 2-D Fourier power"}],
        })
    elif vectors is not None:
        n = vectors.shape[1]
        m_vec = 1.05 * (float(np.abs(vectors).max()) or 1.0)
        for i in range(E):
            sources[i].append(vector_svg(vectors[i], m_vec))
        place.append({"xref": "x2", "yref": "y2", "x": -0.5, "y": m_vec, "sizex": n, "sizey": 2 * m_vec})
        layout.update({
            "xaxis2": {"domain": [0.54, 1.0], "anchor": "y2", "title": {"text": "kernel row (input)"},
                       "range": [-0.5, n - 0.5]},
            "yaxis2": {"anchor": "x2", "range": [-m_vec, m_vec], "title": {"text": "value"}},
            "annotations": [{**panel, "x": 0.77, "text": "the tracked eigenvector"}],
        })
    # an empty trace per panel (one per image), so that Plotly draws its axes
    traces = [go.Scatter(x=[None], y=[None], xaxis=pl["xref"], yaxis=pl["yref"], hoverinfo="skip", showlegend=False)
              for pl in place]

    def images(i: int) -> list[dict]:
        return [{**pl, "source": src, "sizing": "stretch", "layer": "above", "xanchor": "left", "yanchor": "top"}
                for pl, src in zip(place, sources[i])]

    layout["images"] = images(i0)
    steps = [{"label": str(e), "method": "relayout",
              "args": [{f"images[{j}].source": src for j, src in enumerate(sources[i])}]} for i, e in enumerate(ep)]
    layout["sliders"] = [{
        "active": i0, "currentvalue": {"prefix": "epoch ", "font": {"size": 14}}, "pad": {"t": 62, "b": 10},
        "x": 0.15, "len": 0.85, "y": 0, "yanchor": "top", "steps": steps,
    }]
    # Play animates the frames: each redraws the figure with its images and moves the slider
    # (which follows by itself only when its steps animate); it starts from the first checkpoint
    layout["updatemenus"] = [{
        "type": "buttons", "direction": "left", "showactive": False, "x": 0.0, "y": 0, "xanchor": "left",
        "yanchor": "top", "pad": {"t": 69, "r": 10},
        "buttons": [
            {"label": "▶ Play", "method": "animate",
             "args": [None, {"mode": "immediate", "fromcurrent": False,
                             "frame": {"duration": int(frame_ms), "redraw": True}, "transition": {"duration": 0}}]},
            {"label": "❚❚", "method": "animate", "args": [[None], {"mode": "immediate", "frame": {"duration": 0},
                                                                  "transition": {"duration": 0}}]},
        ],
    }]
    layout["title"] = {"text": f"{title}{extra}"}
    fig = fixed_margins(go.Figure(data=traces, layout=layout))
    # The frames hold plain layout values (tests/unit/test_animation.py validates them with
    # Plotly). Plotly's per-property validation of 51 frames takes ~1 s, on every page run that
    # draws the figure (each epoch step), so they are attached without it.
    fig._frame_objs = tuple(go.Frame(name=str(e), layout={"images": images(i), "sliders": [{"active": i}]},
                                     _validate=False) for i, e in enumerate(ep))
    return fig
