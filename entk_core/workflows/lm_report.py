"""The language-model report: every method's table, the winner of each row, Table 3 and
what each eNTK direction does (spec §6.5 protocol, with the baselines of
:mod:`entk_core.families.causal_lm.baselines`).

Methods (JSON keys), all evaluated the same way -- per label the best direction and sign by
train average precision, test AP / AUROC / precision at quota / enrichment:

* ``entk``: the top ``k`` eigenvectors' per-context scores;
* ``pca``: the top ``k`` principal components of the layer's last-token activations;
* ``ica``: ``k`` FastICA components of the same activations;
* ``sae``: the ``k`` highest-energy latents of a TopK SAE trained on the layer's
  activations at every token of the probe windows; ``sae_full``: its whole dictionary
  (shown beside the others; not in the same-budget contest);
* ``random``: the mean over 20 draws of ``k`` random unit directions.

A row's ``winner`` is the same-budget method (``entk``, ``pca``, ``ica``, ``sae``,
``random``) with the highest test AUROC (``"tie"`` when several share it).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..families.causal_lm import evaluation as ev
from ..families.causal_lm.baselines import RANDOM_DRAWS, ica_scores, random_scores
from ..families.causal_lm.probes import ProbeSet
from ..families.causal_lm.readouts import tag_concentration

__all__ = [
    "METHODS",
    "BUDGET_METHODS",
    "METHOD_TITLES",
    "LAYER_METHODS",
    "layer_tasks",
    "layer_methods",
    "evaluate_layer",
    "winner",
    "method_table",
    "table3",
    "directions",
    "direction_rows",
    "table_rows",
    "finite",
    "format_seconds",
    "sae_summary",
]

METHODS = ("entk", "pca", "ica", "sae", "sae_full", "random")
BUDGET_METHODS = ("entk", "pca", "ica", "sae", "random")
LAYER_METHODS = ("entk", "pca", "ica", "random")
"""Methods evaluated at every layer of a sweep (the SAE is trained for the detailed layer)."""
METHOD_TITLES = {"entk": "eNTK", "pca": "PCA", "ica": "ICA", "sae": "SAE", "sae_full": "SAE (full)",
                 "random": "random"}


def format_seconds(s: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``."""
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def sae_summary(sae: dict[str, Any]) -> str:
    """One line on a report's SAE baseline (``report["methods"]["sae"]``), for the CLI and the
    page: ``TopK k = 32, 4096 latents, 65,536 token activations, held-out FVU 0.244,
    converged after 10 epochs; 'SAE' = its 25 highest-energy latents``."""
    opt = sae.get("options") or {}
    fvu = sae.get("fvu")
    return (f"TopK k = {opt.get('k')}, {sae['dictionary']} latents, {sae.get('tokens') or 0:,} token activations, "
            f"held-out FVU {'–' if fvu is None else f'{fvu:.3f}'}, "
            + ("converged" if sae.get("converged") else f"not converged ({sae.get('stopped')})")
            + f" after {sae.get('epochs')} epochs; 'SAE' = its {sae['directions']} highest-energy latents")


def finite(x: Any) -> Any:
    """``x`` with every non-finite float replaced by ``None`` (strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def layer_tasks(ps: ProbeSet, min_count: int) -> dict[str, Any]:
    """The POS targets and the morphology targets after filter (a)."""
    upos = ps.upos
    morph = ev.morph_tasks([lab["morph"] for lab in ps.labels], upos, min_count=min_count)
    return {"pos": ev.pos_tasks(upos, ps.tags), "morph": morph}


def layer_methods(entry: dict[str, np.ndarray], top: int, seed: int, sae: dict[str, np.ndarray] | None = None,
                  methods: Sequence[str] = METHODS) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every method's scores for one layer's cached unit (and SAE entry), and their facts."""
    scores: dict[str, np.ndarray] = {}
    facts: dict[str, Any] = {}
    H = np.asarray(entry["hidden_last"], dtype=np.float64) if "hidden_last" in entry else None
    if "entk" in methods:
        scores["entk"] = np.asarray(entry["entk_scores"])
        facts["entk"] = {"directions": int(scores["entk"].shape[0])}
    if "pca" in methods:
        scores["pca"] = np.asarray(entry["pca_scores"])
        facts["pca"] = {"directions": int(scores["pca"].shape[0])}
    if H is not None and "ica" in methods:
        ica = ica_scores(H, top, seed=seed)
        scores["ica"] = ica.pop("scores")
        facts["ica"] = {"directions": int(scores["ica"].shape[0]), **ica}
    if H is not None and "random" in methods:
        scores["random"] = random_scores(H, top, RANDOM_DRAWS, seed=seed)
        facts["random"] = {"directions": top, "draws": RANDOM_DRAWS}
    if sae is not None and ("sae" in methods or "sae_full" in methods):
        full = np.asarray(sae["sae_scores"], dtype=np.float64)
        energy = np.asarray(sae["sae_energy"])
        pick = np.sort(np.argsort(-energy, kind="stable")[:top])
        meta = dict(getattr(sae, "meta", {}))
        base = {k: meta.get(k) for k in ("fvu", "train_fvu", "converged", "stopped", "epochs", "tokens",
                                         "dead_fraction", "seconds", "options")}
        if "sae" in methods:
            scores["sae"] = full[pick]
            facts["sae"] = {"directions": int(len(pick)), "latents": [int(i) for i in pick],
                            "dictionary": int(full.shape[0]), **base}
        if "sae_full" in methods:
            scores["sae_full"] = full
            facts["sae_full"] = {"directions": int(full.shape[0]), "dictionary": int(full.shape[0]), **base}
    return scores, facts


def winner(row: dict[str, Any], methods: Sequence[str] = BUDGET_METHODS, metric: str = "auroc") -> str | None:
    """The method with the highest ``metric`` among ``methods`` in ``row`` (``"tie"`` when
    several share it; ``None`` when none has it)."""
    vals = {m: row[m][metric] for m in methods if m in row and row[m].get(metric) is not None}
    if not vals:
        return None
    best = max(vals.values())
    top = [m for m, v in vals.items() if v == best]
    return top[0] if len(top) == 1 else "tie"


def evaluate_layer(scores: dict[str, np.ndarray], ps: ProbeSet, tasks: dict[str, Any],
                   split_seed: int = 0) -> dict[str, Any]:
    """POS and morphology tables of one layer: ``{"pos": rows, "morph": rows, "macro": {...}}``;
    every row and macro row carries its ``winner``."""
    train, test = ev.stratified_split(ps.upos, split_seed)
    out: dict[str, Any] = {"split": {"train": int(len(train)), "test": int(len(test)), "seed": split_seed}}
    macro: dict[str, Any] = {}
    for kind, t in (("pos", tasks["pos"]), ("morph", tasks["morph"]["tasks"])):
        rows = ev.evaluate_tasks(scores, t, train, test)
        for r in rows:
            r["winner"] = winner(r)
        out[kind] = rows
        macro[kind] = {m: ev.macro(rows, m) for m in scores}
        macro[kind]["winner"] = winner(macro[kind])
    out["macro"] = macro
    return out


def method_table(report: dict[str, Any], kind: str, metric: str = "auroc",
                 methods: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The rows a table shows for ``kind`` (``"pos"``/``"morph"``): per label its test
    positives, each method's ``metric`` and its chosen direction/sign, and the winner;
    then the ``MACRO`` row."""
    methods = [m for m in (methods or METHODS) if m in report.get("methods", {"entk": 1, "pca": 1})]
    out = []
    for r in report[kind]:
        row = {"label": r["label"], "n_pos_test": r["n_pos_test"], "winner": r.get("winner") or winner(r)}
        for m in methods:
            x = r.get(m, {})
            row[m] = x.get(metric)
            row[f"{m}_dir"] = None if x.get("direction") is None else f"{x['direction']}{x.get('sign') or ''}"
        out.append(row)
    mac = report["macro"][kind]
    row = {"label": "MACRO", "n_pos_test": None, "winner": mac.get("winner") or winner(mac)}
    for m in methods:
        row[m] = mac.get(m, {}).get(metric)
        row[f"{m}_dir"] = None
    out.append(row)
    return out


def table3(per_layer: dict[int, dict[str, Any]], methods: Sequence[str] = LAYER_METHODS) -> dict[str, Any]:
    """Per label, the max test AUROC over layers for each method (and where), plus macros
    and the winner of each row."""
    out: dict[str, Any] = {}
    for kind in ("pos", "morph"):
        labels = [r["label"] for r in next(iter(per_layer.values()))[kind]] if per_layer else []
        rows = []
        for i, lab in enumerate(labels):
            row: dict[str, Any] = {"label": lab}
            for m in methods:
                best = (None, None)
                for L, res in per_layer.items():
                    a = res[kind][i].get(m, {}).get("auroc")
                    if a is not None and (best[0] is None or a > best[0]):
                        best = (a, L)
                row[m] = {"auroc": best[0], "layer": best[1]}
            row["winner"] = winner(row, methods)
            rows.append(row)
        mac: dict[str, Any] = {}
        for m in methods:
            vals = [r[m]["auroc"] for r in rows if r[m]["auroc"] is not None]
            mac[m] = {"auroc": float(np.mean(vals)) if vals else None}
        mac["winner"] = winner(mac, methods)
        out[kind] = {"rows": rows, "macro": mac}
    return out


def directions(entry: dict[str, np.ndarray], ps: ProbeSet, tokenizer: Any, n_tokens: int = 12,
               rows: dict[str, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """Per eNTK direction: eigenvalue, rank-1 share, ``promoted_tokens`` and
    ``suppressed_tokens`` (``[token, logit effect]``, see :mod:`~entk_core.families.causal_lm.readouts`),
    the tag concentration of its scores and the labels it was chosen for."""
    scores = np.asarray(entry["entk_scores"])
    conc = tag_concentration(scores, ps.upos)
    out = []
    have = "promoted_ids" in entry

    def tok(i: int) -> str:
        t = tokenizer.decode([i])
        return tokenizer.convert_ids_to_tokens(i) if "\ufffd" in t else t  # a byte piece: its raw token

    def toks(ids, vals):
        return [[tok(int(i)), float(v)] for i, v in zip(ids[:n_tokens], vals[:n_tokens])]

    for i in range(scores.shape[0]):
        d: dict[str, Any] = {"index": i, "eigenvalue": float(entry["eigenvalues"][i]),
                             "share": float(entry["entk_share"][i]), "concentration": conc[i]}
        if have:
            d["promoted_tokens"] = toks(entry["promoted_ids"][i], entry["promoted_effect"][i])
            d["suppressed_tokens"] = toks(entry["suppressed_ids"][i], entry["suppressed_effect"][i])
        if rows is not None:
            d["chosen_for"] = [{"label": r["label"], "sign": r["entk"]["sign"], "auroc": r["entk"]["auroc"]}
                               for kind in ("pos", "morph") for r in rows[kind] if r["entk"]["direction"] == i]
        out.append(d)
    return out


def _tokens_text(tokens: Sequence[Sequence[Any]], n: int) -> str:
    return "  ".join(repr(t)[1:-1] if str(t).strip() == t and t else repr(t) for t, _ in list(tokens)[:n])


def direction_rows(report: dict[str, Any], n_tokens: int = 6) -> list[dict[str, Any]]:
    """One row per eNTK direction for a table: eigenvalue, rank-1 share, the tag that
    dominates its top and bottom scores (with its share), its most promoted and suppressed
    next tokens (``'tok'`` quoted where blank-padded) and the labels it was chosen for."""
    out = []
    for d in report.get("directions", []):
        c = d["concentration"]
        pos, neg = c["positive"], c["negative"]
        out.append({
            "direction": d["index"], "eigenvalue": d["eigenvalue"], "share": d["share"],
            "top scores": f"{pos['tag']} {pos['share']:.0%}", "bottom scores": f"{neg['tag']} {neg['share']:.0%}",
            "concentration": c["share"],
            "promotes": _tokens_text(d.get("promoted_tokens", []), n_tokens),
            "suppresses": _tokens_text(d.get("suppressed_tokens", []), n_tokens),
            "chosen for": ", ".join(f"{x['label']}{x['sign'] or ''}" for x in d.get("chosen_for", [])),
        })
    return out


def table_rows(report: dict[str, Any], kind: str, metric: str = "auroc") -> list[dict[str, Any]]:
    """The rows a dashboard table shows for ``kind``: label, test positives (text; blank
    on the MACRO row), one column per method (display title), the winner among the
    same-budget methods, then the full SAE dictionary (not in the contest) and the chosen
    eNTK direction. Missing values are ``None`` (drawn blank), never the text "None"."""
    methods = [m for m in METHODS if m in report.get("methods", {"entk": 1, "pca": 1})]
    budget = [m for m in methods if m != "sae_full"]
    out = []
    for r in method_table(report, kind, metric, methods):
        row: dict[str, Any] = {"label": r["label"],
                               "test n+": "" if r["n_pos_test"] is None else str(r["n_pos_test"])}
        for m in budget:
            row[METHOD_TITLES[m]] = r[m]
        w = r["winner"]
        row["winner"] = "" if not w else ("tie" if w == "tie" else "★ " + METHOD_TITLES.get(w, w))
        if "sae_full" in methods:
            row[METHOD_TITLES["sae_full"]] = r["sae_full"]
        row["eNTK dir"] = r.get("entk_dir") or ""
        out.append(row)
    return out
