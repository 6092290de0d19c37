"""Training dynamics page: how the eNTK of any run moves over training, with or without
ground-truth features (:mod:`entk_core.workflows.dynamics`).

For every checkpoint: the spectrum (one picture, index against epoch), the kernel distances
to the previous and the last checkpoint (Fort et al. 2020), the centred kernel-target
alignment (Cortes et al. 2012), the effective rank (Roy and Vetterli 2007), and the
kernel-regression predictor's test accuracy beside the network's. Then the epoch animation
and, where the family declares feature families, the overlap of its spectral windows with
them over training (the family's sweep).

The first visit is one action of three phases in one worker, offered with one estimate that
covers them all (:func:`entk_core.ui.jobs.long_calls`): the kernels and their measures
(:func:`~entk_core.workflows.dynamics.dynamics`), the sweep, whose spectra come from the
kernels just cached (an eigendecomposition each), and the animation's frames
(:func:`~entk_core.workflows.dynamics_frames.training_frames`). Everything is cached; the
sidebar's checkpoint marks every curve.
"""
import numpy as np
import streamlit as st

from entk_core.figures import accuracy_figure, overlap_figure
from entk_core.figures.dynamics import kernel_curves_figure, spectrum_over_training_figure
from entk_core.ui import (Phase, cache_caption, export_buttons, fmt_pct, group_name, groups_of, guarded, long_calls,
                          require_run, stop, timed, url_selectbox)
from entk_core.ui.animation import epoch_animation
from entk_core.workflows import analysis, views
from entk_core.workflows.dynamics import FIELDS, dynamics, dynamics_seconds
from entk_core.workflows.dynamics_frames import training_frames, training_frames_seconds, training_sweep
from entk_core.workflows.estimates import sweep_seconds
from entk_core.workflows.sweep import CONSTANT_LABEL, default_spec, resolve_spec

st.header("Training dynamics: how the eNTK moves over training")
run, epoch = require_run()
fam = run.family

c1, c2 = st.columns([3, 2])
group = url_selectbox("group", "Layer group", groups_of(run), analysis.FULL, key="dyn_group", where=c1,
                      format_func=lambda g: group_name(run, g),
                      help="full = all parameters; otherwise the eNTK of one layer's parameters")
reduction = url_selectbox("reduction", "Reduction", list(analysis.REDUCTIONS), fam.default_reduction,
                          key="dyn_reduction", where=c2,
                          help="trace: mean over classes of K[:,:,c,c]; mean: mean over all class pairs; "
                               "flat: the class-major flattened kernel")
st.caption(
    "Measured at every checkpoint on the family's kernel inputs. Kernel distance: 1 − ⟨K₁, K₂⟩ / (‖K₁‖ ‖K₂‖) "
    "to the previous and to the last checkpoint (Fort et al. 2020). Alignment: centred kernel-target alignment "
    "with the labels (Cortes, Mohri and Rostamizadeh 2012). Effective rank: exp of the entropy of the normalised "
    "eigenvalues (Roy and Vetterli 2007). Kernel regression: the checkpoint's eNTK predictor fitted on the train "
    "rows and scored on the test rows, beside the network's own accuracy: where they part, the network has "
    "left its linearisation."
)

def _first_visit(spec):
    """The kernels and their measures, then the family's sweep over the spectra they give, then
    the animation's frames: one action, its estimate covering the three phases."""
    kw = {"group": group, "reduction": reduction}
    return long_calls(f"dynamics|{run.path}|{group}|{reduction}", "The training dynamics", run, [
        Phase(f"the kernel at each of {len(run.epochs)} checkpoints", dynamics,
              "entk_core.workflows.dynamics:dynamics", kw, estimate_s=lambda: dynamics_seconds(run, group, reduction)),
        Phase("the windows and overlaps of every checkpoint", training_sweep,
              "entk_core.workflows.dynamics_frames:training_sweep", kw,
              estimate_s=lambda: sweep_seconds(run, spec, kernels_cached=True)),
        Phase("the epoch animation's frames", training_frames, "entk_core.workflows.dynamics_frames:training_frames",
              kw, estimate_s=lambda: training_frames_seconds(run)),
    ])


with guarded("cannot compute the training dynamics"):
    spec = resolve_spec(default_spec(run, group, reduction=reduction), run)
    out, dt = timed(_first_visit, spec)
    if out is None:
        stop()
    res, sw, frames = out
    i = int(np.flatnonzero(res.epochs == epoch)[0]) if epoch in res.epochs else len(res.epochs) - 1
    row = res.rows[i]
    marks = res.meta.get("landmarks") or {}
    markers = {}
    if marks.get("grokking_onset") is not None:
        markers[f"onset {marks['grokking_onset']:g}"] = marks["grokking_onset"]
    if marks.get("kernel_fastest"):
        markers[f"kernel moves fastest {marks['kernel_fastest']['midpoint']:g}"] = marks["kernel_fastest"]["midpoint"]

    def num(name: str, fmt: str = "{:.3f}") -> str:
        v = row.get(name)
        return "–" if v is None else fmt.format(v)

    m = st.columns(6)
    m[0].metric("Epoch", epoch)
    m[1].metric("Kernel distance, previous", num("kernel_distance_prev", "{:.3g}"),
                help="1 − cosine of this checkpoint's kernel and the previous one's (Frobenius); null at the first")
    m[2].metric("Target alignment", num("target_alignment"), help=res.notes.get("target_alignment"))
    m[3].metric("Effective rank", num("effective_rank", "{:.1f}"), help=res.meta.get("effective_rank_over"))
    m[4].metric("Kernel regr. acc.", fmt_pct(row.get("kernel_regression_test_accuracy")),
                help=res.notes.get("kernel_regression_test_accuracy")
                or "the eNTK predictor of this checkpoint, fitted on the train rows, scored on the test rows")
    m[5].metric("Network test acc.", fmt_pct(row.get("network_test_accuracy")),
                help=res.notes.get("network_test_accuracy"))

    ends = [[c["end"] for c in r["cliffs"]] for r in res.rows]
    spec_fig = spectrum_over_training_figure(
        res.epochs, res.eigenvalues, cliff_ends=ends, current=epoch, markers=markers,
        title=f"{group} eNTK spectrum over training ({res.meta['reduction']}, top {res.meta['top']} of "
              f"{res.meta['n']}): cliffs show as bands")
    st.plotly_chart(spec_fig, key="dyn_spectrum", width="stretch")

    curves = {f: res.curve(f) for f in ("kernel_distance_prev", "kernel_distance_final", "target_alignment",
                                        "effective_rank") if any(r.get(f) is not None for r in res.rows)}
    left, right = st.columns(2)
    curve_fig = kernel_curves_figure(res.epochs, curves, current=epoch, markers=markers,
                                     title="How the kernel moves, aligns and spreads", height=640)
    left.plotly_chart(curve_fig, key="dyn_curves", width="stretch")
    acc = {k: [r.get(k) for r in res.rows] for k in ("network_train_accuracy", "network_test_accuracy",
                                                     "kernel_regression_test_accuracy")
           if any(r.get(k) is not None for r in res.rows)}
    acc_fig = None
    if acc:
        acc_fig = accuracy_figure(res.epochs, acc, current=epoch, markers=markers, height=640,
                                  title="Network accuracy and the eNTK kernel-regression predictor")
        right.plotly_chart(acc_fig, key="dyn_accuracy", width="stretch")
    else:
        right.info("No accuracy to show: " + (res.notes.get("network_test_accuracy")
                                             or f"the {fam.name} family has no labels"))
    if res.notes:
        st.caption("Notes: " + " · ".join(f"{k.replace('_', ' ')}: {v}" for k, v in res.notes.items()))
    st.caption(f"{len(res.epochs)} checkpoints · n = {res.meta['n']} · effective rank over "
               f"{res.meta['effective_rank_over']} · " + cache_caption(res.meta, dt, res.meta.get("compute_s")))

    st.subheader("Play through training")
    epoch_animation(run, key="dyn_animation", epoch=epoch, group=spec.group, reduction=spec.reduction, top=spec.top,
                    vector=frames.vector, title=f"{group} eNTK spectrum over training, played in the browser")
    st.subheader("Feature overlaps over training")
    ov_fig = None
    if sw.families:
        wi = sw.primary[0] if sw.primary else next((j for j, w in enumerate(sw.windows) if w.label != CONSTANT_LABEL), 0)
        fams = [f for f in sw.families if f not in fam.control_families] or sw.families
        cv = views.overlap_curves(sw, wi, fams)
        w = sw.windows[wi]
        ov_fig = overlap_figure(cv.epochs, cv.curves, derivatives=cv.derivatives, current=epoch, markers=cv.markers,
                                title=f"Overlap of {w.label} [{w.start}–{w.end}] (detected at epoch "
                                      f"{sw.meta.get('reference_epoch', run.epochs[-1])}) with the feature families")
        st.plotly_chart(ov_fig, key="dyn_overlap", width="stretch")
    else:
        st.info(f"No feature overlaps: the {fam.name} family declares no feature families. A family adds them by "
                "implementing `feature_families()` on its ModelFamily (ground-truth directions over the kernel "
                "inputs, as the built-in families and examples/entk-toy-family do); this page, Grokking and "
                "Alignment then measure the cliffs against them.")

    table = [{k: r.get(k) for k in ("epoch",) + FIELDS if k not in ("top_eigenvalues", "cliffs")} for r in res.rows]
    figs = {"spectrum_over_training": spec_fig, "kernel_curves": curve_fig}
    figs.update({k: f for k, f in (("accuracy", acc_fig), ("overlap", ov_fig)) if f is not None})
    export_buttons(f"{run.name}_dynamics_{group}_{res.meta['reduction']}",
                   arrays={"epochs": res.epochs, "eigenvalues": res.eigenvalues}, tables={"dynamics": table},
                   figures=figs, key="dyn_export")
