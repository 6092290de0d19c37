"""The one heatmap builder: rows x columns of values in [0, 1] (|cos| of eigenvectors
with features, or phase-insensitive correlations of cliff directions with Fourier modes)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from .style import fixed_margins

__all__ = ["heatmap_figure"]


def heatmap_figure(
    H: np.ndarray,
    *,
    title: str,
    x_title: str = "eigenvector index",
    y_title: str = "feature (importance order)",
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    z_title: str = "|cos|",
    best: np.ndarray | None = None,
    height: int | None = None,
    max_y_ticks: int = 28,
) -> go.Figure:
    """``H`` ``(rows, cols)`` as a Viridis heatmap on ``[0, 1]``.

    Args:
      x_labels, y_labels: names of the columns / rows (hover text; the rows' names are also
        the y ticks, thinned to at most ``max_y_ticks``). Default: their indices.
      best: ``(cols,)`` row index per column to mark with a red dot (each eigenvector's best feature).
      height: default grows with the number of rows.
    """
    H = np.asarray(H, dtype=float)
    n, k = H.shape
    yl = list(y_labels) if y_labels is not None else [str(i) for i in range(n)]
    xl = list(x_labels) if x_labels is not None else [str(j) for j in range(k)]
    custom = np.array([[f"{a} · {b}" for b in xl] for a in yl])
    fig = go.Figure(go.Heatmap(
        z=H, x=np.arange(k), y=np.arange(n), colorscale="Viridis", zmin=0, zmax=1,
        colorbar={"title": {"text": z_title}, "thickness": 12}, customdata=custom,
        hovertemplate="%{customdata}<br>" + z_title + " %{z:.3f}<extra></extra>",
    ))
    if best is not None:
        fig.add_trace(go.Scatter(x=np.arange(k), y=np.asarray(best), mode="markers", name="best row",
                                 marker={"size": 3, "color": "#EF553B"}, hoverinfo="skip", showlegend=False))
    if y_labels is not None:
        step = max(1, int(np.ceil(n / max_y_ticks)))
        fig.update_yaxes(tickvals=list(range(0, n, step)), ticktext=yl[::step])
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title={"text": title}, xaxis_title=x_title, yaxis_title=y_title,
                      height=height or int(min(900, max(420, 12 * n + 140))),
                      margin={"l": 90 if y_labels is not None else 60, "r": 20, "t": 60, "b": 50})
    return fixed_margins(fig)
