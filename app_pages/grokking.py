"""Grokking page: how the eNTK's cliffs line up with the feature families over training,
beside the PCA baseline of the hidden activations.

The sweep over every checkpoint (:func:`entk_core.workflows.alignment.grokking_sweep`) is
computed once (progress; a worker with Stop when it is long) and cached on disk. The epoch
is the sidebar's checkpoint slider, the page's one epoch control: moving it redraws the
charts from the cached sweep (no kernel is recomputed).
"""
import numpy as np
import streamlit as st

from entk_core.figures import overlap_figure
from entk_core.workflows import alignment, analysis
from entk_core.workflows.sweep import CONSTANT_LABEL
from app_pages._shared import (cache_caption, compare_control, estimate_seconds, export_buttons, fmt_pct,
                               group_name, groups_of, guarded, long_call, not_available, require_run,
                               spectrum_explorer, stop, timed, url_multiselect, url_selectbox, vector_figures)

st.header("Grokking: eNTK feature alignment over training")
run, epoch = require_run()
fam = run.family
if not fam.offers("grokking"):
    not_available(run, "The grokking view", "It needs a classification family trained here (accuracy over "
                  "training); pick a modular-addition run in the sidebar.")

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


def _sweep(r, label):
    n_ck = len(r.epochs)
    est = n_ck * estimate_seconds(r, reduction=r.family.default_reduction, group=group, top=r.family.default_top) / 2
    return long_call(f"sweep|{r.path}|{group}", f"the sweep of {label}", alignment.grokking_sweep, r,
                     target="entk_core.workflows.alignment:grokking_sweep", kwargs={"group": group}, estimate_s=est)


with guarded("cannot compute the sweep"):
    res, dt = timed(_sweep, run, "every checkpoint")
    if res is None:
        stop()
    i = res.epoch_index(epoch)
    wins = list(range(len(res.windows)))
    default_w = res.primary[0] if res.primary else 0
    wlabel = lambda j: (("constant mode" if res.windows[j].label == CONSTANT_LABEL else res.windows[j].label)  # noqa: E731
                        + f" [{res.windows[j].start}–{res.windows[j].end}]")
    d1, d2 = st.columns([2, 5])
    wi = url_selectbox("window", "Window", wins, default_w, key="grok_window", where=d1, format_func=wlabel,
                       url_format=lambda j: res.windows[j].label.replace(" ", "") if j < len(res.windows) else str(j))
    fams_default = [f for f in res.families if f != "random"] or res.families
    fams = url_multiselect("families", "Families", res.families, fams_default, key="grok_fams", where=d2)

    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Epoch", epoch)
    m2.metric("Test accuracy", fmt_pct(None if np.isnan(res.test_acc[i]) else float(res.test_acc[i])))
    m3.metric("Grokking onset", "–" if res.onset_epoch is None else f"{res.onset_epoch:g}")
    m4.metric("Overlap-derivative peak", "–" if res.peak_epoch is None else f"{res.peak_epoch:g}",
              help=(f"{res.windows[res.primary[0]].label} vs {res.primary[1]}" if res.primary else None))

    m = run.metrics
    markers = {f"onset {res.onset_epoch:g}": res.onset_epoch} if res.onset_epoch is not None else {}
    series = {k: m.get(k, []) for k in ("train_acc", "test_acc") if m.get(k)}

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

    # overlap over training: eNTK windows, PCA with the same budget, and the compared run
    w = res.windows[wi]
    curves, ders, dashed = {}, {}, []
    for f in fams:
        k = res.family_index(f)
        name = f"{f} ({res.dims[k]}-dim)"
        curves[name], ders[name] = res.percent[:, wi, k], res.derivative[:, wi, k]
    pca_note = ""
    if fam.offers("pca") and fams:
        pca = long_call(f"pca|{run.path}|{w.size}|{fams}", "the PCA baseline over training", alignment.pca_over_training,
                        run, target="entk_core.workflows.alignment:pca_over_training",
                        kwargs={"sizes": [w.size], "families": list(fams)}, estimate_s=0.05 * len(run.epochs))
        if pca is not None:
            for kf, f in enumerate(fams):
                name = f"{f} · PCA"
                curves[name] = 100 * pca[:, 0, kf] / max(res.dims[res.family_index(f)], 1)
                dashed.append(name)
    elif not fam.offers("pca"):
        pca_note = " (no PCA baseline: the family declares no hidden activations)"
    if other is not None and other[0].path != run.path:
        res2 = _sweep(other[0], other[0].name)
        if res2 is not None:
            try:
                w2 = res2.window_index(w.label)
                for f in fams:
                    if f in res2.families:
                        name = f"{f} · {other[0].name}"
                        curves[name] = np.interp(res.epochs, res2.epochs, res2.percent[:, w2, res2.family_index(f)])
                        dashed.append(name)
            except ValueError as e:
                st.info(f"compare: {e}")
    # one chart over training: the overlap curves with train/test accuracy on the same % axis
    ov_fig = overlap_figure(res.epochs, curves, derivatives=ders, dashed=dashed, current=epoch,
                            markers={**markers, **({f"peak {res.peak_epoch:g}": res.peak_epoch}
                                                   if res.peak_epoch is not None else {})},
                            accuracy=series, accuracy_epochs=m.get("epoch", []),
                            title=f"Overlap of {wlabel(wi)} with the feature families, and accuracy{pca_note}")
    st.plotly_chart(ov_fig, key="grok_overlap", width="stretch")

    rows = []
    for j, wj in enumerate(res.windows):
        row = {"window": wlabel(j)}
        row.update({f: round(float(res.overlap[i, j, k]), 2) for k, f in enumerate(res.families)})
        rows.append(row)
    st.markdown(f"**Subspace overlap at epoch {epoch}** (out of each family's dimension: "
                + ", ".join(f"{f} {d}" for f, d in zip(res.families, res.dims)) + ")")
    st.dataframe(rows, hide_index=True, width="content")
    st.caption(f"{len(res.epochs)} checkpoints · windows from the {res.meta['window_group']} kernel at epoch "
               f"{res.meta['reference_epoch']} · " + cache_caption(res.meta, dt, res.meta.get("compute_s")))
    curve_rows = [{"epoch": int(e), **{n: round(float(c[t]), 3) for n, c in curves.items()}}
                  for t, e in enumerate(res.epochs)]
    export_buttons(f"{run.name}_grokking_{group}", arrays={"epochs": res.epochs, "eigenvalues": res.eigenvalues,
                                                           "overlap": res.overlap, "dims": res.dims},
                   tables={"overlap_curves": curve_rows, f"overlap_at_{epoch}": rows},
                   figures={"spectrum": spec_fig, "overlap": ov_fig}, key="grok_export")
