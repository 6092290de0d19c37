"""The TMS family's own page (spec §3), a Streamlit page script declared by
:attr:`entk_core.families.tms.TMSFamily.pages`: represented features, the β
importance-rescaled flattened eNTK spectrum with its cliffs, the eigenvector × feature
heatmap, one eigenvector over the features (click an eigenvalue), and the paper's three
configurations side by side. One β control drives every view (a fragment redraws them when
it moves)."""
import streamlit as st

from entk_core.families.run import Run
from entk_core.families.tms import REPRESENTED_THRESHOLD, TMSFamily, feature_norms, represented_features
from entk_core.families.tms import analysis as T
from entk_core.figures import feature_norms_figure, heatmap_figure, spectrum_figure
from entk_core.ui import (cache_caption, export_buttons, guarded, load_model, plain, runs_of_family,
                          select_run_button, selection, spectrum_explorer, sync_url, timed, train_runs, url_float,
                          url_int, url_toggle, vector_figures, viewer_mode)

PAPER = [(10, 0.3, "dense"), (10, 0.9, "sparse, high superposition"), (40, 0.9, "dense")]
PAPER_COUNTS = {(10, 0.3): 10, (10, 0.9): 21, (40, 0.9): 42}
BETA_STEP = 0.05


def paper_name(m: int, S: float, seed: int = 0) -> str:
    return f"tms-m{m}-s{S}-seed{seed}"


def _offer_paper_training(runs: dict[str, Run], key: str, *, open_first: bool) -> None:
    missing = [(m, S) for m, S, _ in PAPER if paper_name(m, S) not in runs]
    if not missing or viewer_mode():  # a visitor trains nothing
        return
    names = ", ".join(f"`{paper_name(m, S)}`" for m, S in missing)
    st.markdown(f"Train the paper's configurations {names} (n = 50, I = 0.8, 500 points, 5,000 full-batch Adam "
                "steps, seed 0): 15–30 s each on 2 CPU cores.")
    if st.button(f"Train {len(missing)} TMS run{'s' if len(missing) > 1 else ''}", key=key, type="primary"):
        # from another family's run: open the first trained run (the page then shows it at once)
        names = [paper_name(m, S) for m, S in missing]
        train_runs(names, select=names[0] if open_first else None)
    st.caption("Or from a terminal: " + " ; ".join(
        f"`python -m entk_core train tms --m {m} --sparsity {S} --seed 0 --out runs/{paper_name(m, S)}`"
        for m, S in missing))


def _cliff_text(res: T.TMSSpectrum) -> str:
    s = res.sharpest
    return "no sharp cliff" if s is None else f"sharpest cliff {s.start}–{s.end} (size {s.size}, drop ×{s.ratio:.2f})"


st.header("Toy Models of Superposition")
run, epoch = selection()
tms_runs = runs_of_family(TMSFamily)
is_tms = run is not None and isinstance(run.family, TMSFamily)
if not is_tms:
    if run is None:
        st.info("No runs yet. This page analyses Toy Models of Superposition runs.")
    else:
        st.info("This view is not available for this family: " + plain(f"{run.name} is a {run.family.title} run; "
                                                                         "this page analyses Toy Models of "
                                                                         "Superposition runs."))
    if tms_runs:
        st.markdown("TMS runs in the runs folder:")
        cols = st.columns(min(4, len(tms_runs)))
        for i, name in enumerate(tms_runs):
            select_run_button(name, key=f"tms_open_{name}", where=cols[i % len(cols)])
    _offer_paper_training(tms_runs, key="tms_train_top", open_first=True)

top = 80
log = True
if is_tms:
    cfg = run.config
    c1, c2 = st.columns([2, 3])
    top = url_int("top", "Eigenvalues k (10–300)", 10, 300, run.family.default_top, key="tms_top", where=c1, step=10)
    log = url_toggle("log", "Log scale", True, key="tms_log", where=c2)


@st.fragment
def beta_views(run: Run | None, epoch: int | None, top: int, log: bool, runs: dict[str, Run]) -> None:
    """The page's one β control and everything it drives; reruns alone when β changes."""
    beta = url_float("beta", "Importance rescaling β (class rows scaled by I_c^{β/2})", 0.0, 1.0, 0.3,
                     key="tms_beta", step=BETA_STEP,
                     help="β = 0: the plain flattened eNTK; β = 1: D^{1/2} K D^{1/2}, the principled choice; the "
                          "paper's heatmaps use β = 1 and β = 0.3")
    if run is not None:
        with guarded("cannot compute the spectrum"):
            model = load_model(run, epoch)
            represented = represented_features(model.W)
            cfg = run.config
            m1, m2, m3, m4, m5 = st.columns(5)
            m1.metric("Represented features", f"{represented} / {cfg.n}",
                      help=f"features with ‖W_i‖² = (WᵀW)_ii ≥ {REPRESENTED_THRESHOLD} at this checkpoint (spec §3.4)")
            m2.metric("Hidden size m", cfg.m)
            m3.metric("Sparsity S", f"{cfg.sparsity:g}")
            m4.metric("Epoch", epoch)
            loss = run.metrics_at(epoch).get("train_loss")
            m5.metric("Train loss", "–" if loss is None else f"{loss:.3g}")
            res, dt = timed(T.analyse, run, epoch, beta=beta, top=top, model=model)
            n = res.heatmap.shape[0]
            refs = {f"{represented} represented": represented - 0.5, f"n = {n}": n - 0.5}
            hfig = heatmap_figure(res.heatmap, best=res.best_feature,
                                  title=f"Eigenvector × feature |cos| (column-normalised), β = {beta:g}")
            idx, sfig, vfigs = spectrum_explorer(
                run, key="tms", eigenvalues=res.eigenvalues, cliffs=res.cliffs, labels=None, log=log,
                title=f"Flattened eNTK spectrum, β = {beta:g} (epoch {epoch})", reference_lines=refs,
                n_vectors=len(res.eigenvalues), default_vector=0,
                vector_of=lambda i: vector_figures(run, None, feature_values=res.heatmap[:, i], value_name="|cos|",
                                                   title=f"eigenvector {i} over the features (|cos| with each "
                                                         f"feature, column-normalised)"))
            st.plotly_chart(hfig, width="stretch", key="tms_heatmap")
            upto = min(n, len(res.eigenvalues))
            st.caption(
                f"{_cliff_text(res)} · eigenvectors 0..{upto - 1} matching feature i: {res.in_order()}/{upto} · "
                f"mean max |cos| {res.max_cosine[:upto].mean():.3f} · red dots: each eigenvector's best feature · "
                f"{cache_caption(res.meta, dt, sum(res.meta.get(k) or 0 for k in ('gram_s', 'eig_s', 'heatmap_s')))}"
                f" · P = {res.meta.get('P')}")
            with st.expander("Feature norms ‖W_i‖²"):
                nfig = feature_norms_figure(feature_norms(model.W), REPRESENTED_THRESHOLD)
                st.plotly_chart(nfig, width="stretch", key="tms_norms")
            export_buttons(f"{run.name}_e{epoch}_beta{beta:g}", arrays={"eigenvalues": res.eigenvalues,
                                                                        "heatmap": res.heatmap},
                           figures={"spectrum": sfig, "heatmap": hfig, "norms": nfig}, key="tms_export")

    st.subheader("The paper's three configurations")
    st.caption("n = 50 features, importance I_i = 0.8^i, seed 0: (m, S) = (10, 0.3) dense, (10, 0.9) sparse (high "
               "superposition), (40, 0.9) dense. Paper: 10, 21 and 42 represented features; at β = 0 the dense "
               "models' spectra drop after index 49 (n = 50), and at β = 0.3 the eigenvectors of (10, 0.3) match "
               "the features in importance order. Same β as above.")
    present = [(m, S, label) for m, S, label in PAPER if paper_name(m, S) in runs]
    cols = st.columns(len(present)) if present else []
    for col, (m, S, label) in zip(cols, present):
        run_ = runs[paper_name(m, S)]
        with col, guarded(f"{run_.name}"):
            ep = run_.epochs[-1]
            model_ = load_model(run_, ep)
            res = T.analyse(run_, ep, beta=beta, model=model_)
            rep = represented_features(model_.W)
            st.markdown(f"**m = {m}, S = {S}** ({label}) · `{run_.name}`")
            st.metric("Represented features", f"{rep}", delta=f"{rep - PAPER_COUNTS[(m, S)]:+d} vs paper's "
                      f"{PAPER_COUNTS[(m, S)]}", delta_color="off")
            n_ = res.heatmap.shape[0]
            f = spectrum_figure(res.eigenvalues, res.cliffs, log=log, height=330, title=f"spectrum, β = {beta:g}",
                                reference_lines={f"{rep} represented": rep - 0.5, f"n = {n_}": n_ - 0.5},
                                width_px=300)  # a third of the page: the legend wraps
            st.plotly_chart(f, width="stretch", key=f"tms_p_spec_{m}_{S}")
            st.plotly_chart(heatmap_figure(res.heatmap, height=330, title=f"heatmap, β = {beta:g}"),
                            width="stretch", key=f"tms_p_heat_{m}_{S}")
            st.caption(f"{_cliff_text(res)} · in order: {res.in_order()}/{min(n_, len(res.eigenvalues))}")
    sync_url()


beta_views(run if is_tms else None, epoch, top, log, tms_runs)
if is_tms:
    _offer_paper_training(tms_runs, key="tms_train_bottom", open_first=False)
