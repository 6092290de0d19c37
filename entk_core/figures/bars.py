"""Bar charts of one checkpoint: TMS feature norms, the Transformer's embedding Fourier power."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from .style import fixed_margins

__all__ = ["feature_norms_figure", "key_frequency_figure"]


def feature_norms_figure(norms: np.ndarray, threshold: float, *, height: int = 300) -> go.Figure:
    """``‖W_i‖²`` per feature (importance order); represented features (``≥ threshold``) in green."""
    norms = np.asarray(norms, dtype=float)
    fig = go.Figure(go.Bar(x=np.arange(norms.size), y=norms, name="‖W_i‖²",
                           marker_color=["#00CC96" if v >= threshold else "#636EFA" for v in norms],
                           hovertemplate="feature %{x}<br>‖W_i‖² = %{y:.3f}<extra></extra>"))
    fig.add_hline(y=threshold, line={"dash": "dot", "color": "#888"})
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line={"dash": "dot", "color": "#888"},
                             name=f"threshold {threshold:g}"))
    fig.update_layout(title={"text": "Feature norms ‖W_i‖² (green: represented)"},
                      xaxis_title="feature (importance order)", yaxis_title="‖W_i‖²", height=height,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50}, legend={"orientation": "h", "y": -0.3})
    return fixed_margins(fig)


def key_frequency_figure(freqs: Sequence[int], power: Sequence[float], key_freqs: Sequence[int], *,
                         epoch: int, height: int = 340) -> go.Figure:
    """Fourier power of the token embedding per frequency; the run's key frequencies in red."""
    colors = ["#EF553B" if k in key_freqs else "#636EFA" for k in freqs]
    fig = go.Figure(go.Bar(x=list(freqs), y=list(power), marker_color=colors,
                           hovertemplate="k = %{x}<br>power %{y:.4g}<extra></extra>"))
    fig.update_layout(title={"text": f"Fourier power of W_E[:p] at epoch {epoch} (red: the run's key frequencies)"},
                      xaxis_title="frequency k", yaxis_title="mean |FFT|² over d_model", height=height,
                      xaxis={"dtick": 1}, margin={"l": 60, "r": 20, "t": 60, "b": 50})
    return fixed_margins(fig)


