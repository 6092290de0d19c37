"""Figures of the language-model experiment (no Streamlit): the K̃ spectrum, AUROC per
layer, a direction's score distribution by tag, and the contexts of a direction as HTML
(feature-page style: the text before the next word, the word highlighted with its tag)."""
from __future__ import annotations

import html
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go

from .style import fixed_margins, log_axis

__all__ = ["lm_spectrum_figure", "layer_auroc_figure", "direction_scores_figure", "contexts_html", "TAG_COLORS",
           "top_contexts"]

TAG_COLORS = {"PUNCT": "#7f7f7f", "PRON": "#1f77b4", "PROPN": "#9467bd", "DET": "#2ca02c", "ADV": "#ff7f0e",
              "CCONJ": "#8c564b", "NOUN": "#d62728", "VERB": "#17becf", "ADJ": "#bcbd22", "ADP": "#e377c2"}


def lm_spectrum_figure(eigenvalues: Sequence[float], residuals: Sequence[float] | None = None, *,
                       title: str = "K̃ spectrum", selected: int | None = None, log: bool = True) -> go.Figure:
    """Eigenvalue vs index (log y); hover shows the Ritz residual; ``selected`` is ringed."""
    ev = np.asarray(eigenvalues, float)
    idx = np.arange(len(ev))
    custom = np.asarray(residuals, float) if residuals is not None else np.full(len(ev), np.nan)
    fig = go.Figure(go.Scatter(x=idx, y=ev, mode="lines+markers", name="eigenvalue", customdata=custom,
                               hovertemplate="index %{x}<br>λ = %{y:.4g}<br>Ritz residual %{customdata:.2g}<extra></extra>"))
    if selected is not None and 0 <= selected < len(ev):
        fig.add_trace(go.Scatter(x=[selected], y=[ev[selected]], mode="markers", name=f"direction {selected}",
                                 marker={"size": 14, "symbol": "circle-open", "line": {"width": 2}}))
    fig.update_layout(title={"text": title}, xaxis_title="index", yaxis_title="eigenvalue", height=360,
                      margin={"l": 60, "r": 20, "t": 60, "b": 50}, showlegend=False)
    if log and (ev > 0).all():
        log_axis(fig, "y", values=ev)
    return fixed_margins(fig)


def layer_auroc_figure(sweep: list[dict[str, Any]], *, title: str = "Macro AUROC per layer") -> go.Figure:
    """Macro test AUROC per layer, eNTK (solid) vs PCA (dashed), POS and morphology.

    ``sweep``: rows ``{"layer", "macro": {"pos"|"morph": {"entk"|"pca": {"auroc"}}}}`` (the
    report's ``sweep`` list)."""
    layers = [s["layer"] for s in sweep]
    fig = go.Figure()
    for kind, color in (("pos", "#1f77b4"), ("morph", "#d62728")):
        for method, dash in (("entk", "solid"), ("pca", "dash")):
            y = [s["macro"][kind][method]["auroc"] for s in sweep]
            fig.add_trace(go.Scatter(x=layers, y=y, mode="lines+markers", name=f"{kind.upper() if kind == 'pos' else 'morph'} "
                                     f"{'eNTK' if method == 'entk' else 'PCA'}", line={"color": color, "dash": dash},
                                     hovertemplate="layer %{x}<br>AUROC %{y:.3f}<extra>%{fullData.name}</extra>"))
    fig.add_hline(y=0.5, line={"dash": "dot", "color": "#999"}, annotation_text="random")
    fig.update_layout(title={"text": title}, xaxis_title="layer", yaxis_title="macro AUROC (test)", height=380,
                      margin={"l": 60, "r": 20, "t": 60, "b": 50})
    fig.update_xaxes(dtick=1)
    return fixed_margins(fig)


def direction_scores_figure(scores: np.ndarray, upos: Sequence[str], *, title: str) -> go.Figure:
    """A strip of one direction's per-example scores, one row per UPOS tag."""
    s = np.asarray(scores, float)
    u = np.asarray(list(upos))
    fig = go.Figure()
    for tag in sorted(set(u.tolist())):
        m = u == tag
        fig.add_trace(go.Box(x=s[m], name=tag, boxpoints="all", jitter=0.4, pointpos=0, orientation="h",
                             marker={"color": TAG_COLORS.get(tag, "#444"), "size": 4}, line={"width": 1},
                             hovertemplate=f"{tag}<br>score %{{x:.3g}}<extra></extra>"))
    fig.update_layout(title={"text": title}, xaxis_title="signed score σ·u", height=max(260, 34 * len(set(u.tolist())) + 110),
                      margin={"l": 70, "r": 20, "t": 60, "b": 50}, showlegend=False)
    return fixed_margins(fig)


def top_contexts(scores: np.ndarray, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``n`` most positive (descending) and most negative (ascending) examples."""
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    return order[:n], order[::-1][:n]


def contexts_html(labels: Sequence[dict[str, Any]], indices: Sequence[int], scores: np.ndarray, *,
                  chars: int = 140) -> str:
    """One line per example: ``score | …context [next word] TAG``, the tail of the context
    (``chars`` characters), the story's next word highlighted in its tag's colour and, when
    the model's prediction differs, the predicted word. All text is HTML-escaped."""
    rows = []
    for i in indices:
        lab = labels[int(i)]
        ctx = lab.get("context") or ""
        ctx = ctx.replace("\n", " ⏎ ")
        if len(ctx) > chars:
            ctx = "…" + ctx[-chars:]
        tag = lab.get("upos", "")
        color = TAG_COLORS.get(tag, "#444")
        word = lab.get("predicted") or lab.get("word") or ""
        extra = ""
        if lab.get("predicted") and lab.get("word") and lab["predicted"] != lab["word"]:
            extra = f' <span style="color:#888">(story: {html.escape(lab["word"])})</span>'
        feats = "|".join(f"{k}={v}" for k, v in sorted((lab.get("morph") or {}).items()))
        # a flex row: the score, the context clipped on its left (so its end, next to the
        # word, always shows), then the highlighted word and its tag, never clipped
        rows.append(
            f'<div style="display:flex;align-items:baseline;font-family:monospace;font-size:0.85rem;line-height:1.5;'
            f'white-space:nowrap" title="{html.escape(feats)}">'
            f'<span style="flex:none;color:#666;width:5.5em;text-align:right;margin-right:0.6em">'
            f'{float(scores[int(i)]):+.3g}</span>'
            f'<span style="flex:1 1 auto;min-width:0;overflow:hidden;display:flex;justify-content:flex-end">'
            f'<span>{html.escape(ctx)}</span></span>'
            f'<span style="flex:none;margin-left:0.3em"><mark style="background:{color}33;border:1px solid {color};'
            f'border-radius:3px;padding:0 2px"><b>{html.escape(word)}</b></mark> '
            f'<span style="color:{color};font-weight:600">{html.escape(tag)}</span>{extra}</span></div>')
    return "\n".join(rows)
