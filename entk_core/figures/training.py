"""Curves over training: accuracy (in %, human legend names) and the % overlap of spectral
windows with feature families (with baselines), marker lines named in the legend."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .style import family_color, human_name, marker_line

__all__ = ["accuracy_figure", "overlap_figure"]


def _markers(fig, current, markers, **kw) -> None:
    if current is not None:
        marker_line(fig, current, f"epoch {current:g}", "epoch", **kw)
    for label, x in (markers or {}).items():
        if x is not None:
            marker_line(fig, x, label, "onset" if label.startswith("onset") else "peak", **kw)


def accuracy_figure(
    epochs: Sequence[int],
    series: dict[str, Sequence[float | None]],
    *,
    title: str = "Train and test accuracy",
    current: int | None = None,
    markers: dict[str, float | None] | None = None,
    percent: bool = True,
    height: int = 360,
) -> go.Figure:
    """Curves over epochs; ``series`` keys are metric names (``train_acc`` -> *train accuracy*),
    values fractions shown in % when ``percent``. ``current`` and ``markers``
    (``{"onset 75.5": 75.5}``) are vertical lines named in the legend."""
    fig = go.Figure()
    for name, ys in series.items():
        y = np.array([np.nan if v is None else float(v) for v in ys])
        fig.add_trace(go.Scatter(x=list(epochs), y=100 * y if percent else y, mode="lines", name=human_name(name),
                                 hovertemplate="epoch %{x}<br>%{y:.1f}" + ("%" if percent else "") + "<extra></extra>"))
    _markers(fig, current, markers)
    fig.update_layout(title={"text": title}, xaxis_title="epoch", yaxis_title="accuracy (%)" if percent else "value",
                      height=height, margin={"l": 60, "r": 20, "t": 60, "b": 50},
                      legend={"orientation": "h", "y": -0.25})
    if percent:
        fig.update_yaxes(range=[0, 101])
    return fig


def overlap_figure(
    epochs: Sequence[int],
    curves: dict[str, np.ndarray],
    *,
    derivatives: dict[str, np.ndarray] | None = None,
    title: str,
    current: int | None = None,
    markers: dict[str, float | None] | None = None,
    accuracy: dict[str, Sequence[float | None]] | None = None,
    accuracy_epochs: Sequence[int] | None = None,
    dashed: Sequence[str] = (),
    height: int = 540,
) -> go.Figure:
    """% overlap curves (top) and, when ``derivatives`` are given, their first derivative in
    points per logging step (bottom).

    Args:
      curves: ``{name: (E,) % overlap}``; the colour is the family's (:func:`family_color` of the
        name's first word), names in ``dashed`` are drawn dashed (baselines: PCA, random).
      accuracy: optional ``{metric: values}`` over ``accuracy_epochs``, drawn in % on the top row.
    """
    rows = 2 if derivatives else 1
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        row_heights=[0.62, 0.38] if rows == 2 else [1.0],
                        subplot_titles=("% overlap with the feature subspace",
                                        "first derivative (points per logging step)")[:rows])
    x = list(epochs)
    for name, y in curves.items():
        color = family_color(name)
        dash = "dash" if name in dashed else "solid"
        fig.add_trace(go.Scatter(x=x, y=np.asarray(y, dtype=float), mode="lines+markers", name=name, legendgroup=name,
                                 line={"color": color, "dash": dash}, marker={"size": 4},
                                 hovertemplate="epoch %{x}<br>%{y:.1f}%<extra>" + name + "</extra>"), row=1, col=1)
        if derivatives and name in derivatives:
            fig.add_trace(go.Scatter(x=x, y=np.asarray(derivatives[name], dtype=float), mode="lines",
                                     name=f"d {name}", legendgroup=name, showlegend=False,
                                     line={"color": color, "dash": "dot"},
                                     hovertemplate="epoch %{x}<br>%{y:+.2f} pts/step<extra>d " + name + "</extra>"),
                          row=2, col=1)
    for metric, ys in (accuracy or {}).items():
        y = np.array([np.nan if v is None else 100 * float(v) for v in ys])
        fig.add_trace(go.Scatter(x=list(accuracy_epochs or x), y=y, mode="lines", name=human_name(metric) + " (%)",
                                 line={"width": 1, "color": "#EF553B" if metric == "test_acc" else "#00CC96"}),
                      row=1, col=1)
    for r in range(1, rows + 1):
        _markers(fig, current, markers, row=r, col=1, showlegend=(r == 1)) if rows > 1 else _markers(fig, current, markers)
    fig.update_layout(title={"text": title}, height=height, margin={"l": 60, "r": 20, "t": 80, "b": 50},
                      hovermode="x unified", legend={"orientation": "h", "y": -0.14})
    fig.update_yaxes(title_text="% overlap", range=[0, 101], row=1, col=1)
    fig.update_xaxes(title_text="epoch", row=rows, col=1)
    return fig
