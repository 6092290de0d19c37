"""Curves over training: accuracy (in %, human legend names) and the % overlap of spectral
windows with feature families (with baselines), marker lines named in the legend."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from .style import family_color, fixed_margins, human_name, marker_line

__all__ = ["accuracy_figure", "overlap_figure"]


def _markers(fig, current, markers, shapes: list, **kw) -> None:
    if current is not None:
        marker_line(fig, current, f"epoch {current:g}", "epoch", shapes=shapes, **kw)
    for label, x in (markers or {}).items():
        if x is not None:
            marker_line(fig, x, label, "onset" if label.startswith("onset") else "peak", shapes=shapes, **kw)


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
    shapes: list = []
    _markers(fig, current, markers, shapes)
    fig.update_layout(shapes=shapes, title={"text": title}, xaxis_title="epoch", yaxis_title="accuracy (%)" if percent else "value",
                      height=height, margin={"l": 60, "r": 20, "t": 60, "b": 50},
                      legend={"orientation": "h", "y": -0.25})
    if percent:
        fig.update_yaxes(range=[0, 101])
    return fixed_margins(fig)


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
    # two rows sharing the epoch axis, laid out by hand (make_subplots and add_trace(row=...)
    # cost more than the rest of the figure; this is redrawn on every epoch step)
    top_dom = [0.43, 1.0] if rows == 2 else [0.0, 1.0]
    x = list(epochs)
    traces = []
    for name, y in curves.items():
        color = family_color(name)
        dash = "dash" if name in dashed else "solid"
        traces.append(go.Scatter(x=x, y=np.asarray(y, dtype=float), mode="lines", name=name, legendgroup=name,
                                 line={"color": color, "dash": dash}, xaxis="x", yaxis="y",
                                 hovertemplate="epoch %{x}<br>%{y:.1f}%<extra>" + name + "</extra>"))
        if derivatives and name in derivatives:
            traces.append(go.Scatter(x=x, y=np.asarray(derivatives[name], dtype=float), mode="lines",
                                     name=f"d {name}", legendgroup=name, showlegend=False,
                                     line={"color": color, "dash": "dot"}, xaxis="x2", yaxis="y2",
                                     hovertemplate="epoch %{x}<br>%{y:+.2f} pts/step<extra>d " + name + "</extra>"))
    for metric, ys in (accuracy or {}).items():
        y = np.array([np.nan if v is None else 100 * float(v) for v in ys])
        traces.append(go.Scatter(x=list(accuracy_epochs or x), y=y, mode="lines", name=human_name(metric) + " (%)",
                                 line={"width": 1.5 if metric == "test_acc" else 1,
                                       "color": "#444444" if metric == "test_acc" else "#AAAAAA"},
                                 xaxis="x", yaxis="y"))
    titles = [("% overlap with the feature subspace" + (" (and accuracy)" if accuracy else ""), top_dom[1])]
    layout = {
        "title": {"text": title}, "height": height, "margin": {"l": 60, "r": 20, "t": 80, "b": 50},
        "hovermode": "x unified", "legend": {"orientation": "h", "y": -0.14},
        "yaxis": {"domain": top_dom, "anchor": "x", "range": [0, 101],
                  "title": {"text": "% overlap" + (" · accuracy" if accuracy else "")}},
        "xaxis": {"anchor": "y", **({"matches": "x2", "showticklabels": False} if rows == 2 else
                                    {"title": {"text": "epoch"}})},
    }
    if rows == 2:
        layout["xaxis2"] = {"anchor": "y2", "title": {"text": "epoch"}}
        layout["yaxis2"] = {"domain": [0.0, 0.35], "anchor": "x2"}
        titles.append(("first derivative (points per logging step)", 0.35))
    layout["annotations"] = [{"text": t, "x": 0.5, "y": y, "xref": "paper", "yref": "paper", "xanchor": "center",
                              "yanchor": "bottom", "showarrow": False, "font": {"size": 16}} for t, y in titles]
    fig = go.Figure(data=traces, layout=layout)
    shapes: list = []
    for r in range(1, rows + 1):
        refs = ("x", "y domain") if r == 1 else ("x2", "y2 domain")
        _markers(fig, current, markers, shapes, refs=refs, showlegend=(r == 1))
    fig.update_layout(shapes=shapes)
    return fixed_margins(fig)
