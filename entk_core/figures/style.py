"""Shared look of every figure: fixed colours per feature family and per line role,
human names for metrics, exponent ticks on log axes, and legend entries for marker lines
(so labels never overlap: a vertical line's name goes to the legend, not onto the plot)."""
from __future__ import annotations

import hashlib

import numpy as np
import plotly.graph_objects as go

__all__ = ["FAMILY_COLORS", "CLIFF_COLORS", "MARKER_STYLES", "family_color", "cliff_colors", "human_name", "log_axis",
           "marker_line", "block_label", "fixed_margins", "vline", "subplot_refs"]

CLIFF_COLORS = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880"]
"""Colours of the numbered cliffs (cliff 1 is the first colour); the constant mode is grey."""
CONSTANT_COLOR = "#9E9E9E"


def cliff_colors(labels) -> list[str]:
    """The colour of each block of a spectrum, in order: grey for ``"constant"``, else the
    numbered cliffs' colours in turn (:data:`CLIFF_COLORS`, cycling)."""
    out, n = [], 0
    for lab in labels:
        if lab == "constant":
            out.append(CONSTANT_COLOR)
        else:
            out.append(CLIFF_COLORS[n % len(CLIFF_COLORS)])
            n += 1
    return out

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


_SUP = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _pow10(v: float) -> str:
    """``2·10⁻³`` (``10⁻³`` for a power of ten)."""
    e = int(np.floor(np.log10(v) + 1e-9))
    m = int(round(v / 10.0 ** e))
    return ("" if m == 1 else f"{m}·") + "10" + str(e).translate(_SUP)


def log_ticks(values) -> tuple[list[float], list[str]] | None:
    """Tick positions and labels for a log axis over ``values`` (the positive finite ones)
    spanning under two decades, where one tick per decade would leave one tick or none:
    1-2-5 steps (1-9 under a third of a decade), each written in full (``2·10⁻³``).
    ``None`` when the values span two decades or more (one tick per decade serves)."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return None
    lo, hi = float(v.min()), float(v.max())
    if np.log10(hi) - np.log10(lo) >= 2:
        return None
    for mantissas in ((1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10.0 ** e for e in range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)
                 for m in mantissas if lo * 0.999 <= m * 10.0 ** e <= hi * 1.001]
        if len(ticks) >= 3:
            break
    if len(ticks) < 2:  # a very narrow range: its ends
        ticks = [lo, hi] if hi > lo else [lo]
        return ticks, [f"{t:.3g}" for t in ticks]
    return ticks, [_pow10(t) for t in ticks]


def log_axis(fig: go.Figure, axis: str = "y", values=None, **kw) -> None:
    """Make ``axis`` logarithmic with one labelled tick per decade written as a power of ten
    (``10⁻³``), never bare 1-2-5 mantissas. With the plotted ``values`` given, an axis
    spanning under two decades (one tick or none per decade) gets 1-2-5 ticks written in
    full (``2·10⁻³``) instead (:func:`log_ticks`)."""
    upd = {"type": "log", "dtick": 1, "exponentformat": "power", "showexponent": "all", **kw}
    ticks = log_ticks(values) if values is not None else None
    if ticks is not None:
        upd.pop("dtick")
        upd.update({"tickmode": "array", "tickvals": ticks[0], "ticktext": ticks[1]})
    (fig.update_yaxes if axis == "y" else fig.update_xaxes)(**upd)


def vline(x: float, line: dict, *, xref: str = "x", yref: str = "y domain") -> dict:
    """A vertical line at ``x`` over the whole height of its subplot, as a layout shape dict
    (collect them and set ``layout.shapes`` once: Plotly's ``add_vline`` re-validates every
    shape already there on each call)."""
    return {"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "xref": xref, "yref": yref, "line": line}


def subplot_refs(fig: go.Figure, row: int | None, col: int | None) -> tuple[str, str]:
    """``(xref, yref)`` of the subplot at ``row, col`` (``("x2", "y2 domain")``), or of the
    only one (``("x", "y domain")``) when ``row`` is None."""
    if row is None:
        return "x", "y domain"
    sp = fig.get_subplot(row, col)
    xa, ya = sp.xaxis.plotly_name.replace("axis", ""), sp.yaxis.plotly_name.replace("axis", "")
    return xa, f"{ya} domain"


def marker_line(fig: go.Figure, x: float, name: str, role: str = "reference", *, row: int | None = None,
                col: int | None = None, showlegend: bool = True, shapes: list | None = None,
                refs: tuple[str, str] | None = None) -> dict:
    """A vertical line at ``x`` named in the legend (an empty trace with the same style),
    instead of a text annotation that could overlap its neighbours. Returns the line's shape;
    with ``shapes`` given it is appended there (the caller sets ``layout.shapes`` once), else
    it is added to ``fig``. The subplot is ``row, col`` of a ``make_subplots`` figure, or
    ``refs`` (``("x2", "y2 domain")``), or the only one."""
    style = MARKER_STYLES.get(role, MARKER_STYLES["reference"])
    xref, yref = refs if refs is not None else subplot_refs(fig, row, col)
    shape = vline(x, style, xref=xref, yref=yref)
    if shapes is None:
        fig.add_shape(shape)
    else:
        shapes.append(shape)
    if showlegend:
        tr = go.Scatter(x=[None], y=[None], mode="lines", line=style, name=name, hoverinfo="skip",
                        xaxis=xref, yaxis=yref.split(" ")[0])
        fig.add_trace(tr)
    return shape


_CHAR_PX = 7.0  # width of one character of Plotly's default 12 px font, rounded up
_LEGEND_ROW_PX = 22
_SCALED = ("heatmap", "contour", "histogram2d", "histogram2dcontour", "surface")


def fixed_margins(fig: go.Figure, *, width_px: int = 560) -> go.Figure:
    """Size the margins of ``fig`` from what it holds and stop Plotly from growing them itself
    (``layout.margin.autoexpand = False``). Returns ``fig``. Every figure builder here ends
    with it.

    With automatic margins, every draw in the browser first draws the legend, colour bars
    and tick labels, measures them, and then draws the whole figure again with wider margins.
    Streamlit draws a chart anew whenever its figure changes, so on the dashboard that was
    the largest part of a warm epoch step (``benchmarks/bench_dashboard.py``). Instead:

    * a horizontal legend goes to the bottom of the figure (``yref="container"``), under the
      x-axis title, and the bottom margin grows by its rows, estimated from the entries'
      lengths wrapped at ``width_px`` (an over-estimate leaves white space, never a clipped
      legend);
    * a vertical legend gets a right margin as wide as its longest entry;
    * a colour bar gets a right margin of 110 px;
    * category tick labels (``ticktext``) get a left margin as wide as the longest label.

    The figure's own margins are kept as minimums (Plotly's defaults where it set none)."""
    lay = fig.layout.to_plotly_json()
    m = lay.get("margin", {})
    left, right, top, bottom = m.get("l", 80), m.get("r", 80), m.get("t", 100), m.get("b", 80)
    traces = [tr.to_plotly_json() for tr in fig.data]
    names = [str(t["name"]) for t in traces
             if t.get("name") and t.get("showlegend") is not False
             and (t.get("type") not in _SCALED or t.get("showlegend") is True)]
    shown = lay.get("showlegend")
    has_legend = bool(names) and (shown is True or (shown is None and len(names) >= 2))
    upd: dict = {}
    if has_legend and lay.get("legend", {}).get("orientation") == "h":
        rows, used = 1, 0.0
        for n in names:
            w = 40 + _CHAR_PX * len(n)
            if used and used + w > width_px:
                rows, used = rows + 1, 0.0
            used += w
        upd["legend"] = {"yref": "container", "y": 0.0, "yanchor": "bottom", "x": 0.0, "xanchor": "left"}
        bottom = max(bottom, 50) + _LEGEND_ROW_PX * rows + 8
    elif has_legend:
        right = max(right, int(50 + _CHAR_PX * max(len(n) for n in names)))
    if any(t.get("type") in _SCALED and t.get("showscale") is not False for t in traces):
        right = max(right, 110)
    for k, ax in lay.items():
        if k.startswith("yaxis") and ax.get("ticktext"):
            titled = bool(ax.get("title", {}).get("text"))
            left = max(left, int(20 + _CHAR_PX * max(len(str(t)) for t in ax["ticktext"]) + (25 if titled else 0)))
    upd["margin"] = {"l": left, "r": right, "t": top, "b": bottom, "autoexpand": False}
    fig.update_layout(upd)
    return fig
