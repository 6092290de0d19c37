"""Shared look of every figure: fixed colours per feature family and per line role,
human names for metrics, exponent ticks on log axes, and legend entries for marker lines
(so labels never overlap: a vertical line's name goes to the legend, not onto the plot)."""
from __future__ import annotations

import hashlib

import plotly.graph_objects as go

__all__ = ["FAMILY_COLORS", "CLIFF_COLORS", "MARKER_STYLES", "family_color", "human_name", "log_axis",
           "marker_line", "block_label"]

CLIFF_COLORS = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880"]
"""Colours of the numbered cliffs (cliff 1 is the first colour); the constant mode is grey."""
CONSTANT_COLOR = "#9E9E9E"

FAMILY_COLORS = {
    "a": "#1f77b4", "b": "#ff7f0e", "sum": "#2ca02c", "diff": "#d62728", "random": "#7f7f7f",
    "axis_sum": "#9467bd", "axis_diff": "#8c564b", "features": "#17becf",
    "eNTK": "#1f2d3d", "PCA": "#e377c2",
}
"""One colour per feature family (and per baseline), whatever else is shown beside it."""

_SPARE = ["#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94"]

MARKER_STYLES = {
    "epoch": {"color": "#EF553B", "width": 2, "dash": "solid"},
    "onset": {"color": "#555555", "width": 1.5, "dash": "dash"},
    "peak": {"color": "#00CC96", "width": 1.5, "dash": "dot"},
    "reference": {"color": "#888888", "width": 1, "dash": "dot"},
}

_HUMAN = {
    "train_acc": "train accuracy", "test_acc": "test accuracy", "train_loss": "train loss",
    "test_loss": "test loss",
}


def family_color(name: str) -> str:
    """The fixed colour of a feature family; unknown names get a colour from their hash
    (stable across runs and selections, so deselecting one family never recolours another)."""
    base = name.split(" ")[0]
    if name in FAMILY_COLORS:
        return FAMILY_COLORS[name]
    if base in FAMILY_COLORS:
        return FAMILY_COLORS[base]
    h = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    return _SPARE[h % len(_SPARE)]


def human_name(key: str) -> str:
    """``"train_acc"`` -> ``"train accuracy"``; other keys with underscores as spaces."""
    return _HUMAN.get(key, key.replace("_", " "))


def block_label(label: str) -> str:
    """The label shown for a spectral block: ``"constant"`` -> ``"constant mode"``; the
    numbered cliffs keep their names (``"cliff 1"`` = the first block after the constant mode)."""
    return "constant mode" if label == "constant" else label


def log_axis(fig: go.Figure, axis: str = "y", **kw) -> None:
    """Make ``axis`` logarithmic with one labelled tick per decade written as a power of ten
    (``10⁻³``), never bare 1-2-5 mantissas."""
    upd = {"type": "log", "dtick": 1, "exponentformat": "power", "showexponent": "all", **kw}
    (fig.update_yaxes if axis == "y" else fig.update_xaxes)(**upd)


def marker_line(fig: go.Figure, x: float, name: str, role: str = "reference", *, row: int | None = None,
                col: int | None = None, showlegend: bool = True) -> None:
    """A vertical line at ``x`` named in the legend (an empty trace with the same style),
    instead of a text annotation that could overlap its neighbours."""
    style = MARKER_STYLES.get(role, MARKER_STYLES["reference"])
    kw = {} if row is None else {"row": row, "col": col}
    fig.add_vline(x=x, line=style, **kw)
    if showlegend:
        tr = go.Scatter(x=[None], y=[None], mode="lines", line=style, name=name, hoverinfo="skip")
        fig.add_trace(tr, **kw)
