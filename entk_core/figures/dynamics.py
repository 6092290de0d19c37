"""Figures of the Training dynamics view (:mod:`entk_core.workflows.dynamics`): the spectrum
over training as one picture, and the kernel's movement, alignment and rank over training."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from .style import fixed_margins, marker_line

__all__ = ["spectrum_over_training_figure", "kernel_curves_figure", "log10_positive"]

_CURVE_COLORS = {
    "kernel_distance_prev": "#EF553B", "kernel_distance_final": "#636EFA", "target_alignment": "#00CC96",
    "effective_rank": "#1f2d3d",
}
_CURVE_NAMES = {
    "kernel_distance_prev": "kernel distance to the previous checkpoint",
    "kernel_distance_final": "kernel distance to the last checkpoint",
    "target_alignment": "centred kernel-target alignment",
    "effective_rank": "effective rank",
}


def log10_positive(values: np.ndarray) -> np.ndarray:
    """``log10`` of the positive entries, NaN elsewhere (float32, 4 decimals: what a figure sends)."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(np.isfinite(v) & (v > 0), np.log10(np.where(v > 0, v, 1.0)), np.nan)
    return np.round(out, 4).astype(np.float32)


def _power_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    sup = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
    vals = list(range(int(np.floor(lo)), int(np.ceil(hi)) + 1))
    step = max(1, len(vals) // 8)
    vals = vals[::step]
    return [float(v) for v in vals], [f"10{str(v).translate(sup)}" for v in vals]


def spectrum_over_training_figure(
    epochs: Sequence[int],
    eigenvalues: np.ndarray,
    *,
    cliff_ends: Sequence[Sequence[int]] | None = None,
    current: int | None = None,
    markers: dict[str, float | None] | None = None,
    title: str = "eNTK spectrum over training",
    height: int = 460,
) -> go.Figure:
    """Eigenvalue index (y) against epoch (x), coloured by ``log10 λ``: a cliff is a sharp change
    of colour down a column, so cliffs that form during training show as bands.

    Args:
      eigenvalues: ``(E, k)``, descending per checkpoint (NaN where a spectrum is shorter).
      cliff_ends: per checkpoint, the last index of each detected cliff (drawn as white ticks).
      current: the epoch marked with a vertical line (the sidebar's checkpoint).
      markers: further vertical lines ``{label: epoch}`` (onset, peaks), named in the legend.
    """
    ep = np.asarray(epochs)
    z = log10_positive(np.asarray(eigenvalues)).T  # (k, E): one column per checkpoint
    finite = z[np.isfinite(z)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    tickvals, ticktext = _power_ticks(lo, hi)
    traces = [go.Heatmap(
        x=ep, y=np.arange(z.shape[0]), z=z, colorscale="Viridis", zmin=lo, zmax=hi, name="log10 λ",
        colorbar={"title": {"text": "eigenvalue"}, "tickvals": tickvals, "ticktext": ticktext, "thickness": 14},
        hovertemplate="epoch %{x}<br>index %{y}<br>log10 λ = %{z:.3f}<extra></extra>",
    )]
    if cliff_ends is not None:
        xs = [e for e, ends in zip(ep, cliff_ends) for _ in ends]
        ys = [int(t) + 0.5 for ends in cliff_ends for t in ends]
        if xs:
            traces.append(go.Scatter(x=xs, y=ys, mode="markers", name="end of a detected cliff",
                                     marker={"symbol": "line-ew", "size": 9, "line": {"width": 2, "color": "white"}},
                                     hovertemplate="epoch %{x}<br>a cliff ends after index %{y:.0f}<extra></extra>"))
    fig = go.Figure(data=traces)
    shapes: list = []
    if current is not None:
        marker_line(fig, current, f"epoch {current:g}", "epoch", shapes=shapes)
    for label, x in (markers or {}).items():
        if x is not None:
            marker_line(fig, x, label, "onset" if label.startswith("onset") else "peak", shapes=shapes)
    fig.update_layout(shapes=shapes, title={"text": title}, height=height, xaxis_title="epoch",
                      yaxis_title="eigenvalue index (0 = largest)", margin={"l": 70, "r": 20, "t": 60, "b": 50},
                      legend={"orientation": "h"}, plot_bgcolor="#222222")
    fig.update_yaxes(autorange="reversed")
    return fixed_margins(fig)


def kernel_curves_figure(
    epochs: Sequence[int],
    curves: dict[str, np.ndarray],
    *,
    current: int | None = None,
    markers: dict[str, float | None] | None = None,
    title: str = "How the kernel moves over training",
    height: int = 520,
) -> go.Figure:
    """Two panels sharing the epoch axis: the kernel distances and the target alignment (top,
    between 0 and 1) and the effective rank (bottom).

    Args:
      curves: ``{field: (E,)}`` with the fields of :data:`entk_core.workflows.dynamics.FIELDS`
        (``kernel_distance_prev``, ``kernel_distance_final``, ``target_alignment``,
        ``effective_rank``); NaN where a value is null. Missing fields are left out.
    """
    x = [int(e) for e in epochs]
    traces = []
    for name in ("kernel_distance_prev", "kernel_distance_final", "target_alignment"):
        if name in curves:
            y = np.round(np.asarray(curves[name], dtype=np.float64), 5)
            traces.append(go.Scatter(x=x, y=y, mode="lines+markers", name=_CURVE_NAMES[name], xaxis="x", yaxis="y",
                                     line={"color": _CURVE_COLORS[name], "width": 2}, marker={"size": 4},
                                     hovertemplate="epoch %{x}<br>%{y:.4f}<extra>" + _CURVE_NAMES[name] + "</extra>"))
    if "effective_rank" in curves:
        y = np.round(np.asarray(curves["effective_rank"], dtype=np.float64), 3)
        traces.append(go.Scatter(x=x, y=y, mode="lines+markers", name=_CURVE_NAMES["effective_rank"], xaxis="x2",
                                 yaxis="y2", line={"color": _CURVE_COLORS["effective_rank"], "width": 2},
                                 marker={"size": 4}, hovertemplate="epoch %{x}<br>%{y:.2f}<extra>effective rank</extra>"))
    panel = {"x": 0.5, "xref": "paper", "yref": "paper", "xanchor": "center", "yanchor": "bottom", "showarrow": False,
             "font": {"size": 14}}
    layout = {
        "title": {"text": title}, "height": height, "margin": {"l": 60, "r": 20, "t": 80, "b": 50},
        "hovermode": "x unified", "legend": {"orientation": "h"},
        "xaxis": {"anchor": "y", "matches": "x2", "showticklabels": False},
        "yaxis": {"domain": [0.45, 1.0], "anchor": "x", "range": [-0.02, 1.02],
                  "title": {"text": "distance · alignment"}},
        "xaxis2": {"anchor": "y2", "title": {"text": "epoch"}},
        "yaxis2": {"domain": [0.0, 0.36], "anchor": "x2", "title": {"text": "effective rank"}},
        "annotations": [
            {**panel, "y": 1.0, "text": "kernel distance (Fort et al. 2020) and centred target alignment"},
            {**panel, "y": 0.36, "text": "effective rank (Roy and Vetterli 2007)"},
        ],
    }
    fig = go.Figure(data=traces, layout=layout)
    shapes: list = []
    for r, refs in enumerate((("x", "y domain"), ("x2", "y2 domain"))):
        if current is not None:
            marker_line(fig, current, f"epoch {current:g}", "epoch", shapes=shapes, refs=refs, showlegend=r == 0)
        for label, xm in (markers or {}).items():
            if xm is not None:
                marker_line(fig, xm, label, "onset" if label.startswith("onset") else "peak", shapes=shapes,
                            refs=refs, showlegend=r == 0)
    fig.update_layout(shapes=shapes)
    return fixed_margins(fig)
