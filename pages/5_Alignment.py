"""Alignment page: eNTK cliff directions against the Fourier feature families (modular arithmetic).

Heatmaps of the phase-insensitive correlation between the directions of one cliff and the
stacked Fourier banks, before or after the two-stage Laplacian rotation inside the cliff
(:mod:`entk_core.families.modadd_mlp.analysis`); click an eigenvalue (or pick an index) to see its
eigenvector as a p × p image over (a, b) with its 2-D Fourier power.
"""
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from entk_core.workflows import analysis
from entk_core.families.modadd_mlp import analysis as ma
from entk_core.engine.measures import best_phase_corr, phase_insensitive_corr
from entk_core.families.features import concat_families, modadd_families
from entk_core.figures import spectrum_figure
from entk_core.engine.spectra import Cliff
from entk_core.workflows.services import Services
from entk_core.workflows.sweep import CONSTANT_LABEL
from pages._shared import guarded, load_model, require_run

st.header("Alignment with Fourier features")
run, epoch = require_run()
fam = run.family
p = getattr(run.config, "p", None)
N = len(run.data.kernel_idx)
if p is None or N != p * p:
    st.info(f"The Alignment page needs a modular-arithmetic run (eNTK over all p² input pairs); "
            f"**{run.name}** is a {fam.title} run. Pick a modular-addition run in the sidebar.")
    st.stop()

families = {k: f for k, f in modadd_families(p, seed=getattr(run.config, "seed", 0)).items() if k in ma.REPORT_FAMILIES}

groups = analysis.kernel_groups(run)
c1, c2, c3, c4 = st.columns([2, 2, 2, 2])
group = c1.selectbox("Layer group", groups, key="align_group", help="whose eigenvectors are read")
windows_from = c2.selectbox("Cliffs detected in", [analysis.FULL] + [g for g in groups if g != analysis.FULL],
                            key="align_windows_from",
                            help="the cliffs (index windows) come from this group's spectrum at the same epoch; the "
                                 "paper reads the full kernel's windows inside each layer's kernel")
n = analysis.kernel_size(run, fam.default_reduction)
top = int(c3.number_input("Eigenvalues (k)", min_value=1, max_value=min(n, 2000), value=min(fam.default_top, n), step=10,
                          key=f"align_top_{n}", help=f"at most n = {n}, the kernel's size"))
rotated = c4.toggle("After rotation", value=True, key="align_rotated",
                    help="two-stage graph-Laplacian rotation inside the cliff (axis Laplacians for a/b cliffs, "
                         "sum/diff Laplacians for sum/diff cliffs), so each direction is one Fourier mode")


def heatmap_figure(H: np.ndarray, ylabels, xlabels, title: str) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=H, x=list(range(H.shape[1])), y=list(range(H.shape[0])), colorscale="Viridis",
                               zmin=0, zmax=1, colorbar={"title": "corr"},
                               customdata=np.array([[f"{yl} · {xl}" for xl in xlabels] for yl in ylabels]),
                               hovertemplate="%{customdata}<br>corr %{z:.3f}<extra></extra>"))
    step = max(1, len(ylabels) // 28)
    fig.update_yaxes(tickvals=list(range(0, len(ylabels), step)), ticktext=list(ylabels)[::step], autorange="reversed")
    fig.update_layout(title={"text": title}, xaxis_title="direction in the cliff", height=max(420, 12 * len(ylabels) + 140),
                      margin={"l": 90, "r": 20, "t": 60, "b": 50})
    return fig


def image_figures(vec: np.ndarray, title: str) -> tuple[go.Figure, go.Figure]:
    img, power, freqs = ma.eigenvector_image(vec, p)
    f1 = go.Figure(go.Heatmap(z=img, colorscale="RdBu", zmid=0, colorbar={"title": "value"},
                              hovertemplate="a=%{y}, b=%{x}<br>%{z:.4f}<extra></extra>"))
    f1.update_layout(title={"text": title}, xaxis_title="b", yaxis_title="a", height=430,
                     margin={"l": 50, "r": 20, "t": 60, "b": 50})
    f1.update_yaxes(autorange="reversed", scaleanchor="x")
    f2 = go.Figure(go.Heatmap(z=power, x=freqs, y=freqs, colorscale="Viridis", zmin=0, colorbar={"title": "power"},
                              hovertemplate="k_a=%{y}, k_b=%{x}<br>%{z:.3f}<extra></extra>"))
    f2.update_layout(title={"text": "2-D Fourier power (share of total)"}, xaxis_title="k_b", yaxis_title="k_a",
                     height=430, margin={"l": 50, "r": 20, "t": 60, "b": 50})
    f2.update_yaxes(autorange="reversed", scaleanchor="x")
    return f1, f2


with guarded("cannot compute the alignment"):
    with st.spinner("Computing the eNTK and its spectrum…"):
        model = load_model(run, epoch)
        res = analysis.spectrum(run, epoch, group=group, top=top, model=model)
        wins = ma.cliff_windows(run, epoch, services=Services(), windows_from=windows_from, top=top)
    V = res.eigenvectors
    wins = [w for w in wins if w[2] < V.shape[1]]
    fourier = [w for w in wins if w[0] != CONSTANT_LABEL]
    st.subheader(f"Cliff directions vs feature families · {group} eNTK, epoch {epoch}")
    U, s = None, 0
    if not fourier:
        st.info("No cliff of two or more eigenvalues was detected at this checkpoint; pick a later epoch "
                "or another group.")
    else:
        labels = [f"{lab} [{s}–{e}], drop ×{r:.2f}" for lab, s, e, r in fourier]
        d1, d2 = st.columns([2, 4])
        ci = d1.selectbox("Cliff", range(len(fourier)), format_func=lambda j: labels[j], key="align_cliff")
        chosen = d2.multiselect("Families (stacked rows)", list(ma.FOURIER), default=list(ma.FOURIER), key="align_fams")
        lab, s, e, _ = fourier[ci]
        block = V[:, s:e + 1]
        info = ma.analyse_cliff(block, families, p, rotate=block.shape[1] >= 2)
        U = info.get("rotated") if rotated and info["rotation"] else None
        dirs = U if U is not None else block
        if chosen:
            bank = concat_families("+".join(chosen), [families[f] for f in chosen])
            H = phase_insensitive_corr(dirs, bank)
            xl = ([f"rotated direction {j}" for j in range(dirs.shape[1])] if U is not None
                  else [f"eigenvector {s + j}" for j in range(dirs.shape[1])])
            state = f"after {info['rotation']} rotation" if U is not None else "raw eigenvectors"
            st.plotly_chart(heatmap_figure(H, bank.labels, xl, f"{lab} ({e - s + 1} directions), {state}: "
                                           "phase-insensitive correlation"), key="align_heatmap")
        else:
            st.info("Pick at least one family.")
        mb = info["mean_best_corr"]
        k1, k2, k3 = st.columns(3)
        k1.metric("Mean best correlation, raw", f"{mb['before']:.3f}")
        k2.metric("after rotation", "–" if mb["after"] is None else f"{mb['after']:.3f}",
                  delta=None if mb["after"] is None else f"{mb['after'] - mb['before']:+.3f}")
        k3.metric("Rotation", info["rotation"] or "none")
        st.dataframe([{"family": f, "overlap": info["overlap"][f], "% of dim": info["overlap_pct"][f]}
                      for f in info["overlap"]], hide_index=True, width="content")
        st.caption("Subspace overlap ‖QᵀF‖² of the cliff span with each mean-centred family (rotation-invariant); "
                   "the rotation only changes how single-mode each direction is.")

    st.subheader("One eigenvector over (a, b)")
    # a click on the spectrum selects an eigenvalue: apply it before the index widget is drawn
    sel = st.session_state.get("align_spec")
    pts = (sel or {}).get("selection", {}).get("points", []) if isinstance(sel, dict) else []
    if pts and st.session_state.get("align_last_click") != pts[0].get("x"):
        st.session_state["align_last_click"] = pts[0].get("x")
        st.session_state["align_idx"] = int(pts[0]["x"])
    if st.session_state.get("align_idx", 0) >= V.shape[1]:
        st.session_state["align_idx"] = 0
    if "align_idx" not in st.session_state:
        st.session_state["align_idx"] = fourier[0][1] if fourier else 0
    g1, g2 = st.columns([3, 2])
    idx = int(g2.number_input("Eigenvector index", min_value=0, max_value=V.shape[1] - 1, step=1, key="align_idx",
                              help="or click an eigenvalue on the spectrum"))
    shaded = [Cliff(start=s_, size=e_ - s_ + 1, ratio=r_) for _, s_, e_, r_ in fourier]  # numbered as the selector
    g1.plotly_chart(
        spectrum_figure(res.eigenvalues, shaded, selected=idx,
                        title=f"{group} eNTK spectrum (click an eigenvalue; cliffs from {windows_from})"),
        key="align_spec", on_select="rerun", selection_mode="points",
    )
    in_cliff = U is not None and s <= idx < s + U.shape[1]
    show_rot = g2.toggle("Rotated direction at this position", value=False, key="align_show_rot", disabled=not in_cliff,
                         help="inside the selected cliff, show the rotated direction with the same position instead "
                              "of the raw eigenvector (needs 'After rotation')")
    vec, what = (U[:, idx - s], f"rotated direction {idx - s} of the cliff") if show_rot and in_cliff \
        else (V[:, idx], f"eigenvector {idx}")
    bank = ma.fourier_bank_all(families)
    corr, best = best_phase_corr(vec, bank)
    g2.metric("Best Fourier match", bank.labels[int(best[0])], help="highest phase-insensitive correlation over a|b|sum|diff")
    g2.metric("correlation", f"{corr[0]:.3f}")
    g2.metric("eigenvalue", f"{res.eigenvalues[idx]:.4g}")
    f1, f2 = image_figures(vec, f"{what} as a p × p image (p = {p})")
    i1, i2 = st.columns(2)
    i1.plotly_chart(f1, key="align_img")
    i2.plotly_chart(f2, key="align_power")
