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
    height: int = 620,
) -> go.Figure:
    """Three panels sharing the epoch axis: the kernel distances (log scale: they fall by orders
    of magnitude as training settles), the centred target alignment, and the effective rank.

    Args:
      curves: ``{field: (E,)}`` with the fields of :data:`entk_core.workflows.dynamics.FIELDS`
        (``kernel_distance_prev``, ``kernel_distance_final``, ``target_alignment``,
        ``effective_rank``); NaN where a value is null. Missing fields are left out (and a
        panel with none of its fields).
    """
    x = [int(e) for e in epochs]
    panels = [(("kernel_distance_prev", "kernel_distance_final"), "kernel distance (Fort et al. 2020)", "distance"),
              (("target_alignment",), "centred kernel-target alignment (Cortes et al. 2012)", "alignment"),
              (("effective_rank",), "effective rank (Roy and Vetterli 2007)", "effective rank")]
    panels = [pn for pn in panels if any(f in curves for f in pn[0])]
    n = len(panels)
    gap = 0.1
    h = (1.0 - gap * (n - 1)) / max(n, 1)
    traces, annotations = [], []
    layout: dict = {"title": {"text": title}, "height": height, "margin": {"l": 70, "r": 20, "t": 80, "b": 50},
                    "hovermode": "x unified", "legend": {"orientation": "h"}}
    refs = []
    for j, (fields, label, ytitle) in enumerate(panels):
        ax = "" if j == 0 else str(j + 1)
        top = 1.0 - j * (h + gap)
        for name in fields:
            if name not in curves:
                continue
            y = np.asarray(curves[name], dtype=np.float64)
            if name.startswith("kernel_distance"):
                y = np.where(y > 0, y, np.nan)  # the last checkpoint's 0 to itself has no place on a log axis
            traces.append(go.Scatter(x=x, y=np.round(y, 10), mode="lines+markers", name=_CURVE_NAMES[name],
                                     xaxis=f"x{ax}", yaxis=f"y{ax}", marker={"size": 4},
                                     line={"color": _CURVE_COLORS[name], "width": 2},
                                     hovertemplate="epoch %{x}<br>%{y:.4g}<extra>" + _CURVE_NAMES[name] + "</extra>"))
        yaxis = {"domain": [max(0.0, round(top - h, 6)), round(top, 6)], "anchor": f"x{ax}", "title": {"text": ytitle}}
        if fields[0].startswith("kernel_distance"):
            yaxis.update({"type": "log", "dtick": 1, "exponentformat": "power", "showexponent": "all"})
        layout[f"yaxis{ax}"] = yaxis
        last = j == n - 1
        layout[f"xaxis{ax}"] = {"anchor": f"y{ax}", **({"matches": "x"} if j else {}),
                                **({"title": {"text": "epoch"}} if last else {"showticklabels": False})}
        annotations.append({"text": label, "x": 0.5, "y": top, "xref": "paper", "yref": "paper", "xanchor": "center",
                            "yanchor": "bottom", "showarrow": False, "font": {"size": 13}})
        refs.append((f"x{ax}", f"y{ax} domain"))
    layout["annotations"] = annotations
    fig = go.Figure(data=traces, layout=layout)
    shapes: list = []
    for r, ref in enumerate(refs):
        if current is not None:
            marker_line(fig, current, f"epoch {current:g}", "epoch", shapes=shapes, refs=ref, showlegend=r == 0)
        for label, xm in (markers or {}).items():
            if xm is not None:
                marker_line(fig, xm, label, "onset" if label.startswith("onset") else "peak", shapes=shapes,
                            refs=ref, showlegend=r == 0)
    fig.update_layout(shapes=shapes)
    return fixed_margins(fig)
