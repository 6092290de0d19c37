"""The epoch animation: one Plotly figure with one frame per checkpoint, scrubbed and played in
the browser with no server round trip (Plotly's own slider and play button).

Each frame holds the checkpoint's spectrum (log scale, fixed axes across frames) with its
detected cliffs shaded, and the tracked eigenvector's picture where the family has one: for
a pair-indexed kernel (``view="grid"``, ``p²`` rows) the ``p × p`` image beside its 2-D
Fourier power, otherwise the vector over the kernel rows (``view="vector"``).

Payload and speed: a frame carries only trace data (the spectrum's ``y`` and the pictures'
``z`` as float32, which Plotly sends as base64 typed arrays, and the cliffs as filled
rectangles with their labels); the axes, panels and controls are in the layout once. Where the
frames hold only lines (no picture, or a vector's), the slider's steps animate them and
Plotly updates the traces in place. A heatmap is drawn only by a full redraw, and animating
to a frame with a redraw lays the whole figure out twice; so where a frame holds the ``p × p``
pictures the slider's steps restyle the traces with the frame's values instead (one redraw,
~1.4x the frames per second), and each frame (what Play steps through) also moves the slider.
The epoch shows in the slider's current value. For the 51-checkpoint p = 29 demo run with the
grid picture that is about 1 MB, the steps' copy of the frames' values included
(``tests/unit/test_animation.py`` bounds it, ``benchmarks/bench_animation.py`` prints it with
the frame rates in headless Chromium).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from _plotly_utils.utils import to_typed_array_spec

from .style import CLIFF_COLORS, CONSTANT_COLOR, block_label, fixed_margins
from .vectors import grid_image

__all__ = ["epoch_animation_figure", "FRAME_MS"]

FRAME_MS = 150
"""Milliseconds a frame stays on screen when playing (about 7 frames a second: 51 checkpoints in 8 s)."""

_SPEC_DOMAIN = [0.0, 0.42]


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _slots(cliffs: Sequence[Sequence[tuple[int, int, str]]]) -> int:
    """Shading traces needed: the constant mode's, then one per numbered cliff (most in a frame)."""
    return 1 + max((sum(lab != "constant" for _, _, lab in c) for c in cliffs), default=0)


def _cliff_traces(cliffs: Sequence[tuple[int, int, str]], n_slots: int, lo: float, hi: float) -> list[dict]:
    """The frame's cliffs as filled rectangles, one trace per colour slot (slot 0: the constant
    mode, then cliff 1, 2...; an unused slot is empty), and one text trace naming each block
    above it. Traces, not layout shapes: a frame that changes only trace data is redrawn without
    laying the figure out again (~1.6x faster per frame in Chromium)."""
    xs: list[list] = [[] for _ in range(n_slots)]
    ys: list[list] = [[] for _ in range(n_slots)]
    tx, ty, tt = [], [], []
    n_num = 0
    for s, e, lab in cliffs:
        slot = 0 if lab == "constant" else 1 + n_num
        n_num += lab != "constant"
        if slot >= n_slots:
            continue
        xs[slot] += [s - 0.5, e + 0.5, e + 0.5, s - 0.5, s - 0.5, None]
        ys[slot] += [lo, lo, hi, hi, lo, None]
        if lab != "constant":  # the constant mode is the grey band at index 0, too narrow for a label
            tx.append((s + e) / 2)
            ty.append(hi)
            tt.append(f"{block_label(lab)}: {e - s + 1}")
    out = [{"type": "scatter", "x": x or [None], "y": y or [None]} for x, y in zip(xs, ys)]
    out.append({"type": "scatter", "x": tx or [None], "y": ty or [None], "text": tt or [""]})
    return out


def _slot_color(slot: int) -> str:
    return CONSTANT_COLOR if slot == 0 else CLIFF_COLORS[(slot - 1) % len(CLIFF_COLORS)]


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)}, {alpha})"


def _typed(v):
    """An array as the plotly.js typed-array spec plotly.py sends for trace data (its own
    ``to_typed_array_spec``: the steps' values sit in the layout, which plotly.py sends as
    lists); anything else as it is."""
    return to_typed_array_spec(v) if isinstance(v, np.ndarray) else v


def _restyle(data: list[dict], statics: list[dict]) -> dict:
    """``Plotly.restyle`` values that set every trace to ``data`` (a frame's traces): for each
    attribute any frame trace sets, one value per trace, the trace's own value where the frame
    leaves it (``statics``; ``None``, which restyle reads as unset, where it has none)."""
    keys = sorted({k for d in data for k in d if k != "type"})
    return {k: [_typed(d[k]) if k in d else _typed(st.get(k)) for d, st in zip(data, statics)] for k in keys}


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

    grid = False
    p = 0
    if vectors is not None:
        vectors = np.asarray(vectors, dtype=np.float64)
        if vectors.shape[0] != E:
            raise ValueError(f"need one vector per checkpoint ({E}), got {vectors.shape[0]}")
        p = int(np.sqrt(vectors.shape[1]))
        grid = view == "grid" and p * p == vectors.shape[1]
    wide = vectors is None

    def spec_y(i: int) -> np.ndarray:
        return _f32(pos[i])

    pictures: list[tuple[np.ndarray, ...]] = []
    if vectors is not None:
        for i in range(E):
            v = np.nan_to_num(vectors[i])
            if grid:
                img, power, freqs = grid_image(v, p) if np.any(v) else (np.zeros((p, p)), np.zeros((p, p)), None)
                pictures.append((_f32(img), _f32(power)))
            else:
                pictures.append((_f32(v),))
    n_slots = _slots(cliffs)
    lo, hi = 10 ** y_range[0], 10 ** (y_range[1] - 0.08)

    def dynamic(i: int) -> list[dict]:
        """What changes from frame to frame on the spectrum panel: the shading, the labels, the line."""
        return _cliff_traces(cliffs[i], n_slots, lo, hi) + [{"type": "scatter", "y": spec_y(i)}]

    first = dynamic(i0)
    traces: list = [go.Scatter(x=d["x"], y=d["y"], mode="lines", fill="toself", line={"width": 0},
                               fillcolor=_rgba(_slot_color(j), 0.22), hoverinfo="skip", xaxis="x", yaxis="y")
                    for j, d in enumerate(first[:n_slots])]
    traces.append(go.Scatter(x=first[n_slots]["x"], y=first[n_slots]["y"], text=first[n_slots]["text"], mode="text",
                             textposition="bottom center", textfont={"size": 11, "color": "#333333"},
                             hoverinfo="skip", xaxis="x", yaxis="y"))
    traces.append(go.Scatter(
        x=np.arange(k), y=spec_y(i0), mode="lines", name="eigenvalue", line={"width": 1.5, "color": "#1f2d3d"},
        xaxis="x", yaxis="y", hovertemplate="index %{x}<br>λ = %{y:.4g}<extra></extra>", showlegend=False))
    layout: dict = {
        "height": height, "margin": {"l": 70, "r": 20, "t": 90, "b": 140}, "showlegend": False,
        "hovermode": "closest",
        "xaxis": {"domain": [0.0, 1.0] if wide else _SPEC_DOMAIN, "anchor": "y", "title": {"text": "eigenvalue index"},
                  "range": [-0.5, k - 0.5]},
        "yaxis": {"anchor": "x", "type": "log", "range": y_range, "dtick": 1, "exponentformat": "power",
                  "title": {"text": "eigenvalue"}},
    }
    extra = ""
    if vectors is not None:
        panel = {"y": 1.0, "xref": "paper", "yref": "paper", "xanchor": "center", "yanchor": "bottom",
                 "showarrow": False, "font": {"size": 13}}
        extra = f" · eigenvector {vector_index}" if vector_index is not None else ""
        if grid:
            m_img = float(max(np.nanmax(np.abs(pic[0])) for pic in pictures)) or 1.0
            freqs = np.fft.fftshift(np.fft.fftfreq(p, d=1.0 / p)).round().astype(int)
            traces.append(go.Heatmap(z=pictures[i0][0], colorscale="RdBu", zmin=-m_img, zmax=m_img, showscale=False,
                                     xaxis="x2", yaxis="y2", hovertemplate="a=%{y}, b=%{x}<br>%{z:.4f}<extra></extra>"))
            # the power's colour scale follows each frame (early frames spread their power thinly)
            traces.append(go.Heatmap(z=pictures[i0][1], x=freqs, y=freqs, colorscale="Viridis", showscale=False,
                                     xaxis="x3", yaxis="y3",
                                     hovertemplate="k_a=%{y}, k_b=%{x}<br>%{z:.3f}<extra></extra>"))
            layout.update({
                "xaxis2": {"domain": [0.50, 0.71], "anchor": "y2", "title": {"text": "b"}, "constrain": "domain"},
                "yaxis2": {"anchor": "x2", "title": {"text": "a"}, "autorange": "reversed", "scaleanchor": "x2",
                           "constrain": "domain"},
                "xaxis3": {"domain": [0.79, 1.0], "anchor": "y3", "title": {"text": "k_b"}, "constrain": "domain"},
                "yaxis3": {"anchor": "x3", "title": {"text": "k_a"}, "autorange": "reversed", "scaleanchor": "x3",
                           "constrain": "domain"},
                "annotations": [{**panel, "x": 0.605, "text": "eigenvector over (a, b)"},
                                {**panel, "x": 0.895, "text": "its 2-D Fourier power"}],
            })
        else:
            n = pictures[0][0].size
            m_vec = float(max(np.nanmax(np.abs(pic[0])) for pic in pictures)) or 1.0
            traces.append(go.Scatter(x=np.arange(n), y=pictures[i0][0], mode="lines", xaxis="x2", yaxis="y2",
                                     line={"color": "#636EFA", "width": 1},
                                     hovertemplate="row %{x}<br>%{y:.4f}<extra></extra>"))
            layout.update({
                "xaxis2": {"domain": [0.54, 1.0], "anchor": "y2", "title": {"text": "kernel row (input)"}},
                "yaxis2": {"anchor": "x2", "range": [-1.05 * m_vec, 1.05 * m_vec], "title": {"text": "value"}},
                "annotations": [{**panel, "x": 0.77, "text": "the tracked eigenvector"}],
            })
    trace_ids = list(range(len(traces)))
    # heatmaps are drawn only by a full redraw; scatter-only frames (the spectrum, a plain vector)
    # are updated in place, several times cheaper per frame
    redraw = grid
    frame_data = []
    for i in range(E):
        data = dynamic(i)
        if vectors is not None:
            data += ([{"type": "heatmap", "z": pictures[i][0]}, {"type": "heatmap", "z": pictures[i][1]}] if grid
                     else [{"type": "scatter", "y": pictures[i][0]}])
        frame_data.append(data)
    # Play animates the frames; a frame that needs a full redraw also carries the slider's position
    # (the slider follows by itself only when its steps animate), and Play starts from the first
    # checkpoint (Plotly's "from the current frame" knows only frames it animated, not restyles)
    frames = [go.Frame(name=str(e), data=frame_data[i], traces=trace_ids, _validate=False,
                       layout={"sliders": [{"active": i}]} if redraw else None) for i, e in enumerate(ep)]
    if redraw:
        # A slider step restyles the traces with the frame's values: one full redraw, where
        # animating to a frame with a redraw lays the figure out twice (~1.4x the frames/s)
        statics = [{k: v for k, v in t.to_plotly_json().items() if k in ("x", "y", "text", "z")} for t in traces]
        steps = [{"label": str(e), "method": "restyle", "args": [_restyle(frame_data[i], statics), trace_ids]}
                 for i, e in enumerate(ep)]
    else:
        step_args = {"mode": "immediate", "frame": {"duration": 0, "redraw": False}, "transition": {"duration": 0}}
        steps = [{"label": str(e), "method": "animate", "args": [[str(e)], step_args]} for e in ep]
    layout["sliders"] = [{
        "active": i0, "currentvalue": {"prefix": "epoch ", "font": {"size": 14}}, "pad": {"t": 45, "b": 10},
        "x": 0.15, "len": 0.85, "y": 0, "yanchor": "top", "steps": steps,
    }]
    layout["updatemenus"] = [{
        "type": "buttons", "direction": "left", "showactive": False, "x": 0.0, "y": 0, "xanchor": "left",
        "yanchor": "top", "pad": {"t": 52, "r": 10},
        "buttons": [
            {"label": "▶ Play", "method": "animate",
             "args": [None, {"mode": "immediate", "fromcurrent": not redraw,
                             "frame": {"duration": int(frame_ms), "redraw": redraw},
                             "transition": {"duration": 0}}]},
            {"label": "❚❚", "method": "animate", "args": [[None], {"mode": "immediate", "frame": {"duration": 0},
                                                                  "transition": {"duration": 0}}]},
        ],
    }]
    layout["title"] = {"text": f"{title}{extra}"}
    fig = fixed_margins(go.Figure(data=traces, layout=layout))
    # The frames hold plain values of the traces above (tests/unit/test_animation.py validates them
    # with Plotly). Plotly's per-property validation of 51 frames takes ~1 s, on every page run that
    # draws the figure (each epoch step), so they are attached without it.
    fig._frame_objs = tuple(frames)
    return fig
