"""Spectrum page: the eNTK eigenvalue spectrum of the selected checkpoint, its cliffs, one
eigenvector in its family's form, a comparison with another checkpoint or run, exports."""
import streamlit as st

from entk_core.figures import principal_angles_figure
from entk_core.ui import (Phase, cache_caption, compare_control, export_buttons, fmt_pct, group_name, groups_of, guarded,
                          kernel_size_of, long_calls, phases_key, plain, plain_html, require_run, spectrum_explorer, stop, timed,
                          url_float, url_int, url_selectbox, url_toggle, vector_figures)
from entk_core.workflows import analysis, views
from entk_core.workflows.alignment import compare_spectra
from entk_core.workflows.estimates import spectrum_seconds

st.header("eNTK spectrum")
with st.expander("New here? What this page shows", expanded=not st.query_params):
    st.markdown(
        "The **empirical neural tangent kernel** (eNTK) of a trained network compares two inputs by how "
        "similarly a small change of the weights moves the network's outputs on them: "
        "K(x, x′) = J(x) J(x′)ᵀ, with J the Jacobian of the outputs with respect to the parameters. Its top "
        "eigenvectors are the directions in input space the network can change most easily, and for the "
        "paper's models they line up with the features the network uses "
        "(J. Lin, *Feature Identification via the Empirical NTK*, arXiv 2510.00468).\n\n"
        "A **cliff** is a block of eigenvalues of similar size followed by a sharp drop: its size counts the "
        "dimensions of one feature family (for the p = 29 MLP, 56 = 2 × 28 Fourier modes of a and b, then 56 "
        "of a+b and a−b). The **constant mode** (the eigenvector that is the same on every input) is shown "
        "apart and not numbered, so *cliff 1* is always the first feature block.\n\n"
        "Next: **Grokking** follows the cliffs' alignment with the Fourier features over training; "
        "**Alignment** shows which Fourier mode each direction of a cliff is; **TMS** and **Transformer** "
        "reproduce the paper's other two models. Click an eigenvalue below to see its eigenvector."
    )

run, epoch = require_run()

# everything this page does runs inside its guard: a run whose config or checkpoints cannot be
# used is one line, never a traceback
with guarded("cannot draw the spectrum"):
    fam = run.family

    groups = groups_of(run)
    c1, c2, c3, c4, c5 = st.columns([3, 2, 2, 2, 2])
    group = url_selectbox("group", "Layer group", groups, analysis.FULL, key="spec_group", where=c1,
                          format_func=lambda g: group_name(run, g),
                          help="full = all parameters; otherwise the parameters of one layer (module path)")
    reductions = list(analysis.REDUCTIONS)
    reduction = url_selectbox("reduction", "Reduction", reductions, fam.default_reduction, key="spec_reduction", where=c2,
                              help="trace: mean over classes of K[:,:,c,c]; mean: mean over all class pairs; "
                                   "flat: the class-major flattened (N·C)² kernel")
    n = kernel_size_of(run, reduction)
    kmax = min(n, 2000)
    top = url_int("top", f"Eigenvalues k (1–{kmax})", 1, kmax, min(fam.default_top, n), key="spec_top", where=c3, step=10,
                  help=f"between 1 and {kmax} (the kernel has n = {n} rows)")
    log = url_toggle("log", "Log scale", True, key="spec_log", where=c4)
    beta = None
    if fam.offers("beta"):
        beta = url_float("beta", "Importance β", 0.0, 1.0, 0.0, key="spec_beta", step=0.05, where=c5,
                         help="class rows scaled by I_c^(β/2) (importance rescaling)")
        beta = beta if beta > 0 else None
    other = compare_control(run, epoch, key="spec_compare", where=c5 if beta is None else st)

    metrics = run.metrics_at(epoch)
    m1, m2, m3 = st.columns(3)
    m1.metric("Epoch", epoch)
    if fam.offers("accuracy"):
        m2.metric("Train accuracy", fmt_pct(metrics.get("train_acc")))
        m3.metric("Test accuracy", fmt_pct(metrics.get("test_acc")))
    else:
        m2.metric("Train loss", "–" if metrics.get("train_loss") is None else f"{metrics['train_loss']:.3g}")

    kw = {"epoch": epoch, "group": group, "reduction": reduction, "top": int(top), "beta": beta}
    phases = [Phase("the eNTK spectrum", analysis.spectrum, "entk_core.workflows.analysis:spectrum", kw,
                    estimate_s=lambda: spectrum_seconds(run, epoch, group=group, reduction=reduction, top=int(top),
                                                        beta=beta))]
    if other is not None and other[0].family.name != run.family.name:
        st.warning("compare: pick a run of the same family")
    elif other is not None:  # the compared checkpoint's spectrum: the same action, one estimate for both
        run2, epoch2, lab2 = other
        kw2 = {**kw, "epoch": epoch2}
        phases.append(Phase(f"the spectrum at {lab2}", analysis.spectrum, "entk_core.workflows.analysis:spectrum",
                            kw2, estimate_s=lambda: spectrum_seconds(run2, epoch2, group=group, reduction=reduction,
                                                                     top=int(top), beta=beta), run=run2))
    (out, dt) = timed(long_calls, phases_key("spectrum", run, phases),
                      "The spectrum" if len(phases) > 1 else "the eNTK spectrum", run, phases)
    if out is None:
        stop()
    res, res2 = out[0], (out[1] if len(out) > 1 else None)
    labels = res.labels
    extra = None if res2 is None else {plain_html(other[2]): res2.eigenvalues}  # a legend name: Plotly renders HTML
    V = res.eigenvectors
    title = f"{fam.title}: {group} eNTK ({reduction}{', β = %g' % beta if beta else ''}), epoch {epoch}"
    idx, fig, vfigs = spectrum_explorer(
        run, key="spec", eigenvalues=res.eigenvalues, cliffs=res.cliffs, labels=labels, title=title, log=log,
        n_vectors=V.shape[1], extra=extra,
        default_vector=views.first_feature_window(res),
        vector_of=lambda i: vector_figures(run, V[:, i], title=f"eigenvector {i} (λ = {res.eigenvalues[i]:.4g})"),
    )
    st.caption(plain(f"n = {res.meta['n']} · {cache_caption(res.meta, dt, views.computed_seconds(res))}"))
    rows = views.spectrum_blocks(res)
    if rows:
        st.markdown("**Detected blocks** (a block of eigenvalues ended by a sharp drop; the constant mode apart; "
                    "rule in `entk_core/engine/spectra.py`)")
        st.dataframe(rows, hide_index=True, width="content")
    else:
        st.caption("No sharp cliff detected in the top eigenvalues.")
    figures = {"spectrum": fig, **{f"eigenvector_{idx}_{j}": f for j, f in enumerate(vfigs)}}
    if res2 is not None:
        if res2.eigenvectors.shape[0] == V.shape[0]:
            cmp = compare_spectra(res, res2, min(top, 100))
            st.subheader(f"Top-{cmp['k']} eigenspaces: epoch {epoch} vs " + plain(other[2]))
            st.caption(f"overlap ‖QₐᵀQ_b‖²/k = {cmp['overlap']:.3f} (1: the same subspace) · largest principal "
                       f"angle {cmp['angles_deg'].max():.1f}°")
            afig = principal_angles_figure(cmp["angles_deg"], title=f"Principal angles, top {cmp['k']}: "
                                                                    f"epoch {epoch} vs {plain_html(other[2])}")
            st.plotly_chart(afig, key="spec_angles", width="stretch")
            figures["principal_angles"] = afig
        else:
            st.info("The compared kernels have different rows: no principal angles.")
    export_buttons(f"{run.name}_e{epoch}_{group}_{reduction}",
                   arrays={"eigenvalues": res.eigenvalues, "eigenvectors": V},
                   tables={"blocks": rows}, figures=figures, key="spec_export")
