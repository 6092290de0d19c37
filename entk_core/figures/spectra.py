"""Spectrum figures: eigenvalues with their cliffs shaded and named, comparison overlays,
the selected eigenvalue, and the principal angles between two eigenspaces."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from ..engine.spectra import Cliff
from .style import block_label, cliff_colors, fixed_margins, log_axis, marker_line, vline

__all__ = ["spectrum_figure", "principal_angles_figure", "stagger_rows"]

_COMPARE_COLORS = ["#EF553B", "#00CC96", "#AB63FA", "#FFA15A"]
_MARKERS_UP_TO = 60


def stagger_rows(centres: Sequence[float], widths: Sequence[float], max_rows: int = 4) -> list[int]:
    """Rows (0, 1, ...) for labels centred at ``centres`` with ``widths`` (same units) so
    that labels sharing a row never overlap (greedy, left to right; beyond ``max_rows``
    rows the least crowded row is reused)."""
    order = np.argsort(centres)
    ends = [-np.inf] * max_rows
    rows = [0] * len(centres)
    for i in order:
        lo = centres[i] - widths[i] / 2
        r = next((r for r in range(max_rows) if ends[r] <= lo), int(np.argmin(ends)))
        rows[i] = r
        ends[r] = centres[i] + widths[i] / 2
    return rows


def spectrum_figure(
    eigenvalues: np.ndarray,
    cliffs: Sequence[Cliff] = (),
    *,
    labels: Sequence[str] | None = None,
    title: str = "eNTK spectrum",
    log: bool = True,
    reference_lines: dict[str, float] | None = None,
    extra: dict[str, np.ndarray] | None = None,
    selected: int | None = None,
    height: int = 480,
    name: str = "eigenvalue",
    width_px: int = 560,
) -> go.Figure:
    """Eigenvalue vs index, each cliff shaded and named above the plot.

    Args:
      eigenvalues: ``(k,)`` descending.
      cliffs: detected cliffs; each is shaded over ``[start - 0.5, end + 0.5]``.
      labels: one name per cliff (``"constant"`` is shown as *constant mode*, in grey, and
        is not numbered; see :func:`entk_core.engine.spectra.label_cliffs`). Default:
        ``cliff 1``, ``cliff 2``... in order.
      reference_lines: vertical dotted lines ``{name: index}``, named in the legend.
      extra: spectra to overlay ``{name: (k',) array}`` (another checkpoint or run).
      selected: an index to ring (the eigenvector shown below the chart).
      name: legend name of the main spectrum.
      width_px: about how wide the chart is drawn (a third of the page: ~360), so that the
        bottom margin holds the legend's rows under the x-axis title.
    """
    vals = np.asarray(eigenvalues, dtype=float)
    idx = np.arange(len(vals))
    fig = go.Figure()
    # markers drawn only on short spectra: on long ones they merge into the line, and a marker
    # per point doubles the browser's time for this chart. The trace keeps its markers mode
    # (Plotly selects clicked points only on traces with markers), drawing at most one.
    many = len(vals) > _MARKERS_UP_TO
    fig.add_trace(go.Scatter(
        x=idx, y=np.where(vals > 0, vals, np.nan) if log else vals, mode="lines+markers", name=name,
        marker={"size": 1 if many else 4, **({"maxdisplayed": 1} if many else {})},
        line={"width": 1.5, "color": "#1f2d3d"},
        hovertemplate="index %{x}<br>λ = %{y:.4g}<extra></extra>",
    ))
    # compared spectra over the main line (drawn under it they vanish where the two agree)
    for j, (label, ev) in enumerate((extra or {}).items()):
        ev = np.asarray(ev, dtype=float)
        fig.add_trace(go.Scatter(x=np.arange(len(ev)), y=np.where(ev > 0, ev, np.nan) if log else ev,
                                 mode="lines", name=label, opacity=0.85,
                                 line={"width": 1.5, "dash": "dot", "color": _COMPARE_COLORS[j % len(_COMPARE_COLORS)]},
                                 hovertemplate="index %{x}<br>λ = %{y:.4g}<extra>" + label + "</extra>"))
    names = list(labels) if labels is not None else [f"cliff {i + 1}" for i in range(len(cliffs))]
    texts, centres, colors, shapes = [], [], [], []
    for c, lab, color in zip(cliffs, names, cliff_colors(names)):
        shapes.append({"type": "rect", "x0": c.start - 0.5, "x1": c.end + 0.5, "y0": 0, "y1": 1, "xref": "x",
                       "yref": "y domain", "fillcolor": color, "opacity": 0.15, "line": {"width": 0}})
        shapes.append(vline(c.end + 0.5, {"color": color, "width": 1, "dash": "dash"}))
        texts.append(f"{block_label(lab)}: {c.size}")
        centres.append((c.start + c.end) / 2)
        colors.append(color)
    span = max(len(vals), 1)
    widths = [len(t) * 7.5 / 640 * span for t in texts]  # ~7.5 px a character on a ~640 px wide plot
    rows = stagger_rows(centres, widths)
    annotations = [{"x": x, "y": 1.0 + 0.065 * r, "xref": "x", "yref": "paper", "text": t, "showarrow": False,
                    "yanchor": "bottom", "font": {"color": color, "size": 12}}
                   for t, x, color, r in zip(texts, centres, colors, rows)]
    for label, x in (reference_lines or {}).items():
        marker_line(fig, x, label, "reference", shapes=shapes)
    if selected is not None and 0 <= selected < len(vals):
        fig.add_trace(go.Scatter(x=[selected], y=[vals[selected]], mode="markers", name=f"selected: #{selected}",
                                 marker={"size": 13, "color": "#EF553B", "symbol": "circle-open", "line": {"width": 2}},
                                 hoverinfo="skip"))
    top_margin = 70 + 22 * (max(rows) + 1 if rows else 0)
    fig.update_layout(
        shapes=shapes, annotations=annotations, title={"text": title},
        xaxis_title="eigenvalue index", yaxis_title="eigenvalue", height=height,
        margin={"l": 70, "r": 20, "t": top_margin, "b": 50},
        legend={"orientation": "h", "y": -0.18}, hovermode="closest", clickmode="event+select",
    )
    if log:
        log_axis(fig, "y", values=np.concatenate([vals, *[np.asarray(v, dtype=float).ravel() for v in (extra or {}).values()]]))
    return fixed_margins(fig, width_px=width_px)


def principal_angles_figure(angles_deg: np.ndarray, *, title: str = "Principal angles between the eigenspaces",
                            height: int = 320) -> go.Figure:
    """The principal angles (degrees, ascending) between two ``k``-dimensional subspaces."""
    a = np.asarray(angles_deg, dtype=float)
    fig = go.Figure(go.Bar(x=np.arange(1, len(a) + 1), y=a, marker_color="#636EFA",
                           hovertemplate="angle %{x}: %{y:.2f}°<extra></extra>", name="principal angle"))
    fig.update_layout(title={"text": title}, xaxis_title="principal angle (ascending)", yaxis_title="degrees",
                      yaxis={"range": [0, 90]}, height=height, margin={"l": 60, "r": 20, "t": 60, "b": 50})
    return fixed_margins(fig)
