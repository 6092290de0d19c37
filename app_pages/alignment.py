"""Alignment page: eNTK cliff directions against the Fourier feature families (modular
arithmetic), beside the PCA and random baselines.

Heatmaps of the phase-insensitive correlation between the directions of one cliff and the
stacked Fourier banks, before or after the two-stage Laplacian rotation inside the cliff
(:mod:`entk_core.families.modadd_mlp.analysis`); click an eigenvalue (or type its index) to
see its eigenvector (or, inside the rotated cliff, the rotated direction) as a p × p image
over (a, b) with its 2-D Fourier power.
"""
import numpy as np
import streamlit as st

from entk_core.engine.measures import best_phase_corr
from entk_core.engine.spectra import Cliff
from entk_core.families.modadd_mlp import analysis as ma
from entk_core.figures import heatmap_figure
from entk_core.workflows import alignment, analysis
from entk_core.workflows.services import Services
from entk_core.workflows.sweep import CONSTANT_LABEL
from app_pages._shared import (alignment_inputs, cache_caption, compare_control, export_buttons, group_name, groups_of,
                               guarded, kernel_size_of, load_model, not_available, require_run, spectrum_explorer, timed,
                               url_int, url_multiselect, url_selectbox, url_toggle, vector_figures)

st.header("Alignment with Fourier features")
run, epoch = require_run()
fam = run.family
p = getattr(run.config, "p", None)
N = len(run.data.kernel_idx)
families, inputs = {}, {}
with guarded("cannot build the feature families"):
    inputs = alignment_inputs(run, epoch)
    families = inputs["families"]
if p is None or N != p * p or not all(f in families for f in ma.FOURIER):
    not_available(run, "The Fourier alignment view", "It needs a modular-arithmetic run whose feature families "
                  "include the a, b, sum and diff Fourier banks over all p² pairs (the MLP); pick one in the sidebar.")
families = {k: f for k, f in families.items() if k in ma.REPORT_FAMILIES}
bases = {k: b for k, b in inputs["bases"].items() if k in families}

groups = groups_of(run)
c1, c2, c3, c4 = st.columns([3, 3, 2, 2])
group = url_selectbox("group", "Layer group", groups, analysis.FULL, key="align_group", where=c1,
                      format_func=lambda g: group_name(run, g), help="whose eigenvectors are read")
windows_from = url_selectbox("windows", "Cliffs detected in", groups, analysis.FULL, key="align_windows", where=c2,
                             format_func=lambda g: group_name(run, g),
                             help="the cliffs (index windows) come from this group's spectrum at the same epoch; the "
                                  "paper reads the full kernel's windows inside each layer's kernel")
n = kernel_size_of(run, fam.default_reduction)
kmax = min(n, 2000)
top = url_int("top", f"Eigenvalues k (1–{kmax})", 1, kmax, min(fam.default_top, n), key="align_top", where=c3,
              step=10)
rotated = url_toggle("rotation", "After rotation", True, key="align_rotated", where=c4,
                     help="two-stage graph-Laplacian rotation inside the cliff (axis Laplacians for a/b cliffs, "
                          "sum/diff Laplacians for sum/diff cliffs), so each direction is one Fourier mode")
other = compare_control(run, epoch, key="align_compare")

with guarded("cannot compute the alignment"):
    model = load_model(run, epoch)
    res, dt = timed(analysis.spectrum, run, epoch, group=group, top=top, model=model)
    wins = ma.cliff_windows(run, epoch, services=Services(), windows_from=windows_from, top=top)
    V = res.eigenvectors
    wins = [w for w in wins if w[2] < V.shape[1]]
    fourier = [w for w in wins if w[0] != CONSTANT_LABEL]
    st.subheader(f"Cliff directions vs feature families · {group} eNTK, epoch {epoch}")
    U, s, figures, tables = None, 0, {}, {}
    if not fourier:
        later = "pick a later epoch or another group" if epoch != run.epochs[-1] else "pick another group"
        st.info(f"No cliff of two or more eigenvalues was detected at this checkpoint; {later}.")
    else:
        labels = [f"{lab} [{a}–{b}], drop ×{r:.2f}" for lab, a, b, r in fourier]
        d1, d2 = st.columns([2, 4])
        ci = url_selectbox("cliff", "Cliff", list(range(len(fourier))), 0, key="align_cliff", where=d1,
                           format_func=lambda j: labels[j],
                           url_format=lambda j: fourier[j][0].replace(" ", "") if j < len(fourier) else str(j))
        chosen = url_multiselect("families", "Families (stacked rows)", list(ma.FOURIER), list(ma.FOURIER),
                                 key="align_fams", where=d2)
        lab, s, e, _ = fourier[ci]
        block = V[:, s:e + 1]
        info = ma.analyse_cliff(block, families, p, rotate=block.shape[1] >= 2, bases=bases)
        U = info.get("rotated") if rotated and info["rotation"] else None
        dirs = U if U is not None else block
        if chosen:
            H, ylabels = alignment.direction_correlations(dirs, families, chosen)
            xl = ([f"rotated direction {j}" for j in range(dirs.shape[1])] if U is not None
                  else [f"eigenvector {s + j}" for j in range(dirs.shape[1])])
            state = f"after {info['rotation']} rotation" if U is not None else "raw eigenvectors"
            hfig = heatmap_figure(H, x_labels=xl, y_labels=ylabels, z_title="corr", x_title="direction in the cliff",
                                  y_title="Fourier mode",
                                  title=f"{lab} ({e - s + 1} directions), {state}: phase-insensitive correlation")
            st.plotly_chart(hfig, key="align_heatmap", width="stretch")
            figures["heatmap"] = hfig
        else:
            st.info("Pick at least one family.")
        mb = info["mean_best_corr"]
        k1, k2, k3 = st.columns(3)
        k1.metric("Mean best correlation, raw", f"{mb['before']:.3f}")
        k2.metric("after rotation", "–" if mb["after"] is None else f"{mb['after']:.3f}",
                  delta=None if mb["after"] is None else f"{mb['after'] - mb['before']:+.3f}")
        k3.metric("Rotation", info["rotation"] or "none")
        H_act = inputs["activations"]
        rows = alignment.window_table(V, [(lab, s, e)], families, H=H_act, bases=bases)
        table = [{"family": r["family"], "dim": r["dim"], "eNTK": r["entk"], "PCA": r["pca"], "random": r["random"],
                  "eNTK %": round(100 * r["entk"] / max(r["dim"], 1), 1)} for r in rows]
        st.dataframe(table, hide_index=True, width="content")
        tables["overlaps"] = table
        st.caption(f"Subspace overlap ‖QᵀF‖² of the cliff span ({e - s + 1} directions) with each mean-centred "
                   "family, out of its dimension, beside the same budget of PCA directions of the hidden "
                   "activations (" + ("none declared" if H_act is None else f"{H_act.shape[1]} units") + ") and of a "
                   "random subspace. The rotation changes only how single-mode each direction is.")

    st.subheader("One eigenvector over (a, b)")
    bank = ma.fourier_bank_all(families)
    shaded = [Cliff(start=a, size=b - a + 1, ratio=r) for _, a, b, r in fourier]

    def vec_at(i: int) -> tuple[np.ndarray, str]:
        if U is not None and s <= i < s + U.shape[1]:
            return U[:, i - s], f"rotated direction {i - s} of the cliff (position {i})"
        return V[:, i], f"eigenvector {i}"

    def side(i: int) -> None:
        vec, _ = vec_at(i)
        corr, best = best_phase_corr(vec, bank)
        st.metric("Best Fourier match", bank.labels[int(best[0])],
                  help="highest phase-insensitive correlation over a|b|sum|diff")
        st.metric("correlation", f"{corr[0]:.3f}")

    extra = None
    if other is not None:
        r2 = analysis.spectrum(other[0], other[1], group=group, top=top)
        extra = {other[2]: r2.eigenvalues}
    idx, sfig, vfigs = spectrum_explorer(
        run, key="align", eigenvalues=res.eigenvalues, cliffs=shaded, labels=[w[0] for w in fourier],
        title=f"{group} eNTK spectrum (click an eigenvalue; cliffs from {windows_from})", log=True,
        n_vectors=V.shape[1], default_vector=fourier[0][1] if fourier else 0, side=side, extra=extra,
        vector_of=lambda i: vector_figures(run, vec_at(i)[0], title=f"{vec_at(i)[1]} as a p × p image (p = {p})"))
    figures.update({"spectrum": sfig, **{f"vector_{idx}_{j}": f for j, f in enumerate(vfigs)}})
    st.caption(cache_caption(res.meta, dt, (res.meta["timing"].get("kernel_s") or 0) + (res.meta["timing"].get("eig_s") or 0)))
    export_buttons(f"{run.name}_e{epoch}_{group}_alignment",
                   arrays={"eigenvalues": res.eigenvalues, "eigenvectors": V[:, :max(w[2] for w in wins) + 1] if wins else V},
                   tables=tables, figures=figures, key="align_export")
