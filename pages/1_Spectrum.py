"""Spectrum page: the eNTK eigenvalue spectrum of the selected checkpoint, cliffs marked."""
import streamlit as st

from entk_core.workflows import analysis
from entk_core.figures import spectrum_figure
from pages._shared import ProgressBar, fmt_pct, guarded, load_model, require_run

st.header("eNTK spectrum")
run, epoch = require_run()
fam = run.family

groups = analysis.kernel_groups(run)
c1, c2, c3, c4 = st.columns([2, 2, 2, 2])
group = c1.selectbox("Layer group", groups, key="spec_group",
                     help="full = all parameters; otherwise the parameters of one layer (module path)")
reductions = list(analysis.REDUCTIONS)
reduction = c2.selectbox("Reduction", reductions, index=reductions.index(fam.default_reduction), key="spec_reduction",
                         help="trace: mean over classes of K[:,:,c,c]; mean: mean over all class pairs; "
                              "flat: the class-major flattened (N·C)² kernel")
n = analysis.kernel_size(run, reduction)
top = c3.number_input("Eigenvalues (k)", min_value=1, max_value=min(n, 2000), value=min(fam.default_top, n), step=10,
                      key=f"spec_top_{n}", help=f"at most n = {n}, the kernel's size")
log = c4.toggle("Log scale", value=True, key="spec_log")

metrics = run.metrics_at(epoch)
m1, m2, m3 = st.columns(3)
m1.metric("Epoch", epoch)
m2.metric("Train accuracy", fmt_pct(metrics.get("train_acc")))
m3.metric("Test accuracy", fmt_pct(metrics.get("test_acc")))

with guarded("cannot compute the spectrum"):
    with ProgressBar("Computing the eNTK and its spectrum…") as bar:
        model = load_model(run, epoch)
        res = analysis.spectrum(run, epoch, group=group, reduction=reduction, top=int(top), model=model,
                                progress=bar)
    title = f"{fam.title}: {group} eNTK ({reduction}), epoch {epoch}"
    st.plotly_chart(spectrum_figure(res.eigenvalues, res.cliffs, title=title, log=log), key="spec_chart")
    if res.cliffs:
        st.markdown("**Detected cliffs** (a block of eigenvalues ended by a sharp drop; rule in `entk_core/engine/spectra.py`)")
        st.dataframe(
            [{"cliff": i + 1, "start": c.start, "end": c.end, "size": c.size, "drop ratio": round(c.ratio, 3)}
             for i, c in enumerate(res.cliffs)],
            hide_index=True, width="content",
        )
    else:
        st.caption("No sharp cliff detected in the top eigenvalues.")
    t = res.meta["timing"]
    st.caption(f"n = {res.meta['n']} · kernel {t['kernel_s'] or 0:.2f} s · eigendecomposition {t['eig_s'] or 0:.2f} s · "
               f"{'served from the cache' if res.meta['cache'] == 'hit' else 'computed now and cached'}")
