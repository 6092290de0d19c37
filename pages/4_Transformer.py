"""Transformer page (spec §5): key frequencies of the token embedding, layerwise eNTK
spectra, the overlap of the top unembedding modes with the key-frequency families at the
selected checkpoint, and that overlap over training against the accuracy curves."""

import plotly.graph_objects as go
import streamlit as st

from entk_core.workflows import analysis
from entk_core.families.modadd_transformer import analysis as T
from entk_core.figures import spectrum_figure
from entk_core.families.run import Run, list_runs
from entk_core.store.runs import runs_root
from entk_core.workflows.services import Services
from pages._shared import fmt_pct, guarded, load_model, selection, show_link_messages

DEFAULT_NAME = "modadd-transformer-p29-seed2"
BLOCK_LABELS = {0: "block 1 (constant + sum)", 1: "block 2 (axis_sum)"}

st.header("1-layer Transformer on modular addition")




def _rounded(values, digits: int) -> list:
    return [None if v is None else round(float(v), digits) for v in values]


def _select_run(name: str) -> None:  # a button callback: runs before the sidebar widget
    st.session_state["run"] = name
    st.session_state.pop("epoch", None)


def _offer_training(existing: list[str]) -> None:
    if existing:
        st.markdown("Transformer runs in the runs folder:")
        for name in existing:
            st.button(f"Open {name}", key=f"open_{name}", on_click=_select_run, args=(name,))
    fam_cfg = T.FAMILY
    st.markdown(
        f"Train the paper's Transformer (`{fam_cfg}`, p = 29, seed 2, 4,000 epochs, a checkpoint every 20) "
        f"into `{DEFAULT_NAME}`: a few minutes on 2 CPU cores. An interrupted training resumes where it stopped."
    )
    if st.button("Train modadd-transformer (seed 2)", key="train_transformer", type="primary"):
        from entk_core.families.base import get_family
        from entk_core.workflows.training import train

        fam = get_family(fam_cfg)
        bar = st.progress(0.0, text="Training the Transformer…")

        def progress(done: int, total: int, message: str) -> None:
            bar.progress(done / total, text=message)

        with guarded("training failed"):
            run = train(fam, fam.Config(seed=2), runs_root() / DEFAULT_NAME, progress=progress)
            bar.progress(1.0, text="done")
            st.success(f"Trained {run.name}: key frequencies {run.summary.get('key_frequencies')}.")
            st.button(f"Open {run.name}", key="open_trained", on_click=_select_run, args=(run.name,))
    st.caption(f"Or from a terminal: `python -m entk_core train {fam_cfg} --p 29 --seed 2 --out runs/{DEFAULT_NAME}`")


run, epoch = selection()
show_link_messages()
if run is None or run.family.name != T.FAMILY:
    others = [n for n, r in list_runs(runs_root()) if isinstance(r, Run) and r.family.name == T.FAMILY and r.epochs]
    if run is None:
        st.info("No runs yet. This page analyses a `modadd-transformer` run.")
    else:
        st.info(f"The selected run `{run.name}` is a {run.family.title} (`{run.family.name}`); this page analyses "
                "the 1-layer Transformer (`modadd-transformer`): its seed-dependent key frequencies and the "
                "eNTK modes aligned with them.")
    _offer_training(others)
    st.stop()

fam = run.family
p = run.config.p
metrics = run.metrics_at(epoch)
key_freqs = None
with guarded("cannot read the key frequencies"):
    key_freqs = T.run_key_frequencies(run)
if not key_freqs:
    st.stop()
blocks = T.mode_blocks(len(key_freqs))
with guarded("cannot show the key frequencies"):
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Epoch", epoch)
    m2.metric("Train accuracy", fmt_pct(metrics.get("train_acc")))
    m3.metric("Test accuracy", fmt_pct(metrics.get("test_acc")))
    m4.metric("Key frequencies", ", ".join(map(str, key_freqs)))

    # ------------------------------------------------------------ key frequencies
    st.subheader("Key frequencies of the token embedding")
    model = load_model(run, epoch)
    kf = T.key_frequency_report(run, epoch, model=model)
    colors = ["#EF553B" if k in key_freqs else "#636EFA" for k in kf["frequencies"]]
    fig = go.Figure(go.Bar(x=kf["frequencies"], y=kf["power"], marker_color=colors,
                           hovertemplate="k = %{x}<br>power %{y:.4g}<extra></extra>"))
    fig.update_layout(title={"text": f"Fourier power of W_E[:p] at epoch {epoch} (red: the run's key frequencies)"},
                      xaxis_title="frequency k", yaxis_title="mean |FFT|² over d_model", height=340,
                      xaxis={"dtick": 1}, margin={"l": 60, "r": 20, "t": 60, "b": 50})
    st.plotly_chart(fig, width="stretch", key="tf_kf_chart")
    st.caption(
        f"Key frequencies of the final model: {key_freqs} (found automatically; rule in `entk_core/families/features.py`). "
        f"At this checkpoint the rule gives {kf['key_frequencies']} ({kf['rule']}, drop ×{kf['ratio']:.1f})."
    )

# ------------------------------------------------------------------- spectra
st.subheader("Layerwise eNTK spectra (all-class mean reduction)")
groups = analysis.kernel_groups(run)
c1, c2, c3 = st.columns([3, 2, 2])
group = c1.selectbox("Layer group", groups, index=groups.index("unembed"), key="tf_group",
                     help="full = all parameters; attn.OV = attn.W_O + attn.W_V")
n_kernel = analysis.kernel_size(run, "mean")
top = int(c2.number_input("Eigenvalues (k)", min_value=1, max_value=min(n_kernel, 400), value=min(fam.default_top, n_kernel),
                          step=10, key=f"tf_top_{n_kernel}"))
log = c3.toggle("Log scale", value=True, key="tf_log")
res = None
with guarded("cannot compute the spectrum"):
    with st.spinner("Computing the eNTK and its spectrum…"):
        res = analysis.spectrum(run, epoch, group=group, reduction="mean", top=top, model=load_model(run, epoch))
    refs = {f"{b}": e for b, (_, e) in zip(("2F+1", "4F+1"), blocks)}
    st.plotly_chart(spectrum_figure(res.eigenvalues, res.cliffs, log=log, reference_lines={k: v - 0.5 for k, v in refs.items()},
                                    title=f"{group} eNTK (mean over class pairs), epoch {epoch}"),
                    width="stretch", key="tf_spec_chart")
    cl = ", ".join(f"{c.start}–{c.end} (size {c.size}, drop ×{c.ratio:.2f})" for c in res.cliffs) or "none"
    st.caption(f"Detected cliffs: {cl}. Dotted lines: the ends of the mode blocks 0:{blocks[0][1]} and "
               f"{blocks[1][0]}:{blocks[1][1]} used below.")

# ------------------------------------------------------------ overlap table
st.subheader(f"Overlap of the top {group} modes with the key-frequency families")
with guarded("cannot compute the overlaps"):
    rep = T.align_report(run, epoch, services=Services(), group=group, key_freqs=key_freqs, top=max(top, blocks[1][1]),
                         model=load_model(run, epoch))
    rows = []
    for b in rep["blocks"]:
        for name, f in b["families"].items():
            rows.append({
                "modes": f"{b['modes'][0]}:{b['modes'][1]}", "family": name,
                "expected": "✓" if name == b["expected"] else "",
                "overlap": round(f["overlap"], 4), "of": f["dim"], "%": round(f["percent"], 1),
                "singular values": ", ".join(f"{s:.4f}" for s in f["singular_values"]),
            })
    st.dataframe(rows, hide_index=True, width="stretch")
    st.caption("overlap = ‖QᵀF‖²_F (sum of squared singular values; cosines of the principal angles) between "
               "the eigenvectors and the mean-centred family at the key frequencies. Paper (seed 2, k = 1, 12, "
               "unembed): 3.96/4 for modes 0:5 vs sum, 3.94/4 for 5:9 vs axis_sum.")

# ------------------------------------------------------- overlap over training
st.subheader("Overlap over training")
c1, c2, c3 = st.columns([2, 2, 2])
fam_name = c1.selectbox("Family", list(T.ALIGN_FAMILIES), key="tf_ot_family")
block = c2.selectbox("Modes", [0, 1], format_func=lambda b: f"{blocks[b][0]}:{blocks[b][1]}", key="tf_ot_block")
epochs_all = run.epochs
want = (run.name, run.manifest["checkpoints"][-1].get("sha256"), group)  # identity only; loads are guarded
done = st.session_state.setdefault("tf_ot_done", set())
go_ = c3.button("Compute", key="tf_ot_go", type="primary", disabled=want in done,
                help=f"one {group} eNTK spectrum per checkpoint ({len(epochs_all)}), all families and both mode "
                     "blocks at once; cached after the first time")
tab = None
if go_ or want in done:
    bar = st.progress(0.0, text="eNTK spectra over training…") if want not in done else None

    def progress(n: int, total: int, message: str) -> None:
        if bar is not None:
            bar.progress(n / max(total, 1), text=f"{message} ({n}/{total})")

    with guarded("cannot compute the overlap over training"):
        tab = T.overlap_over_training(run, services=Services(), group=group, family=fam_name, block=block, progress=progress)
        done.add(want)
    if bar is not None:
        bar.empty()
if tab is None:
    st.caption(f"Press Compute for the overlap of modes {blocks[block][0]}:{blocks[block][1]} of the {group} eNTK "
               f"with `{fam_name}` at every checkpoint.")
else:
    with guarded("cannot draw the overlap over training"):
        step = (tab["epoch"][1] - tab["epoch"][0]) if len(tab["epoch"]) > 1 else 1
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=tab["epoch"], y=tab["percent"], name=f"% overlap with {fam_name}",
                                 line={"color": "#1f2d3d", "width": 2}))
        fig.add_trace(go.Scatter(x=tab["epoch"], y=tab["d_percent"], name=f"d(% overlap) per {step} epochs",
                                 line={"color": "#AB63FA", "dash": "dot"}))
        m = run.metrics
        for k, color in (("test_acc", "#EF553B"), ("train_acc", "#00CC96")):
            fig.add_trace(go.Scatter(x=m["epoch"], y=[None if v is None else 100 * v for v in m[k]],
                                     name=k.replace("_", " ") + " (%)", line={"color": color, "width": 1}))
        fig.add_vline(x=epoch, line={"color": "#EF553B", "width": 2}, annotation_text=f"epoch {epoch}",
                      annotation_position="top right")
        if tab["grokking_onset"] is not None:
            fig.add_vline(x=tab["grokking_onset"], line={"color": "#555", "dash": "dash", "width": 1},
                          annotation_text="onset", annotation_position="bottom right")
        peak = tab["derivative_peak_epoch"]
        if peak is not None:
            fig.add_vline(x=peak, line={"color": "#AB63FA", "dash": "dash", "width": 1},
                          annotation_text="derivative peak", annotation_position="bottom left")
        fig.update_layout(title={"text": f"Modes {tab['modes'][0]}:{tab['modes'][1]} of the {group} eNTK vs "
                                         f"{fam_name} at k = {tab['key_frequencies']}"},
                          xaxis_title="epoch", yaxis_title="%", height=440, legend={"orientation": "h", "y": -0.2},
                          margin={"l": 60, "r": 20, "t": 60, "b": 50})
        st.plotly_chart(fig, width="stretch", key="tf_ot_chart")
        ms = tab["accuracy_milestones"]
        onset = "none" if tab["grokking_onset"] is None else f"{tab['grokking_onset']:g}"
        st.caption(f"Derivative peak at epoch {'–' if peak is None else f'{peak:g}'}; grokking onset (rule in "
                   f"`entk_core/engine/measures.py`) {onset}; test accuracy stays ≥ "
                   + ", ".join(f"{k} from epoch {v}" for k, v in ms.items() if v is not None) + ".")
        with st.expander("Per-checkpoint table"):
            st.dataframe(
                {"epoch": tab["epoch"], "overlap": _rounded(tab["overlap"], 4), "%": _rounded(tab["percent"], 2),
                 "d%": _rounded(tab["d_percent"], 3),
                 "train acc": _rounded(tab["train_acc"], 4), "test acc": _rounded(tab["test_acc"], 4)},
                hide_index=True, width="stretch",
            )
