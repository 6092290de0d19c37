"""TMS page (spec §3): represented features, the β importance-rescaled flattened eNTK
spectrum with its cliffs, the eigenvector x feature heatmap (a β slider redraws both in
a fragment), and the paper's three configurations side by side."""
import threading
import time

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from entk_core.families.tms import analysis as T
from entk_core.families.tms import REPRESENTED_THRESHOLD, feature_norms
from entk_core.figures import spectrum_figure
from entk_core.families.run import Run, list_runs
from entk_core.store.runs import runs_root
from pages._shared import show_link_messages, guarded, load_model, selection

FAMILY = "tms"
PAPER = [(10, 0.3, "dense"), (10, 0.9, "sparse, high superposition"), (40, 0.9, "dense")]
PAPER_COUNTS = {(10, 0.3): 10, (10, 0.9): 21, (40, 0.9): 42}
BETA_STEP = 0.05
BETA_GRID = [round(i * BETA_STEP, 2) for i in range(int(round(1 / BETA_STEP)) + 1)]


def paper_name(m: int, S: float, seed: int = 0) -> str:
    return f"tms-m{m}-s{S}-seed{seed}"


st.header("Toy Models of Superposition")




def _select_run(name: str) -> None:  # a button callback: runs before the sidebar widget
    st.session_state["run"] = name
    st.session_state.pop("epoch", None)


def _tms_runs() -> dict[str, Run]:
    return {n: r for n, r in list_runs(runs_root()) if isinstance(r, Run) and r.family.name == FAMILY and r.epochs}


@st.cache_resource(show_spinner=False)
def _warmups() -> dict:
    return {"started": set(), "lock": threading.Lock()}


def _warm_beta_grid(run: Run, epoch: int, top: int, model, around: float) -> None:
    """Precompute every slider position of this checkpoint in the background, nearest to
    ``around`` first (cached on disk), so later slider moves are cache hits."""
    reg, key = _warmups(), (str(run.path), run.checkpoint_sha(epoch), top)
    with reg["lock"]:
        if key in reg["started"]:
            return
        reg["started"].add(key)

    def work() -> None:
        for b in sorted(BETA_GRID, key=lambda b: abs(b - around)):
            try:
                T.analyse(run, epoch, beta=b, top=top, model=model)
            except Exception:  # noqa: BLE001 - best effort; the foreground reports errors
                return

    threading.Thread(target=work, name=f"tms-warm-{run.name}", daemon=True).start()


def heatmap_figure(H: np.ndarray, *, title: str, height: int = 460, best: np.ndarray | None = None) -> go.Figure:
    """Feature (rows) x eigenvector (columns) heatmap of column-normalised |cos|."""
    n, k = H.shape
    fig = go.Figure(go.Heatmap(
        z=H, x=np.arange(k), y=np.arange(n), colorscale="Viridis", zmin=0, zmax=1,
        colorbar={"title": {"text": "|cos|"}, "thickness": 12},
        hovertemplate="eigenvector %{x}<br>feature %{y}<br>|cos| %{z:.3f}<extra></extra>",
    ))
    if best is not None:
        fig.add_trace(go.Scatter(x=np.arange(k), y=best, mode="markers", name="best feature",
                                 marker={"size": 3, "color": "#EF553B"}, hoverinfo="skip", showlegend=False))
    fig.update_layout(title={"text": title}, xaxis_title="eigenvector index", yaxis_title="feature (importance order)",
                      yaxis={"autorange": "reversed"}, height=height, margin={"l": 60, "r": 20, "t": 60, "b": 50})
    return fig


def _spectrum_fig(res: T.TMSSpectrum, represented: int, n: int, *, title: str, log: bool, height: int = 460):
    refs = {f"{represented} represented": represented - 0.5, f"n = {n}": n - 0.5}
    fig = spectrum_figure(res.eigenvalues, res.cliffs, title=title, log=log, reference_lines=refs)
    fig.update_layout(height=height)
    return fig


def _cliff_text(res: T.TMSSpectrum) -> str:
    s = res.sharpest
    return "no sharp cliff" if s is None else f"sharpest cliff {s.start}–{s.end} (size {s.size}, drop ×{s.ratio:.2f})"


# -------------------------------------------------------------- training offer
def _train_paper_runs(missing: list[tuple[int, float]]) -> None:
    from entk_core.families.base import get_family
    from entk_core.workflows.training import train

    fam = get_family(FAMILY)
    bar = st.progress(0.0, text="Training the paper's TMS runs…")
    with guarded("training failed"):
        for i, (m, S) in enumerate(missing):
            name = paper_name(m, S)

            def progress(done: int, total: int, message: str, i=i, name=name) -> None:
                if done % 50 == 0 or done == total:
                    bar.progress((i + done / total) / len(missing), text=f"{name} ({i + 1}/{len(missing)}): {message}")

            train(fam, fam.Config(m=m, sparsity=S, seed=0), runs_root() / name, progress=progress)
        bar.progress(1.0, text="done")
        st.rerun()  # the sidebar lists the new runs


def _offer_paper_training(runs: dict[str, Run], key: str) -> None:
    missing = [(m, S) for m, S, _ in PAPER if paper_name(m, S) not in runs]
    if not missing:
        return
    names = ", ".join(f"`{paper_name(m, S)}`" for m, S in missing)
    st.markdown(f"Train the paper's configurations {names} (n = 50, I = 0.8, 500 points, 5,000 full-batch Adam "
                "steps, seed 0): 15–30 s each on 2 CPU cores.")
    if st.button(f"Train {len(missing)} TMS run{'s' if len(missing) > 1 else ''}", key=key, type="primary"):
        _train_paper_runs(missing)
    st.caption("Or from a terminal: " + " ; ".join(
        f"`python -m entk_core train tms --m {m} --sparsity {S} --seed 0 --out runs/{paper_name(m, S)}`"
        for m, S in missing))


# --------------------------------------------------------------- selected run
@st.fragment
def beta_view(run: Run, epoch: int, represented: int, top: int, log: bool) -> None:
    """The β slider and everything it drives; reruns alone when β changes."""
    beta = st.slider("Importance rescaling β (class rows scaled by I_c^{β/2})", 0.0, 1.0, 0.3, BETA_STEP,
                     key="tms_beta", help="β = 0: the plain flattened eNTK; β = 1: D^{1/2} K D^{1/2}, the principled "
                                          "choice; the paper's heatmaps use β = 1 and β = 0.3")
    t0 = time.perf_counter()
    with guarded("cannot compute the spectrum"):
        with st.spinner("Computing the β-rescaled spectrum…"):
            res = T.analyse(run, epoch, beta=beta, top=top, model=load_model(run, epoch))
        t1 = time.perf_counter()
        n = res.heatmap.shape[0]
        c1, c2 = st.columns(2)
        c1.plotly_chart(_spectrum_fig(res, represented, n, log=log,
                                      title=f"Flattened eNTK spectrum, β = {beta:g} (epoch {epoch})"),
                        width="stretch", key="tms_spec_chart")
        c2.plotly_chart(heatmap_figure(res.heatmap, best=res.best_feature,
                                       title=f"Eigenvector × feature |cos| (column-normalised), β = {beta:g}"),
                        width="stretch", key="tms_heatmap")
        upto = min(n, len(res.eigenvalues))
        dt = time.perf_counter() - t0
        st.session_state["tms_fragment_s"] = dt
        st.caption(
            f"{_cliff_text(res)} · eigenvectors 0..{upto - 1} matching feature i: {res.in_order()}/{upto} · "
            f"mean max |cos| {res.max_cosine[:upto].mean():.3f} · red dots: each eigenvector's best feature · "
            f"β update {1000 * dt:.0f} ms (spectrum + heatmap {1000 * (t1 - t0):.0f} ms, "
            f"{'cached' if res.meta.get('cache') == 'hit' else 'computed'}; P = {res.meta.get('P')})")
        _warm_beta_grid(run, epoch, top, load_model(run, epoch), around=beta)


run, epoch = selection()
show_link_messages()
tms_runs = _tms_runs()

if run is None or run.family.name != FAMILY:
    if run is None:
        st.info("No runs yet. This page analyses Toy Models of Superposition (`tms`) runs.")
    else:
        st.info(f"The selected run `{run.name}` is a {run.family.title} (`{run.family.name}`); this page analyses "
                "Toy Models of Superposition (`tms`) runs.")
    if tms_runs:
        st.markdown("TMS runs in the runs folder:")
        cols = st.columns(min(4, len(tms_runs)))
        for i, name in enumerate(tms_runs):
            cols[i % len(cols)].button(f"Open {name}", key=f"tms_open_{name}", on_click=_select_run, args=(name,))
    _offer_paper_training(tms_runs, key="tms_train_top")
else:
    cfg = run.config
    with guarded("cannot load the checkpoint"):
        model = load_model(run, epoch)
        norms = feature_norms(model.W)
        represented = int((norms >= REPRESENTED_THRESHOLD).sum())
        loss = run.metrics_at(epoch).get("train_loss")
        m1, m2, m3, m4, m5 = st.columns(5)
        m1.metric("Represented features", f"{represented} / {cfg.n}",
                  help=f"features with ‖W_i‖² = (WᵀW)_ii ≥ {REPRESENTED_THRESHOLD} at this checkpoint (spec §3.4)")
        m2.metric("Hidden size m", cfg.m)
        m3.metric("Sparsity S", f"{cfg.sparsity:g}")
        m4.metric("Epoch", epoch)
        m5.metric("Train loss", "–" if loss is None else f"{loss:.3g}")

        c1, c2 = st.columns([2, 3])
        top = int(c1.number_input("Eigenvalues (k)", min_value=10, max_value=300, value=run.family.default_top,
                                  step=10, key="tms_top"))
        log = c2.toggle("Log scale", value=True, key="tms_log")
        beta_view(run, epoch, represented, top, log)

        with st.expander("Feature norms ‖W_i‖²"):
            fig = go.Figure(go.Bar(x=np.arange(cfg.n), y=norms,
                                   marker_color=["#00CC96" if v >= REPRESENTED_THRESHOLD else "#636EFA" for v in norms],
                                   hovertemplate="feature %{x}<br>‖W_i‖² = %{y:.3f}<extra></extra>"))
            fig.add_hline(y=REPRESENTED_THRESHOLD, line={"dash": "dot", "color": "#888"},
                          annotation_text=f"{REPRESENTED_THRESHOLD}")
            fig.update_layout(xaxis_title="feature (importance order)", yaxis_title="‖W_i‖²", height=300,
                              margin={"l": 60, "r": 20, "t": 30, "b": 50})
            st.plotly_chart(fig, width="stretch", key="tms_norms")


# ------------------------------------------------------------- side by side
st.subheader("The paper's three configurations")
st.caption("n = 50 features, importance I_i = 0.8^i, seed 0: (m, S) = (10, 0.3) dense, (10, 0.9) sparse (high "
           "superposition), (40, 0.9) dense. Paper: 10, 21 and 42 represented features; at β = 0 the dense "
           "models' spectra drop after index 49 (n = 50), and at β = 0.3 the eigenvectors of (10, 0.3) match "
           "the features in importance order.")


@st.fragment
def paper_view(runs: dict[str, Run]) -> None:
    present = [(m, S, label) for m, S, label in PAPER if paper_name(m, S) in runs]
    if not present:
        return
    c1, c2 = st.columns([3, 2])
    beta = c1.segmented_control("β", [0.0, 0.3, 1.0], default=0.3, key="tms_paper_beta",
                                format_func=lambda b: f"β = {b:g}") or 0.0
    log = c2.toggle("Log scale", value=True, key="tms_paper_log")
    cols = st.columns(len(present))
    for col, (m, S, label) in zip(cols, present):
        run_ = runs[paper_name(m, S)]
        with col, guarded(f"{run_.name}"):
            ep = run_.epochs[-1]
            with st.spinner(f"{run_.name}…"):
                model_ = load_model(run_, ep)
                res = T.analyse(run_, ep, beta=beta, model=model_)
            rep = int((feature_norms(model_.W) >= REPRESENTED_THRESHOLD).sum())
            st.markdown(f"**m = {m}, S = {S}** ({label}) · `{run_.name}`")
            st.metric("Represented features", f"{rep}", delta=f"{rep - PAPER_COUNTS[(m, S)]:+d} vs paper's "
                      f"{PAPER_COUNTS[(m, S)]}", delta_color="off")
            st.plotly_chart(_spectrum_fig(res, rep, res.heatmap.shape[0], log=log, height=330,
                                          title=f"spectrum, β = {beta:g}"), width="stretch", key=f"tms_p_spec_{m}_{S}")
            st.plotly_chart(heatmap_figure(res.heatmap, height=330, title=f"heatmap, β = {beta:g}"),
                            width="stretch", key=f"tms_p_heat_{m}_{S}")
            upto = min(res.heatmap.shape[0], len(res.eigenvalues))
            st.caption(f"{_cliff_text(res)} · in order: {res.in_order()}/{upto}")


with guarded("cannot show the paper's configurations"):
    paper_view(tms_runs)
    if run is not None and run.family.name == FAMILY:
        _offer_paper_training(tms_runs, key="tms_train_bottom")
