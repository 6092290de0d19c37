"""From eigenvectors to per-example directions, the PCA baseline and the evaluation
protocol of spec §6.4-6.5 (math on arrays; scikit-learn's metrics).

* **Per-example scores** (§6.4): eigenvector ``i`` of K̃ (length ``N·d``, context-major,
  see :mod:`.operator`) is reshaped to ``E_i`` ``(N, d)``; its rank-1 SVD
  ``E_i ≈ σ u vᵀ`` gives the signed score ``σ·u`` ``(N,)``. The SVD's sign is fixed so
  that the entry of ``u`` largest in magnitude is positive (the evaluation tries both
  signs anyway). ``share = σ²/‖E_i‖_F²`` says how much of the eigenvector is that one
  direction (the notebook's "majority linear projection" check).
* **PCA baseline** (§6.5): exact PCA (centred SVD, float64) of the matched layer's
  last-token hidden states ``H`` ``(N, d)`` (block ``L``'s output =
  ``hidden_states[L + 1]``); scores = ``U S`` of the top ``k`` components. The author used
  ``torch.pca_lowrank`` (randomised); the exact SVD is its deterministic limit.
* **Split**: stratified by POS, 50/50 (per tag: shuffled with ``numpy`` seed ``seed``,
  the first ``⌊n/2⌋`` to train).
* **Per binary label**: over every direction × both signs, the highest *train* average
  precision chooses one (computed for all candidates at once by
  :func:`average_precision_many`, equal to scikit-learn's ``average_precision_score``,
  as :func:`auroc` is to ``roc_auc_score``;
  the first candidate wins a tie); on test it reports AP, AUROC, precision at quota (quota = the
  number of test positives; the top-quota test examples by score, ties by index) and
  enrichment = precision at quota / prevalence. Macro rows are nan-means over labels.
  A label without positives (or without negatives) in either half has ``None`` metrics.
* **Labels**: one-vs-rest UPOS for the probe set's tags; morphology ``feature=value``
  pairs with support ``>= min_count`` and ``< N``, minus the POS-redundant ones (filter
  (a) of §6.5: purity ``>= 0.9`` *and* coverage ``>= 0.9`` of their dominant POS).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = [
    "example_scores",
    "pca_scores",
    "stratified_split",
    "pos_tasks",
    "morph_tasks",
    "evaluate_direction_set",
    "evaluate_random",
    "evaluate_tasks",
    "average_precision_many",
    "auroc",
    "macro",
    "METRICS",
]

METRICS = ("ap", "auroc", "prec_at_quota", "enrichment")


def example_scores(eigenvectors: np.ndarray, N: int, d: int) -> dict[str, np.ndarray]:
    """Signed per-example scores of eigenvectors ``(N·d, k)`` (context-major rows).

    Returns ``scores`` ``(k, N)``, ``sigma`` ``(k,)``, ``share`` ``(k,)`` (σ² over the
    squared norm) and ``direction`` ``(k, d)`` (the right singular vector ``v``)."""
    V = np.asarray(eigenvectors, dtype=np.float64)
    if V.ndim != 2 or V.shape[0] != N * d:
        raise ValueError(f"eigenvectors must be (N·d, k) = ({N * d}, k), got {V.shape}")
    k = V.shape[1]
    scores = np.zeros((k, N))
    sigma, share, direction = np.zeros(k), np.zeros(k), np.zeros((k, d))
    for i in range(k):
        E = V[:, i].reshape(N, d)
        u, s, vt = np.linalg.svd(E, full_matrices=False)
        u1, v1 = u[:, 0], vt[0]
        if u1[np.argmax(np.abs(u1))] < 0:
            u1, v1 = -u1, -v1
        scores[i], sigma[i], direction[i] = s[0] * u1, s[0], v1
        share[i] = s[0] ** 2 / max(float((s ** 2).sum()), 1e-300)
    return {"scores": scores, "sigma": sigma, "share": share, "direction": direction}


def pca_scores(H: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Top-``k`` PCA scores ``(k, N)`` of ``H`` ``(N, d)`` (centred, exact SVD, float64),
    the explained-variance ratios ``(k,)`` and the components ``(k, d)``. Signs: the largest
    entry in magnitude of each score vector is positive."""
    X = np.asarray(H, dtype=np.float64)
    X = X - X.mean(0, keepdims=True)
    u, s, vt = np.linalg.svd(X, full_matrices=False)
    k = min(k, len(s))
    sc = (u[:, :k] * s[:k]).T
    comp = vt[:k].copy()
    for i in range(k):
        if sc[i][np.argmax(np.abs(sc[i]))] < 0:
            sc[i], comp[i] = -sc[i], -comp[i]
    tot = float((s ** 2).sum()) or 1.0
    return {"scores": sc, "explained": s[:k] ** 2 / tot, "components": comp}


def stratified_split(groups: Sequence[str], seed: int = 0, frac: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices, stratified by ``groups`` (per group ``⌊n·frac⌋`` to train)."""
    groups = np.asarray(list(groups))
    rng = np.random.default_rng(seed)
    train, test = [], []
    for g in sorted(set(groups.tolist())):
        idx = np.flatnonzero(groups == g)
        idx = idx[rng.permutation(len(idx))]
        cut = int(math.floor(len(idx) * frac))
        train.append(idx[:cut])
        test.append(idx[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def pos_tasks(upos: Sequence[str], tags: Sequence[str]) -> dict[str, np.ndarray]:
    """One-vs-rest UPOS targets ``{tag: bool (N,)}``."""
    u = np.asarray(list(upos))
    return {t: u == t for t in tags}


def morph_tasks(morph: Sequence[dict[str, str]], upos: Sequence[str], min_count: int = 30,
                purity: float = 0.9, coverage: float = 0.9) -> dict[str, Any]:
    """Morphology targets after filter (a).

    Returns ``{"tasks": {"Feat=Val": bool (N,)}, "dropped": {label: reason},
    "duplicates": [[a, b], ...] (pairs with identical positives, kept)}``. Labels are
    ordered by support (descending), then name."""
    N = len(morph)
    u = np.asarray(list(upos))
    pairs: dict[str, np.ndarray] = {}
    for n, m in enumerate(morph):
        for f, v in m.items():
            pairs.setdefault(f"{f}={v}", np.zeros(N, bool))[n] = True
    tasks: dict[str, np.ndarray] = {}
    dropped: dict[str, str] = {}
    for lab, y in sorted(pairs.items(), key=lambda kv: (-int(kv[1].sum()), kv[0])):
        sup = int(y.sum())
        if sup < min_count or sup >= N:
            dropped[lab] = f"support {sup} (need {min_count}..{N - 1})"
            continue
        vals, counts = np.unique(u[y], return_counts=True)
        dom = vals[np.argmax(counts)]
        pur = counts.max() / sup
        cov = counts.max() / max(1, int((u == dom).sum()))
        if pur >= purity and cov >= coverage:
            dropped[lab] = f"POS-redundant with {dom} (purity {pur:.2f}, coverage {cov:.2f})"
            continue
        tasks[lab] = y
    names = list(tasks)
    dups = [[a, b] for i, a in enumerate(names) for b in names[i + 1:] if np.array_equal(tasks[a], tasks[b])]
    return {"tasks": tasks, "dropped": dropped, "duplicates": dups}


def auroc(s: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score`` for a binary target:
    the Mann-Whitney statistic with tied scores counted half)."""
    from scipy.stats import rankdata

    y = np.asarray(y, bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    r = rankdata(np.asarray(s, dtype=np.float64))
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _metrics(s: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        return {"ap": None, "auroc": None, "prec_at_quota": None, "enrichment": None}
    order = np.argsort(-s, kind="stable")
    prec = float(y[order[:n_pos]].mean())
    prevalence = n_pos / len(y)
    return {"ap": float(average_precision_many(s[None], y)[0]), "auroc": auroc(s, y),
            "prec_at_quota": prec, "enrichment": prec / prevalence}


def average_precision_many(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Average precision of every row of ``scores`` ``(m, n)`` for the bool target ``y``
    ``(n,)``, as scikit-learn's ``average_precision_score`` computes it (a step-wise sum
    over distinct score thresholds, ties sharing one threshold), vectorised over rows."""
    S = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y, bool)
    n_pos = int(y.sum())
    if S.ndim != 2 or S.shape[1] != y.shape[0]:
        raise ValueError(f"scores must be (m, {y.shape[0]}), got {S.shape}")
    if n_pos == 0:
        return np.full(S.shape[0], np.nan)
    order = np.argsort(-S, axis=1, kind="stable")
    s_sorted = np.take_along_axis(S, order, axis=1)
    y_sorted = y[order]
    tps = np.cumsum(y_sorted, axis=1)
    n = S.shape[1]
    # the end of each tie group: where the next score differs (or the last position)
    end = np.ones_like(s_sorted, dtype=bool)
    end[:, :-1] = s_sorted[:, 1:] != s_sorted[:, :-1]
    pos = np.arange(n)
    last_end = np.where(end, pos, n)
    group_end = np.minimum.accumulate(last_end[:, ::-1], axis=1)[:, ::-1]   # the end of each position's group
    prec_at_end = np.take_along_axis(tps, group_end, axis=1) / (group_end + 1.0)
    return (y_sorted * prec_at_end).sum(1) / n_pos


def evaluate_direction_set(scores: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """Choose the direction and sign with the best train AP, report test metrics.

    Args:
      scores: ``(k, N)`` per-example scores of ``k`` directions.
      y: ``(N,)`` bool target.
    """
    y = np.asarray(y, bool)
    scores = np.asarray(scores, dtype=np.float64)
    ytr, yte = y[train], y[test]
    out: dict[str, Any] = {"n_pos": int(y.sum()), "n_pos_test": int(yte.sum()),
                           "prevalence_test": float(yte.mean()) if len(yte) else None}
    if ytr.sum() == 0 or ytr.sum() == len(ytr) or scores.shape[0] == 0:
        return {**out, "direction": None, "sign": None, "train_ap": None,
                **{m: None for m in METRICS}}
    tr = scores[:, train]
    both = np.empty((2 * tr.shape[0], tr.shape[1]))
    both[0::2], both[1::2] = tr, -tr                    # candidates in order (0,+), (0,-), (1,+), ...
    ap = average_precision_many(both, ytr)
    j = int(np.argmax(ap))
    i, sign = j // 2, (1 if j % 2 == 0 else -1)
    return {**out, "direction": int(i), "sign": "+" if sign > 0 else "-", "train_ap": float(ap[j]),
            **_metrics(sign * scores[i, test], yte)}


def evaluate_random(draws: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """:func:`evaluate_direction_set` for each draw of ``draws`` ``(R, k, N)``, metrics
    averaged over the draws (``direction``/``sign`` are ``None``; ``std`` holds the
    spread of each metric)."""
    rows = [evaluate_direction_set(d, y, train, test) for d in np.asarray(draws)]
    out = {k: rows[0][k] for k in ("n_pos", "n_pos_test", "prevalence_test")}
    mean, std = {}, {}
    for m in METRICS + ("train_ap",):
        vals = [r[m] for r in rows if r[m] is not None]
        mean[m] = float(np.mean(vals)) if vals else None
        std[m] = float(np.std(vals)) if vals else None
    return {**out, "direction": None, "sign": None, **mean, "std": {m: std[m] for m in METRICS},
            "draws": len(rows)}


def evaluate_tasks(methods: dict[str, np.ndarray], tasks: dict[str, np.ndarray], train: np.ndarray,
                   test: np.ndarray) -> list[dict[str, Any]]:
    """One row per label: ``{"label", "n_pos", "n_pos_test", method: {...}, ...}`` for each
    method's ``(k, N)`` scores; a ``(R, k, N)`` array (random draws) is evaluated by
    :func:`evaluate_random`."""
    rows = []
    for lab, y in tasks.items():
        row: dict[str, Any] = {"label": lab}
        for name, sc in methods.items():
            sc = np.asarray(sc)
            r = evaluate_random(sc, y, train, test) if sc.ndim == 3 else evaluate_direction_set(sc, y, train, test)
            row["n_pos"], row["n_pos_test"] = r.pop("n_pos"), r.pop("n_pos_test")
            row["prevalence_test"] = r.pop("prevalence_test")
            row[name] = r
        rows.append(row)
    return rows


def macro(rows: list[dict[str, Any]], method: str) -> dict[str, float | None]:
    """Nan-mean of each metric over the rows (``None`` when no row has it)."""
    out: dict[str, float | None] = {}
    for m in METRICS:
        vals = [r[method][m] for r in rows if r[method][m] is not None and np.isfinite(r[method][m])]
        out[m] = float(np.mean(vals)) if vals else None
    out["n_labels"] = len(rows)
    return out
