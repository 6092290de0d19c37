"""One eigenvector, drawn in the form its family declares
(:meth:`entk_core.families.base.ModelFamily.eigenvector_view`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from .style import fixed_margins

__all__ = ["grid_image", "eigenvector_figures", "fold_per_class"]


def grid_image(vec: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A vector over the ``p²`` pairs (row ``a*p + b``) as a ``(p, p)`` image ``[a, b]`` and its
    2-D Fourier power: ``(image, power, freqs)``, ``power`` centred (``fftshift``, frequencies
    ``-⌊p/2⌋ .. ⌈p/2⌉-1``) and normalised to sum 1. An ``a``-mode of frequency ``k`` has its power
    at ``(±k, 0)``, a ``sum``-mode at ``±(k, k)``, a ``diff``-mode at ``±(k, -k)``."""
    v = np.asarray(vec, dtype=np.float64).reshape(-1)
    if v.size != p * p:
        raise ValueError(f"vector has {v.size} entries, expected p² = {p * p}")
    img = v.reshape(p, p)
    P = np.abs(np.fft.fftshift(np.fft.fft2(img))) ** 2
    tot = P.sum()
    freqs = np.fft.fftshift(np.fft.fftfreq(p, d=1.0 / p)).round().astype(int)
    return img, (P / tot if tot > 0 else P), freqs


def fold_per_class(vec: np.ndarray, n_classes: int) -> np.ndarray:
    """Share of a class-major flattened vector ``(C·N,)`` on each class: ``(C,)``, sums to 1."""
    v = np.asarray(vec, dtype=np.float64).reshape(n_classes, -1)
    e = (v**2).sum(axis=1)
    return e / max(e.sum(), 1e-300)


def eigenvector_figures(view: str, vec: np.ndarray, *, title: str, p: int | None = None,
                        feature_values: np.ndarray | None = None, value_name: str = "share",
                        labels: Sequence[str] | None = None, height: int = 400) -> list[go.Figure]:
    """Figures for one eigenvector.

    Args:
      view: ``"grid"`` (``vec`` over the ``p²`` pairs: one figure, the image beside its 2-D
        Fourier power), ``"features"``
        (``feature_values`` ``(n,)``, one value per feature in importance order: a bar chart),
        or ``"vector"`` (a line over the kernel rows).
      value_name: what ``feature_values`` are (``"share"`` of the squared norm, ``"|cos|"``...).
      labels: row labels for ``"vector"`` hover text.
    """
    if view == "grid":
        if p is None:
            raise ValueError("the grid view needs p")
        img, power, freqs = grid_image(vec, p)
        # one figure, two panels (laid out by hand: make_subplots costs more than the rest):
        # the browser draws one chart instead of two on every step
        left_dom, right_dom = [0.0, 0.40], [0.58, 0.98]
        traces = [
            go.Heatmap(z=img, colorscale="RdBu", zmid=0, name="value", xaxis="x", yaxis="y",
                       colorbar={"title": {"text": "value"}, "x": 0.43, "thickness": 12, "len": 0.9},
                       hovertemplate="a=%{y}, b=%{x}<br>%{z:.4f}<extra></extra>"),
            go.Heatmap(z=power, x=freqs, y=freqs, colorscale="Viridis", zmin=0, name="power", xaxis="x2", yaxis="y2",
                       colorbar={"title": {"text": "power"}, "x": 1.01, "thickness": 12, "len": 0.9},
                       hovertemplate="k_a=%{y}, k_b=%{x}<br>%{z:.3f}<extra></extra>"),
        ]
        panel = {"text": "", "y": 1.0, "xref": "paper", "yref": "paper", "xanchor": "center", "yanchor": "bottom",
                 "showarrow": False, "font": {"size": 14}}
        fig = go.Figure(data=traces, layout={
            "title": {"text": title}, "height": height, "margin": {"l": 50, "r": 20, "t": 80, "b": 50},
            "xaxis": {"domain": left_dom, "anchor": "y", "title": {"text": "b"}, "constrain": "domain"},
            "yaxis": {"anchor": "x", "title": {"text": "a"}, "autorange": "reversed", "scaleanchor": "x",
                      "constrain": "domain"},
            "xaxis2": {"domain": right_dom, "anchor": "y2", "title": {"text": "k_b"}, "constrain": "domain"},
            "yaxis2": {"anchor": "x2", "title": {"text": "k_a"}, "autorange": "reversed", "scaleanchor": "x2",
                       "constrain": "domain"},
            "annotations": [{**panel, "text": "the vector over (a, b)", "x": sum(left_dom) / 2},
                            {**panel, "text": "2-D Fourier power (share of the total)", "x": sum(right_dom) / 2}],
        })
        return [fixed_margins(fig)]
    if view == "features":
        fv = np.asarray(feature_values if feature_values is not None else vec, dtype=float)
        fig = go.Figure(go.Bar(x=np.arange(len(fv)), y=fv, marker_color="#17becf",
                               hovertemplate="feature %{x}<br>" + value_name + " %{y:.3f}<extra></extra>"))
        fig.update_layout(title={"text": title}, xaxis_title="feature (importance order)", yaxis_title=value_name,
                          height=height, margin={"l": 60, "r": 20, "t": 60, "b": 50})
        return [fixed_margins(fig)]
    v = np.asarray(vec, dtype=float).reshape(-1)
    fig = go.Figure(go.Scatter(x=np.arange(v.size), y=v, mode="lines", line={"color": "#1f2d3d", "width": 1},
                               text=list(labels) if labels is not None else None,
                               hovertemplate="row %{x}<br>%{y:.4f}<extra></extra>"))
    fig.update_layout(title={"text": title}, xaxis_title="kernel row (input)", yaxis_title="value", height=height,
                      margin={"l": 60, "r": 20, "t": 60, "b": 50})
    return [fixed_margins(fig)]
