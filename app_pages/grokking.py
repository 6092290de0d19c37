"""Grokking page: how the eNTK's cliffs line up with the Fourier features over training.

The sweep over every checkpoint (:func:`entk_core.workflows.sweep.sweep`) is computed once with a
progress bar and cached on disk. The epoch scrubber lives in an ``st.fragment``: moving it
reruns only the charts below it, from the cached sweep (no kernel is recomputed). The
scrubber starts at the sidebar's checkpoint and follows it when the sidebar changes;
moving the scrubber does not change the sidebar (so other pages keep their checkpoint).
"""
import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from entk_core.workflows import analysis, sweep
from entk_core.figures import CLIFF_COLORS, accuracy_figure, spectrum_figure
from pages._shared import fmt_pct, guarded, require_run

st.header("Grokking: eNTK feature alignment over training")
run, sidebar_epoch = require_run()
fam = run.family

groups = analysis.kernel_groups(run)
c1, c2 = st.columns([2, 6])
group = c1.selectbox("Layer group", groups, key="grok_group",
                     help="full = all parameters; net.0 / net.3 = one layer's eNTK (the layerwise localisation)")
c2.caption(
    "Each checkpoint's eNTK spectrum is compared with the ground-truth feature families. Windows are the cliffs "
    "detected automatically at the reference checkpoint (the last), tracked at every epoch, as in the paper's "
    "Fig. 2. Onset: the logging interval where test accuracy rises, for good, 10% of the way from chance to its "
    "plateau. Peak: where the first derivative of the primary overlap curve is largest."
)


def overlap_figure(res: sweep.SweepResult, window: int, families: list[str], current: int) -> go.Figure:
    """% overlap (top) and its first derivative per logging step (bottom) of one window."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.62, 0.38],
                        subplot_titles=("% overlap with the feature subspace", "first derivative (points per logging step)"))
    x = res.epochs
    for n, f in enumerate(families):
        k = res.family_index(f)
        color = CLIFF_COLORS[n % len(CLIFF_COLORS)]
        fig.add_trace(go.Scatter(x=x, y=res.percent[:, window, k], mode="lines+markers", name=f"{f} ({res.dims[k]}-dim)",
                                 line={"color": color}, marker={"size": 4}, legendgroup=f,
                                 hovertemplate="epoch %{x}<br>%{y:.1f}%<extra>" + f + "</extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=res.derivative[:, window, k], mode="lines", name=f"d {f}",
                                 line={"color": color, "dash": "dot"}, legendgroup=f, showlegend=False,
                                 hovertemplate="epoch %{x}<br>%{y:+.2f} pts/step<extra>d " + f + "</extra>"),
                      row=2, col=1)
    # marker lines on both rows, labelled once (current epoch below, onset and peak above)
    for row in (1, 2):
        fig.add_vline(x=current, line={"color": "#EF553B", "width": 2}, row=row, col=1,
                      **({"annotation_text": f"epoch {current}", "annotation_position": "bottom right"} if row == 2 else {}))
        if res.onset_epoch is not None:
            fig.add_vline(x=res.onset_epoch, line={"color": "#555", "width": 1.5, "dash": "dash"}, row=row, col=1,
                          **({"annotation_text": f"onset {res.onset_epoch:g}", "annotation_position": "top right"}
                             if row == 1 else {}))
        if res.peak_epoch is not None:
            fig.add_vline(x=res.peak_epoch, line={"color": "#00CC96", "width": 1.5, "dash": "dot"}, row=row, col=1,
                          **({"annotation_text": f"peak {res.peak_epoch:g}", "annotation_position": "top left"}
                             if row == 1 else {}))
    w = res.windows[window]
    fig.update_layout(title={"text": f"Overlap of {w.label} (eigenvectors {w.start}–{w.end}) with the feature families"},
                      height=520, margin={"l": 60, "r": 20, "t": 80, "b": 50}, hovermode="x unified",
                      legend={"orientation": "h", "y": -0.12})
    fig.update_yaxes(title_text="% overlap", range=[0, 100], row=1, col=1)
    fig.update_xaxes(title_text="epoch", row=2, col=1)
    return fig


@st.fragment
def scrubber(res: sweep.SweepResult, group: str) -> None:
    epochs = [int(e) for e in res.epochs]
    if st.session_state.get("grok_epoch") not in epochs:
        st.session_state["grok_epoch"] = epochs[-1]
    ep = st.select_slider("Epoch (scrub through training)", options=epochs, key="grok_epoch")
    i = res.epoch_index(ep)
    m = run.metrics
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Epoch", ep)
    m2.metric("Test accuracy", fmt_pct(None if np.isnan(res.test_acc[i]) else float(res.test_acc[i])))
    m3.metric("Grokking onset", "–" if res.onset_epoch is None else f"{res.onset_epoch:g}")
    m4.metric("Overlap-derivative peak", "–" if res.peak_epoch is None else f"{res.peak_epoch:g}",
              help=(f"{res.windows[res.primary[0]].label} vs {res.primary[1]}" if res.primary else None))

    left, right = st.columns(2)
    markers = {}
    if res.onset_epoch is not None:
        markers[f"onset {res.onset_epoch:g}"] = res.onset_epoch
    series = {k: m.get(k, []) for k in ("train_acc", "test_acc") if m.get(k)}
    left.plotly_chart(accuracy_figure(m.get("epoch", []), series, current=ep, markers=markers), key="grok_acc")
    extra = {f"epoch {epochs[0]}": res.eigenvalues[0], f"epoch {epochs[-1]}": res.eigenvalues[-1]}
    # shade the cliffs detected at this epoch, numbered like the windows (the constant mode apart)
    cliffs = [c for c, lab in zip(res.own_cliffs(i), res.own_labels(i)) if lab != sweep.CONSTANT_LABEL]
    right.plotly_chart(spectrum_figure(res.eigenvalues[i], cliffs, extra=extra,
                                       title=f"{group} eNTK spectrum at epoch {ep} (cliffs detected at this epoch)"),
                       key="grok_spec")

    labels = [f"{w.label} [{w.start}–{w.end}]" for w in res.windows]
    default_w = res.primary[0] if res.primary else 0
    c1, c2 = st.columns([2, 5])
    wi = c1.selectbox("Window", range(len(labels)), index=default_w, format_func=lambda j: labels[j], key="grok_window")
    fams = c2.multiselect("Families", res.families, default=[f for f in res.families if f != "random"] or res.families,
                          key="grok_fams")
    st.plotly_chart(overlap_figure(res, wi, fams, ep), key="grok_overlap")

    rows = []
    for j, w in enumerate(res.windows):
        row = {"window": f"{w.label} [{w.start}–{w.end}]"}
        row.update({f: round(float(res.overlap[i, j, k]), 2) for k, f in enumerate(res.families)})
        rows.append(row)
    st.markdown(f"**Subspace overlap at epoch {ep}** (out of each family's dimension: "
                + ", ".join(f"{f} {d}" for f, d in zip(res.families, res.dims)) + ")")
    st.dataframe(rows, hide_index=True, width="content")


with guarded("cannot compute the sweep"):
    spec = sweep.default_spec(run, group)
    bar = st.progress(0.0, text="Computing the eNTK at every checkpoint…")

    def progress(done: int, total: int, message: str) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"Computing the eNTK at every checkpoint: {message} ({done}/{total})")

    try:
        res = sweep.sweep(run, spec, progress=progress)
    finally:
        bar.empty()
    # the scrubber starts at the sidebar's checkpoint and follows it when the sidebar changes
    if st.session_state.get("grok_synced") != (run.name, sidebar_epoch):
        st.session_state["grok_synced"] = (run.name, sidebar_epoch)
        st.session_state["grok_epoch"] = sidebar_epoch
    scrubber(res, group)
    st.caption(f"{len(res.epochs)} checkpoints · windows from the {res.meta['window_group']} kernel at epoch "
               f"{res.meta['reference_epoch']} · "
               + ("served from the cache" if res.meta["cache"] == "hit" else f"computed in {res.meta['total_s']:.1f} s and cached"))
