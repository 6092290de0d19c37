"""Grokking page: how the eNTK's cliffs line up with the feature families over training,
beside the PCA baseline of the hidden activations.

The first visit computes, in one worker with one estimate covering both: the sweep over
every checkpoint (:func:`entk_core.workflows.alignment.grokking_sweep`) and the PCA baseline
over training (:func:`entk_core.workflows.baselines.pca_profile`: once per run, for every
window size and family, so a new choice of families or window is answered from the cache).
Both are cached on disk. The epoch is the sidebar's checkpoint slider, the page's one epoch
control: moving it redraws the charts from the cached sweep (no kernel is recomputed).
"""
import numpy as np
import streamlit as st

from entk_core.figures import overlap_figure
from entk_core.ui import (Phase, cache_caption, compare_control, export_buttons, fmt_pct, group_name, groups_of,
                          guarded, long_call, long_calls, not_available, require_run, set_control, spectrum_explorer, stop,
                          timed, url_multiselect, url_selectbox, vector_figures)
from entk_core.ui.animation import epoch_animation
from entk_core.workflows import alignment, analysis, baselines, views
from entk_core.workflows.estimates import pca_over_training_seconds, sweep_seconds
from entk_core.workflows.sweep import CONSTANT_LABEL

st.header("Grokking: eNTK feature alignment over training")
run, epoch = require_run()
fam = run.family
if not fam.offers("grokking"):
    not_available(run, "The grokking view", "It needs a classification family trained here (accuracy over "
                  "training) with feature families; pick a modular-addition run in the sidebar.")

groups = groups_of(run)
c1, c2 = st.columns([2, 2])
group = url_selectbox("group", "Layer group", groups, analysis.FULL, key="grok_group", where=c1,
                      format_func=lambda g: group_name(run, g),
                      help="full = all parameters; one layer = that layer's eNTK (the layerwise localisation)")
other = compare_control(run, epoch, key="grok_compare", where=c2)
st.caption(
    "Each checkpoint's eNTK spectrum is compared with the ground-truth feature families. Windows are the blocks "
    "detected at the reference checkpoint (the last), tracked at every epoch, as in the paper's Fig. 2. Onset: "
    "the logging interval where test accuracy rises, for good, 10% of the way from chance to its plateau. Peak: "
    "where the first derivative of the primary overlap curve is largest. PCA (dashed): the top principal "
    "directions of the hidden activations, as many as the window has eigenvectors."
)


def _sweep_phase(r) -> Phase:
    return Phase(f"the {group} spectrum at each of {len(r.epochs)} checkpoints", alignment.grokking_sweep,
                 "entk_core.workflows.alignment:grokking_sweep", {"group": group},
                 estimate_s=lambda: sweep_seconds(r, group=group), run=r)


def _first_visit():
    phases = [_sweep_phase(run)]
    if fam.offers("pca"):
        phases.append(Phase(f"the PCA baseline at each of {len(run.epochs)} checkpoints", baselines.pca_profile,
                            "entk_core.workflows.baselines:pca_profile", {},
                            estimate_s=lambda: pca_over_training_seconds(run)))
    return long_calls(f"grokking|{run.path}|{group}", "The grokking view", run, phases)


with guarded("cannot compute the sweep"):
    out, dt = timed(_first_visit)
    if out is None:
        stop()
    res, profile = out[0], (out[1] if len(out) > 1 else None)
    i = res.epoch_index(epoch)
    wins = list(range(len(res.windows)))
    default_w = res.primary[0] if res.primary else 0
    wlabel = lambda j: (("constant mode" if res.windows[j].label == CONSTANT_LABEL else res.windows[j].label)  # noqa: E731
                        + f" [{res.windows[j].start}–{res.windows[j].end}]")
    d1, d2 = st.columns([2, 5])
    wi = url_selectbox("window", "Window", wins, default_w, key="grok_window", where=d1, format_func=wlabel,
                       url_format=lambda j: res.windows[j].label.replace(" ", "") if j < len(res.windows) else str(j))
    fams_default = [f for f in res.families if f not in fam.control_families] or res.families
    fams = url_multiselect("families", "Families", res.families, fams_default, key="grok_fams", where=d2)

    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Epoch", epoch)
    m2.metric("Test accuracy", fmt_pct(None if np.isnan(res.test_acc[i]) else float(res.test_acc[i])))
    m3.metric("Grokking onset", "–" if res.onset_epoch is None else f"{res.onset_epoch:g}")
    m4.metric("Overlap-derivative peak", "–" if res.peak_epoch is None else f"{res.peak_epoch:g}",
              help=(f"{res.windows[res.primary[0]].label} vs {res.primary[1]}" if res.primary else None))

    # a new window shows its first eigenvector: one left outside it would stay pinned in the URL
    w_now = (res.windows[wi].start, res.windows[wi].end)
    if st.session_state.get("grok_window_shown", w_now) != w_now:
        v = st.session_state.get("grok_vector")
        if not (isinstance(v, int) and w_now[0] <= v <= w_now[1]):
            set_control("grok_vector", w_now[0])
    st.session_state["grok_window_shown"] = w_now

    # the spectrum at this epoch, its own blocks labelled like the windows; click for an eigenvector
    spec = analysis.spectrum(run, epoch, group=res.spec.group, reduction=res.spec.reduction, top=res.spec.top)
    extra = None
    if other is not None and other[0].path == run.path:
        extra = {other[2]: res.eigenvalues[res.epoch_index(other[1])]}
    _, spec_fig, vfigs = spectrum_explorer(
        run, key="grok", eigenvalues=res.eigenvalues[i], cliffs=res.own_cliffs(i), labels=res.own_labels(i),
        title=f"{group} eNTK spectrum at epoch {epoch} (blocks detected at this epoch)", log=True,
        n_vectors=spec.eigenvectors.shape[1], default_vector=res.windows[wi].start, extra=extra, height=380,
        vector_of=lambda j: vector_figures(run, spec.eigenvectors[:, j], title=f"eigenvector {j} at epoch {epoch}"))
    # every checkpoint in the browser: scrub or play with no server round trip (the sidebar keeps the URL)
    epoch_animation(run, key="grok_animation", epoch=epoch, group=res.spec.group, reduction=res.spec.reduction,
                    top=res.spec.top, vector=st.session_state.get("grok_vector"),
                    title=f"{group} eNTK spectrum over training, played in the browser", default_on=False)

    # overlap over training: eNTK windows, PCA with the same budget, and the compared run
    pca, res2, pca_note = None, None, ""
    if profile is not None and fams:  # every window size and family: read from the cached profile
        pca = profile.overlaps([res.windows[wi].size], list(fams))
    elif profile is None:
        pca_note = " (no PCA baseline: the family declares no hidden activations)"
    if other is not None and other[0].path != run.path:
        r2 = other[0]
        res2 = long_call(f"sweep|{r2.path}|{group}", f"The sweep of {r2.name}", alignment.grokking_sweep, r2,
                         target="entk_core.workflows.alignment:grokking_sweep", kwargs={"group": group},
                         estimate_s=lambda: sweep_seconds(r2, group=group))
    try:
        cv = views.overlap_curves(res, wi, fams, pca=pca, other=res2, other_name=other[0].name if res2 is not None else "")
    except ValueError as e:  # the compared run has no window of this label
        st.info(f"compare: {e}")
        cv = views.overlap_curves(res, wi, fams, pca=pca)
    # one chart over training: the overlap curves with train/test accuracy on the same % axis
    m = run.metrics
    ov_fig = overlap_figure(cv.epochs, cv.curves, derivatives=cv.derivatives, dashed=cv.dashed, current=epoch,
                            markers=cv.markers, accuracy={k: m.get(k, []) for k in ("train_acc", "test_acc") if m.get(k)},
                            accuracy_epochs=m.get("epoch", []),
                            title=f"Overlap of {wlabel(wi)} with the feature families, and accuracy{pca_note}")
    st.plotly_chart(ov_fig, key="grok_overlap", width="stretch")

    rows = views.overlap_rows(res, i, wlabel)
    st.markdown(f"**Subspace overlap at epoch {epoch}** (out of each family's dimension: "
                + ", ".join(f"{f} {d}" for f, d in zip(res.families, res.dims)) + ")")
    st.dataframe(rows, hide_index=True, width="content")
    st.caption(f"{len(res.epochs)} checkpoints · windows from the {res.meta['window_group']} kernel at epoch "
               f"{res.meta['reference_epoch']} · " + cache_caption(res.meta, dt, res.meta.get("compute_s")))
    export_buttons(f"{run.name}_grokking_{group}", arrays={"epochs": res.epochs, "eigenvalues": res.eigenvalues,
                                                           "overlap": res.overlap, "dims": res.dims},
                   tables={"overlap_curves": views.curve_rows(cv), f"overlap_at_{epoch}": rows},
                   figures={"spectrum": spec_fig, "overlap": ov_fig}, key="grok_export")
