"""Plotly figures (no Streamlit): the last step of run → … → figure.

Each builder takes plain arrays/results and returns a ``plotly.graph_objects.Figure``
with a title, so the same figures serve the dashboard, notebooks and tests.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from ..engine.spectra import Cliff

__all__ = ["spectrum_figure", "accuracy_figure", "CLIFF_COLORS"]

CLIFF_COLORS = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880"]


def spectrum_figure(
    eigenvalues: np.ndarray,
    cliffs: Sequence[Cliff] = (),
    *,
    title: str = "eNTK spectrum",
    log: bool = True,
    reference_lines: dict[str, float] | None = None,
    extra: dict[str, np.ndarray] | None = None,
    selected: int | None = None,
) -> go.Figure:
    """Eigenvalue vs index, cliffs shaded and labelled with their size.

    Args:
      eigenvalues: ``(k,)`` descending.
      cliffs: detected cliffs; each is shaded over ``[start - 0.5, end + 0.5]``.
      reference_lines: vertical dotted lines ``{label: index}`` (e.g. the number of
        features).
      extra: further spectra ``{label: (k,) array}`` drawn as faint lines (e.g. other
        epochs) for comparison.
      selected: an index to highlight (the selected eigenvector).
    """
    vals = np.asarray(eigenvalues, dtype=float)
    idx = np.arange(len(vals))
    fig = go.Figure()
    for label, ev in (extra or {}).items():
        ev = np.asarray(ev, dtype=float)
        fig.add_trace(go.Scatter(x=np.arange(len(ev)), y=np.where(ev > 0, ev, np.nan), mode="lines",
                                 name=label, line={"width": 1.5, "dash": "dot"}, opacity=0.7))
    fig.add_trace(go.Scatter(
        x=idx, y=np.where(vals > 0, vals, np.nan) if log else vals, mode="lines+markers", name="eigenvalue",
        marker={"size": 4}, line={"width": 1.5, "color": "#1f2d3d"},
        hovertemplate="index %{x}<br>λ = %{y:.4g}<extra></extra>",
    ))
    for i, c in enumerate(cliffs):
        color = CLIFF_COLORS[i % len(CLIFF_COLORS)]
        fig.add_vrect(x0=c.start - 0.5, x1=c.end + 0.5, fillcolor=color, opacity=0.15, line_width=0)
        # labels above the plot, staggered so narrow neighbouring cliffs stay readable
        fig.add_annotation(x=(c.start + c.end) / 2, y=1.0 + 0.07 * (i % 2), xref="x", yref="paper",
                           text=f"cliff {i + 1}: {c.size}", showarrow=False, yanchor="bottom",
                           font={"color": color, "size": 12})
        fig.add_vline(x=c.end + 0.5, line={"color": color, "width": 1, "dash": "dash"})
    for label, x in (reference_lines or {}).items():
        fig.add_vline(x=x, line={"color": "#888", "width": 1, "dash": "dot"},
                      annotation_text=label, annotation_position="bottom right")
    if selected is not None and 0 <= selected < len(vals):
        fig.add_trace(go.Scatter(x=[selected], y=[vals[selected]], mode="markers", name=f"selected #{selected}",
                                 marker={"size": 12, "color": "#EF553B", "symbol": "circle-open", "line": {"width": 2}}))
    if log:
        fig.update_yaxes(dtick="D2", exponentformat="power")  # label 1, 2, 5 per decade only
    fig.update_layout(
        title={"text": title}, xaxis_title="eigenvalue index", yaxis_title="eigenvalue",
        yaxis_type="log" if log else "linear", height=480, margin={"l": 60, "r": 20, "t": 90, "b": 50},
        legend={"orientation": "h", "y": -0.18}, hovermode="closest",
    )
    return fig


def accuracy_figure(
    epochs: Sequence[int],
    series: dict[str, Sequence[float | None]],
    *,
    title: str = "Train and test accuracy",
    current: int | None = None,
    markers: dict[str, float] | None = None,
    yaxis_title: str = "accuracy",
) -> go.Figure:
    """Curves over epochs with the current epoch and named epochs marked."""
    fig = go.Figure()
    for name, ys in series.items():
        y = [np.nan if v is None else v for v in ys]
        fig.add_trace(go.Scatter(x=list(epochs), y=y, mode="lines", name=name))
    if current is not None:
        fig.add_vline(x=current, line={"color": "#EF553B", "width": 2}, annotation_text=f"epoch {current}",
                      annotation_position="top right")
    for label, x in (markers or {}).items():
        fig.add_vline(x=x, line={"color": "#555", "width": 1, "dash": "dash"}, annotation_text=label,
                      annotation_position="bottom right")
    fig.update_layout(title={"text": title}, xaxis_title="epoch", yaxis_title=yaxis_title, height=360,
                      margin={"l": 60, "r": 20, "t": 60, "b": 50}, legend={"orientation": "h", "y": -0.25})
    return fig
