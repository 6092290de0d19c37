"""Alignment page: the directions of one spectral window (a cliff) against the feature
families the run's family declares, beside the PCA and random baselines.

Generic over families: the families are the family's view families
(:attr:`~entk_core.families.base.ModelFamily.view_families`, built from the run's final
model: a Transformer's are at its key frequencies), the windows are the blocks detected in
a group's spectrum, β is offered when the family rescales classes, and the rotation
control when it declares a rotation inside a window
(:meth:`~entk_core.families.base.ModelFamily.cliff_rotation`: the MLP's two-stage Laplacian
rotation, so each direction is one Fourier mode). Click an eigenvalue (or type its index)
to see its eigenvector -- inside the rotated window, the rotated direction -- in its
family's form.
"""
import streamlit as st

from entk_core.engine.spectra import Cliff
from entk_core.figures import heatmap_figure
from entk_core.ui import (Phase, cache_caption, compare_control, export_buttons, group_name, groups_of, guarded,
                          kernel_size_of, long_calls, not_available, phases_key, plain, plain_html, require_run, spectrum_explorer, stop,
                          timed,
                          url_float, url_int, url_multiselect, url_selectbox, url_toggle, vector_figures,
                          view_inputs_of)
from entk_core.workflows import analysis, views
from entk_core.workflows.estimates import spectrum_seconds
from entk_core.workflows.sweep import CONSTANT_LABEL

st.header("Alignment with feature families")
run, epoch = require_run()
fam = run.family
inputs = None
with guarded("cannot build the feature families"):
    inputs = view_inputs_of(run, epoch)
if inputs is None:
    stop()
if not inputs.families:
    not_available(run, "The alignment view", "It needs feature families over the kernel's rows, and this family "
                  "declares none (a family adds them with its feature_families hook; see docs/ARCHITECTURE.md).")

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
rotated = False
if fam.offers("rotation"):
    rotated = url_toggle("rotation", "After rotation", True, key="align_rotated", where=c4, help=fam.rotation_help)
beta = None
if fam.offers("beta"):
    beta = url_float("beta", "Importance β", 0.0, 1.0, 0.0, key="align_beta", step=0.05, where=c4,
                     help="class rows scaled by I_c^(β/2) (importance rescaling)") or None
other = compare_control(run, epoch, key="align_compare")


def _phase(g: str, r=None, e=None, label: str = "") -> Phase:
    r, e = (run, epoch) if r is None else (r, e)
    kw = {"epoch": e, "group": g, "reduction": fam.default_reduction, "top": int(top), "beta": beta}
    return Phase(f"the {g} eNTK spectrum{label and ' of ' + label}", analysis.spectrum,
                 "entk_core.workflows.analysis:spectrum", kw,
                 estimate_s=lambda: spectrum_seconds(r, e, group=g, top=int(top), beta=beta), run=r)


def _spectra():
    """The group's spectrum, the one whose cliffs give the windows (when another group's), and
    the compared checkpoint's: one action, whose estimate covers them all."""
    phases = [_phase(group)]
    if windows_from != group:
        phases.append(_phase(windows_from))
    if other is not None:
        phases.append(_phase(group, other[0], other[1], other[2]))
    return long_calls(phases_key("alignment", run, phases), "The alignment view", run, phases)


with guarded("cannot compute the alignment"):
    out, dt = timed(_spectra)
    if out is None:
        stop()
    res = out[0]
    ref = out[1] if windows_from != group else res
    r2 = out[-1] if other is not None else None
    V = res.eigenvectors
    wins = [w for w in views.cliff_windows(ref) if w[2] < V.shape[1]]
    blocks = [w for w in wins if w[0] != CONSTANT_LABEL]
    st.subheader(f"Cliff directions vs feature families · {group} eNTK, epoch {epoch}")
    cv, figures, tables = None, {}, {}
    if not blocks:
        later = "pick a later epoch or another group" if epoch != run.epochs[-1] else "pick another group"
        st.info(f"No cliff of two or more eigenvalues was detected at this checkpoint; {later}.")
    else:
        labels = [f"{lab} [{a}–{b}], drop ×{r:.2f}" for lab, a, b, r in blocks]
        d1, d2 = st.columns([2, 4])
        ci = url_selectbox("cliff", "Cliff", list(range(len(blocks))), 0, key="align_cliff", where=d1,
                           format_func=lambda j: labels[j],
                           url_format=lambda j: blocks[j][0].replace(" ", "") if j < len(blocks) else str(j))
        chosen = url_multiselect("families", "Families (stacked rows)", inputs.features, inputs.features,
                                 key="align_fams", where=d2)
        lab, s, e, _ = blocks[ci]
        cv = views.cliff_view(run, V, (lab, s, e), inputs, chosen=chosen, rotate=rotated)
        if r2 is not None and r2.eigenvectors.shape[1] > e:  # the same index window at the compared checkpoint
            cv2 = views.cliff_view(other[0], r2.eigenvectors, (lab, s, e), view_inputs_of(other[0], other[1]),
                                   chosen=[], rotate=False)
            theirs = {r["family"]: r for r in cv2.table}
            for row in cv.table:
                o = theirs.get(row["family"])
                row[f"eNTK · {other[2]}"] = None if o is None else o["eNTK"]
                row[f"eNTK % · {other[2]}"] = None if o is None else o["eNTK %"]
        if cv.heatmap is not None:
            state = f"after {cv.rotation} rotation" if cv.rotation else "raw eigenvectors"
            hfig = heatmap_figure(cv.heatmap, x_labels=cv.column_labels, y_labels=cv.row_labels, z_title="corr",
                                  x_title="direction in the cliff", y_title="feature",
                                  title=f"{lab} ({e - s + 1} directions), {state}: phase-insensitive correlation")
            st.plotly_chart(hfig, key="align_heatmap", width="stretch")
            figures["heatmap"] = hfig
        else:
            st.info("Pick at least one family.")
        mb = cv.mean_best_corr
        k1, k2, k3 = st.columns(3)
        k1.metric("Mean best correlation, raw", "–" if mb["raw"] is None else f"{mb['raw']:.3f}")
        if fam.offers("rotation"):
            k2.metric("after rotation", "–" if mb["rotated"] is None else f"{mb['rotated']:.3f}",
                      delta=None if mb["rotated"] is None else f"{mb['rotated'] - mb['raw']:+.3f}")
            k3.metric("Rotation", cv.rotation or "none")
        st.dataframe(cv.table, hide_index=True, width="content")
        tables["overlaps"] = cv.table
        H = inputs.activations
        st.caption(f"Subspace overlap ‖QᵀF‖² of the cliff span ({e - s + 1} directions) with each mean-centred "
                   "family, out of its dimension, beside the same budget of PCA directions of the hidden "
                   "activations (" + ("none declared" if H is None else f"{H.shape[1]} units") + ") and of a "
                   "random subspace." + (" The rotation changes only how single-mode each direction is."
                                         if fam.offers("rotation") else "")
                   + (f" Compared: the same directions [{s}–{e}] at {plain(other[2])} (columns “· {plain(other[2])}”; its "
                      "spectrum dotted on the chart below)." if r2 is not None else ""))
        with st.expander("The feature families"):
            st.dataframe([{"family": k, "dim": int(inputs.bases[k].shape[1]), "what": f.description}
                          for k, f in inputs.families.items()], hide_index=True, width="stretch")

    st.subheader("One eigenvector")
    shaded = [Cliff(start=a, size=b - a + 1, ratio=r) for _, a, b, r in blocks]

    def vec_at(i: int):
        vec, name = cv.direction_at(i) if cv is not None else (None, f"eigenvector {i}")
        return (V[:, i] if vec is None else vec), name

    def side(i: int) -> None:
        best = views.best_match(vec_at(i)[0], inputs)
        if best is not None:
            st.metric("Best feature match", best[0],
                      help="highest phase-insensitive correlation over " + " | ".join(inputs.features))
            st.metric("correlation", f"{best[1]:.3f}")

    extra = None if r2 is None else {plain_html(other[2]): r2.eigenvalues}  # a legend name: Plotly renders HTML
    idx, sfig, vfigs = spectrum_explorer(
        run, key="align", eigenvalues=res.eigenvalues, cliffs=shaded, labels=[w[0] for w in blocks],
        title=f"{group} eNTK spectrum (click an eigenvalue; cliffs from {windows_from})", log=True,
        n_vectors=V.shape[1], default_vector=blocks[0][1] if blocks else 0, side=side, extra=extra,
        vector_of=lambda i: vector_figures(run, vec_at(i)[0], title=vec_at(i)[1]))
    figures.update({"spectrum": sfig, **{f"vector_{idx}_{j}": f for j, f in enumerate(vfigs)}})
    st.caption(cache_caption(res.meta, dt, views.computed_seconds(res)))
    export_buttons(f"{run.name}_e{epoch}_{group}_alignment",
                   arrays={"eigenvalues": res.eigenvalues, "eigenvectors": V[:, :max(w[2] for w in wins) + 1] if wins else V},
                   tables=tables, figures=figures, key="align_export")
