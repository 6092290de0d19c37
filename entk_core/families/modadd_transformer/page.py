"""The Transformer family's own page (spec §5), a Streamlit page script declared by
:attr:`entk_core.families.modadd_transformer.ModAddTransformerFamily.pages`: key
frequencies of the token embedding, layerwise eNTK spectra (click an eigenvalue for its
eigenvector over the (a, b) pairs), the overlap of the top modes with the key-frequency
families beside the PCA and random baselines, and that overlap over training against the
accuracy curves."""
import streamlit as st

from entk_core.engine.measures import family_bases
from entk_core.families.modadd_transformer import ModAddTransformerFamily
from entk_core.families.modadd_transformer import analysis as T
from entk_core.figures import key_frequency_figure, overlap_figure
from entk_core.ui import (Phase, cache_caption, export_buttons, fmt_pct, group_name, groups_of, guarded,
                          kernel_size_of, load_model, long_call, long_calls, plain, runs_of_family, select_run_button,
                          selection, spectrum_explorer, stop, timed, train_runs, url_int, url_multiselect,
                          url_selectbox, url_toggle, vector_figures, viewer_mode)
from entk_core.workflows import alignment, analysis, baselines, views
from entk_core.workflows.estimates import pca_over_training_seconds, spectrum_seconds, sweep_seconds
from entk_core.workflows.services import Services

DEFAULT_NAME = "modadd-transformer-p29-seed2"

st.header("1-layer Transformer on modular addition")
run, epoch = selection()
if run is None or not isinstance(run.family, ModAddTransformerFamily):
    others = list(runs_of_family(ModAddTransformerFamily))
    if run is None:
        st.info("No runs yet. This page analyses a 1-layer Transformer (`modadd-transformer`) run.")
    else:
        st.info("This view is not available for this family: " + plain(
            f"{run.name} is a {run.family.title} run; this page analyses the 1-layer Transformer "
            "(modadd-transformer): its seed-dependent key frequencies and the eNTK modes aligned with them."))
    for name in others:
        select_run_button(name, key=f"open_{name}")
    if viewer_mode():  # a visitor trains nothing
        stop()
    st.markdown(f"Train the paper's Transformer (p = 29, seed 2, 4,000 epochs, a checkpoint every 20) into "
                f"`{DEFAULT_NAME}`: a few minutes on 2 CPU cores. An interrupted training resumes where it stopped.")
    if st.button("Train modadd-transformer (seed 2)", key="train_transformer", type="primary"):
        train_runs([DEFAULT_NAME], select=DEFAULT_NAME)
    st.caption(f"Or from a terminal: `python -m entk_core train modadd-transformer --p 29 --seed 2 "
               f"--out runs/{DEFAULT_NAME}`")
    stop()

fam = run.family
metrics = run.metrics_at(epoch)
key_freqs = None
with guarded("cannot read the key frequencies"):
    key_freqs = T.run_key_frequencies(run)
if not key_freqs:
    stop()
blocks = T.mode_blocks(len(key_freqs))
figures = {}
with guarded("cannot show the key frequencies"):
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Epoch", epoch)
    m2.metric("Train accuracy", fmt_pct(metrics.get("train_acc")))
    m3.metric("Test accuracy", fmt_pct(metrics.get("test_acc")))
    m4.metric("Key frequencies", ", ".join(map(str, key_freqs)))
    st.subheader("Key frequencies of the token embedding")
    model = load_model(run, epoch)
    kf = T.key_frequency_report(run, epoch, model=model)
    kfig = key_frequency_figure(kf["frequencies"], kf["power"], key_freqs, epoch=epoch)
    st.plotly_chart(kfig, width="stretch", key="tf_kf_chart")
    figures["key_frequencies"] = kfig
    st.caption(f"Key frequencies of the final model: {key_freqs} (found automatically; rule in "
               f"`entk_core/families/features.py`). At this checkpoint the rule gives {kf['key_frequencies']} "
               f"({kf['rule']}, drop ×{kf['ratio']:.1f}).")

# ------------------------------------------------------------------- spectra
st.subheader("Layerwise eNTK spectra (all-class mean reduction)")
groups = groups_of(run)
c1, c2, c3 = st.columns([3, 2, 2])
group = url_selectbox("group", "Layer group", groups, "unembed" if "unembed" in groups else groups[0], key="tf_group",
                      where=c1, format_func=lambda g: group_name(run, g),
                      help="full = all parameters; attn.OV = attn.W_O + attn.W_V")
n_kernel = kernel_size_of(run, "mean")
kmax = min(n_kernel, 400)
top = url_int("top", f"Eigenvalues k ({blocks[1][1]}–{kmax})", blocks[1][1], kmax,
              max(min(fam.default_top, n_kernel), blocks[1][1]), key="tf_top", where=c2, step=10)
log = url_toggle("log", "Log scale", True, key="tf_log", where=c3)
res = None
with guarded("cannot compute the spectrum"):
    kw = {"epoch": epoch, "group": group, "reduction": "mean", "top": int(top)}
    res, dt = timed(long_call, f"tfspectrum|{run.path}|{sorted(kw.items())}", f"The {group} spectrum",
                    analysis.spectrum, run, target="entk_core.workflows.analysis:spectrum", kwargs=kw,
                    estimate_s=lambda: spectrum_seconds(run, epoch, group=group, reduction="mean", top=int(top)))
    if res is None:
        stop()
    refs = {f"{b} ({e})": e - 0.5 for b, (_, e) in zip(("2F+1", "4F+1"), blocks)}
    idx, sfig, vfigs = spectrum_explorer(
        run, key="tf", eigenvalues=res.eigenvalues, cliffs=res.cliffs, labels=res.labels, log=log,
        reference_lines=refs,
        title=f"{group} eNTK (mean over class pairs), epoch {epoch}", n_vectors=res.eigenvectors.shape[1],
        vector_of=lambda i: vector_figures(run, res.eigenvectors[:, i], title=f"eigenvector {i} over the (a, b) pairs"))
    figures.update({"spectrum": sfig, **{f"vector_{idx}_{j}": f for j, f in enumerate(vfigs)}})
    cl = ", ".join(f"{c.start}–{c.end} (size {c.size}, drop ×{c.ratio:.2f})" for c in res.cliffs) or "none"
    st.caption(f"Detected cliffs: {cl}. Dotted lines: the ends of the mode blocks 0:{blocks[0][1]} and "
               f"{blocks[1][0]}:{blocks[1][1]} used below · "
               + cache_caption(res.meta, dt, views.computed_seconds(res)))

# ------------------------------------------------------------ overlap table
st.subheader(f"Overlap of the top {group} modes with the key-frequency families")
tables = {}
with guarded("cannot compute the overlaps"):
    rep = T.align_report(run, epoch, services=Services(), group=group, key_freqs=key_freqs, top=top, model=model)
    fams = run.family.feature_families(run.config, run.data, key_freqs=key_freqs)
    bases = family_bases({f: fams[f] for f in T.ALIGN_FAMILIES})
    rows = views.block_rows(rep, alignment.pca_for(run, epoch, model=model), bases)
    st.dataframe(rows, hide_index=True, width="stretch")
    tables["overlaps"] = rows
    st.caption("overlap = ‖QᵀF‖²_F (sum of squared cosines of the principal angles) between the modes and the "
               "mean-centred family at the key frequencies; PCA: the same number of top principal directions of the "
               "residual stream at the last position; random: a random subspace of that size. Paper (seed 2, "
               "k = 1, 12, unembed): 3.96/4 for modes 0:5 vs sum, 3.94/4 for 5:9 vs axis_sum.")

# ------------------------------------------------------- overlap over training
st.subheader("Overlap over training")
c1, c2 = st.columns([3, 2])
sel_fams = url_multiselect("families", "Families", list(T.ALIGN_FAMILIES), [T.EXPECTED[0]], key="tf_fams", where=c1)
block = url_selectbox("window", "Modes", [0, 1], 0, key="tf_block", where=c2,
                      format_func=lambda b: f"{blocks[b][0]}:{blocks[b][1]}")
with guarded("cannot compute the overlap over training"):
    spec = T.sweep_spec(run, group)
    n_ck = len(run.epochs)
    # one action, one estimate covering both phases: the sweep, then the PCA baseline (every size and family)
    out = long_calls(f"tfsweep|{run.path}|{alignment.spec_dict(spec)}", "The overlap over training", run, [
        Phase(f"the {group} spectrum at each of {n_ck} checkpoints", alignment.spec_sweep,
              "entk_core.workflows.alignment:spec_sweep", {"spec": alignment.spec_dict(spec)},
              estimate_s=lambda: sweep_seconds(run, spec)),
        Phase(f"the PCA baseline at each of {n_ck} checkpoints", baselines.pca_profile,
              "entk_core.workflows.baselines:pca_profile", {}, estimate_s=lambda: pca_over_training_seconds(run))])
    sw, profile = out if out is not None else (None, None)
    if sw is not None and sel_fams:
        size = blocks[block][1] - blocks[block][0]
        pca = profile.overlaps([size], list(sel_fams))
        cv = views.overlap_curves(sw, block, sel_fams, pca=pca, with_dims=False, peak_of=sel_fams[0])
        m = run.metrics
        ofig = overlap_figure(cv.epochs, cv.curves, derivatives=cv.derivatives, dashed=cv.dashed, current=epoch,
                              markers=cv.markers, accuracy={k: m[k] for k in ("train_acc", "test_acc") if m.get(k)},
                              accuracy_epochs=m.get("epoch"),
                              title=f"Modes {blocks[block][0]}:{blocks[block][1]} of the {group} eNTK vs the "
                                    f"families at k = {key_freqs}")
        st.plotly_chart(ofig, width="stretch", key="tf_ot_chart")
        figures["overlap_over_training"] = ofig
        ms = T.accuracy_milestones(run)
        st.caption("Grokking onset (rule in `entk_core/engine/measures.py`) "
                   + ("none" if sw.onset_epoch is None else f"{sw.onset_epoch:g}") + "; test accuracy stays ≥ "
                   + ", ".join(f"{k} from epoch {v}" for k, v in ms.items() if v is not None) + ".")
        tables["overlap_over_training"] = views.curve_rows(cv)
if res is not None:
    export_buttons(f"{run.name}_e{epoch}_{group}", arrays={"eigenvalues": res.eigenvalues,
                                                           "eigenvectors": res.eigenvectors},
                   tables=tables, figures=figures, key="tf_export")
