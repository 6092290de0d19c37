"""The LM evaluation protocol on hand-made cases, against scikit-learn and by hand."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from entk_core.families.causal_lm import evaluation as ev


def test_metrics_match_sklearn_and_hand_values():
    y = np.array([1, 0, 1, 0, 0, 1, 0, 0], bool)
    s = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.05, 0.0])
    m = ev._metrics(s, y)
    assert m["ap"] == pytest.approx(average_precision_score(y, s))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s))
    # quota 3: top-3 scores are 0.9 (pos), 0.8 (neg), 0.7 (pos) -> 2/3; prevalence 3/8
    assert m["prec_at_quota"] == pytest.approx(2 / 3)
    assert m["enrichment"] == pytest.approx((2 / 3) / (3 / 8))
    # by hand: AUROC = fraction of (pos, neg) pairs ordered right = 13/15
    assert m["auroc"] == pytest.approx(13 / 15)
    assert ev._metrics(s, np.zeros(8, bool))["auroc"] is None


def test_direction_and_sign_are_chosen_on_train_only():
    rng = np.random.default_rng(0)
    N = 40
    y = np.zeros(N, bool)
    y[::3] = True
    train, test = np.arange(0, N, 2), np.arange(1, N, 2)
    scores = rng.normal(size=(3, N))
    scores[1] = np.where(y, -2.0, 0.0) + 0.1 * rng.normal(size=N)     # direction 1, negative sign, separates
    scores[2, test] = np.where(y[test], 5.0, -5.0)                     # perfect on test only: must not be picked
    r = ev.evaluate_direction_set(scores, y, train, test)
    assert (r["direction"], r["sign"]) == (1, "-")
    # brute force over directions x signs with sklearn on the train split
    best = max(((average_precision_score(y[train], sg * scores[i, train]), i, sg)
                for i in range(3) for sg in (1, -1)), key=lambda t: t[0])
    assert r["train_ap"] == pytest.approx(best[0]) and best[1:] == (1, -1)
    assert r["ap"] == pytest.approx(average_precision_score(y[test], -scores[1, test]))
    assert r["auroc"] == pytest.approx(roc_auc_score(y[test], -scores[1, test]))
    assert r["n_pos_test"] == int(y[test].sum())


def test_stratified_split_is_half_per_group_and_seeded():
    groups = ["A"] * 10 + ["B"] * 7 + ["C"] * 4
    tr, te = ev.stratified_split(groups, seed=0)
    g = np.array(groups)
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(21))
    assert [int((g[tr] == k).sum()) for k in "ABC"] == [5, 3, 2]
    assert np.array_equal(tr, ev.stratified_split(groups, seed=0)[0])
    assert not np.array_equal(tr, ev.stratified_split(groups, seed=1)[0])


def test_morph_filter_a_drops_rare_and_pos_redundant_labels():
    upos = ["PRON"] * 40 + ["NOUN"] * 40 + ["VERB"] * 20
    morph = ([{"PronType": "Prs", "Number": "Sing"}] * 39 + [{}]) + \
            ([{"Number": "Sing"}] * 30 + [{"Number": "Plur"}] * 10) + \
            ([{"VerbForm": "Fin", "Mood": "Ind"}] * 12 + [{"VerbForm": "Inf"}] * 8)
    out = ev.morph_tasks(morph, upos, min_count=10)
    # PronType=Prs: 39/39 PRON (purity 1) covering 39/40 PRON (0.975) -> redundant
    assert "PronType=Prs" in out["dropped"] and "POS-redundant" in out["dropped"]["PronType=Prs"]
    assert "VerbForm=Inf" in out["dropped"] and "support 8" in out["dropped"]["VerbForm=Inf"]
    # Number=Sing spans PRON and NOUN: kept; VerbForm=Fin is 12/12 VERB but covers 12/20 VERB: kept
    assert list(out["tasks"]) == ["Number=Sing", "Mood=Ind", "VerbForm=Fin", "Number=Plur"]
    assert out["tasks"]["Number=Sing"].sum() == 69
    assert ["Mood=Ind", "VerbForm=Fin"] in out["duplicates"]


def test_example_scores_recover_a_rank_one_eigenvector_and_pca():
    rng = np.random.default_rng(1)
    N, d = 12, 5
    u, v = rng.normal(size=N), rng.normal(size=d)
    E = np.outer(u, v)
    vec = (E / np.linalg.norm(E)).reshape(-1, 1)          # context-major (N, d) flattening
    out = ev.example_scores(vec, N, d)
    s = out["scores"][0]
    assert abs(abs(np.corrcoef(s, u)[0, 1]) - 1) < 1e-12
    assert out["share"][0] == pytest.approx(1.0)
    assert s[np.argmax(np.abs(s))] > 0                    # sign convention
    H = rng.normal(size=(30, 4)) @ np.diag([5, 2, 1, 0.5])
    p = ev.pca_scores(H, 2)
    Hc = H - H.mean(0)
    assert np.allclose(np.abs(p["scores"]), np.abs(Hc @ np.linalg.svd(Hc)[2][:2].T).T)
    assert p["explained"][0] > p["explained"][1]
    with pytest.raises(ValueError):
        ev.example_scores(vec, N + 1, d)


def test_macro_is_a_nan_mean():
    rows = [{"label": "a", "m": {"ap": 0.5, "auroc": 0.6, "prec_at_quota": 0.1, "enrichment": 2.0}},
            {"label": "b", "m": {"ap": None, "auroc": 0.8, "prec_at_quota": None, "enrichment": None}}]
    m = ev.macro(rows, "m")
    assert m["ap"] == 0.5 and m["auroc"] == pytest.approx(0.7) and m["n_labels"] == 2


def test_vectorised_average_precision_equals_sklearn_with_ties():
    rng = np.random.default_rng(3)
    for trial in range(60):
        n = int(rng.integers(4, 50))
        y = rng.random(n) < 0.3
        y[0] = True
        S = rng.integers(0, 4, (5, n)).astype(float) if trial % 2 else rng.normal(size=(5, n))
        got = ev.average_precision_many(S, y)
        want = [average_precision_score(y, s) for s in S]
        assert np.allclose(got, want, rtol=1e-12, atol=1e-15), (got, want)
        if not y.all():
            assert [ev.auroc(s, y) for s in S] == pytest.approx([roc_auc_score(y, s) for s in S], rel=1e-12)


def test_random_directions_are_averaged_over_draws_and_winners_marked():
    from entk_core.workflows.lm_report import method_table, winner

    rng = np.random.default_rng(0)
    N = 60
    y = np.zeros(N, bool)
    y[:20] = True
    train, test = np.arange(0, N, 2), np.arange(1, N, 2)
    draws = rng.normal(size=(4, 3, N))
    r = ev.evaluate_random(draws, y, train, test)
    each = [ev.evaluate_direction_set(d, y, train, test) for d in draws]
    assert r["auroc"] == pytest.approx(np.mean([e["auroc"] for e in each]))
    assert r["std"]["auroc"] == pytest.approx(np.std([e["auroc"] for e in each]))
    assert r["direction"] is None and r["draws"] == 4
    good = np.where(y, 1.0, 0.0)[None] + 0.01 * rng.normal(size=(1, N))
    rows = ev.evaluate_tasks({"entk": good, "pca": draws[0], "random": draws}, {"A": y}, train, test)
    assert rows[0]["random"]["draws"] == 4 and rows[0]["entk"]["auroc"] == 1.0
    assert winner(rows[0]) == "entk"
    assert winner({"entk": {"auroc": 0.7}, "pca": {"auroc": 0.7}, "ica": {"auroc": None}}) == "tie"
    rows[0]["winner"] = winner(rows[0])
    report = {"pos": rows, "methods": {"entk": {}, "pca": {}, "random": {}},
              "macro": {"pos": {m: ev.macro(rows, m) for m in ("entk", "pca", "random")} | {"winner": "entk"}}}
    table = method_table(report, "pos")
    assert [t["label"] for t in table] == ["A", "MACRO"]
    assert table[0]["entk"] == 1.0 and table[0]["winner"] == "entk" and table[0]["entk_dir"] == "0+"
    assert "ica" not in table[0] and table[1]["winner"] == "entk"
