"""What the Language model page draws, computed outside it: the five-method table rows (a
winner per row, no "None"), the directions table, the phase estimates, uploads held in
memory, and probe-set labels that are not UD names refused in one line."""
import json
import shutil

import numpy as np
import pytest

import _lm_models as M
from entk_core.families.causal_lm import build_probe_set, load_lm, load_probe_set, read_stories
from entk_core.families.causal_lm.probes import StoriesText
from entk_core.families.causal_lm.sae import SAEOptions
from entk_core.store.cache import ArrayCache
from entk_core.workflows import lm as wlm
from entk_core.workflows import lm_report as rep
from entk_core.workflows.lm_estimates import evaluation_seconds, layer_phases, phases_text, sae_seconds


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmhelp")
    M.save_model_folder(root / "tiny", "gpt2", layers=2, tokenizer=M.build_tokenizer())
    stories = M.write_stories(root / "stories.txt", 150)
    lm = load_lm(root / "tiny")
    ps = build_probe_set(lm, stories, per_tag=5, context=10, agreement=False)
    ps.save(root / "set")
    return root, lm, load_probe_set(root / "set"), stories


def _row(label, n, **auroc):
    return {"label": label, "n_pos_test": n, **{m: {"auroc": a, "direction": 1, "sign": "+"} for m, a in auroc.items()}}


def test_table_rows_have_a_column_per_method_a_winner_and_no_none():
    methods = {m: {} for m in ("entk", "pca", "ica", "sae", "sae_full", "random")}
    rows = [_row("NOUN", 4, entk=0.9, pca=0.7, ica=0.6, sae=0.8, sae_full=0.95, random=0.5),
            _row("VERB", 3, entk=0.6, pca=0.6, ica=None, sae=0.5, sae_full=0.7, random=0.55)]
    for r in rows:
        r["winner"] = rep.winner(r)
    macro = {m: {"auroc": None if m == "ica" else 0.7} for m in methods}
    macro["entk"] = {"auroc": 0.75}
    macro["winner"] = rep.winner(macro)
    report = {"methods": methods, "pos": rows, "macro": {"pos": macro}}
    out = rep.table_rows(report, "pos")
    assert list(out[0]) == ["label", "test n+", "eNTK", "PCA", "ICA", "SAE", "random", "winner", "SAE (full)",
                            "eNTK dir"]
    assert out[0]["winner"] == "★ eNTK"  # SAE (full) is higher but outside the same-budget contest
    assert out[1]["winner"] == "tie" and out[1]["ICA"] is None
    assert out[2]["label"] == "MACRO" and out[2]["test n+"] == "" and out[2]["winner"] == "★ eNTK"
    assert out[0]["test n+"] == "4" and out[0]["eNTK dir"] == "1+"
    assert not any(v == "None" for r in out for v in r.values())


def test_direction_rows_carry_tokens_and_concentration():
    report = {"directions": [{
        "index": 4, "eigenvalue": 2.5, "share": 0.6,
        "concentration": {"n": 10, "chance": 0.125, "positive": {"tag": "VERB", "share": 0.9},
                          "negative": {"tag": "NOUN", "share": 0.4}, "side": "positive", "tag": "VERB", "share": 0.9},
        "promoted_tokens": [[" ran", 1.5], ["ed", 1.2], [" ", 0.3]], "suppressed_tokens": [[" the", -2.0]],
        "chosen_for": [{"label": "VERB", "sign": "+", "auroc": 0.8}]}]}
    (r,) = rep.direction_rows(report, n_tokens=2)
    assert r["direction"] == 4 and r["top scores"] == "VERB 90%" and r["bottom scores"] == "NOUN 40%"
    assert r["promotes"] == "' ran'  ed" and r["suppresses"] == "' the'" and r["chosen for"] == "VERB+"
    assert r["concentration"] == 0.9


def test_phases_leave_out_what_is_cached(world, tmp_path):
    root, lm, ps, _ = world
    cache = ArrayCache(tmp_path / "c")
    opts = wlm.LMAlignOptions(top=4, steps=8, sae_latents=64, sae_k=4, sae_epochs=2)
    before = layer_phases(lm, ps, 1, opts, cache)
    assert [p["phase"] for p in before] == ["eNTK", "SAE", "evaluation"] and all(p["seconds"] > 0 for p in before)
    assert "eNTK ~" in phases_text(before) and "SAE ~" in phases_text(before)
    wlm.lm_align(lm, ps, layer=1, options=opts, cache=cache)
    assert [p["phase"] for p in layer_phases(lm, ps, 1, opts, cache)] == ["evaluation"]
    # in a worker (the dashboard) the model's load comes first, as long as this process's took
    load = layer_phases(lm, ps, 1, opts, cache, worker=True)[0]
    assert load["phase"] == "load" and load["seconds"] == lm.load_s
    off = wlm.LMAlignOptions(top=4, steps=8, sae="off")
    assert [p["phase"] for p in layer_phases(lm, ps, 0, off, cache)] == ["eNTK", "evaluation"]


def test_sae_estimate_grows_with_tokens_and_stops_at_the_budget():
    so = SAEOptions(latents=4096, budget_s=None)
    a, b = sae_seconds(512, 64, 640, so, False), sae_seconds(1024, 64, 640, so, False)
    assert b == pytest.approx(2 * a, rel=0.02)
    capped = sae_seconds(1 << 20, 64, 640, SAEOptions(latents=4096, budget_s=10.0), False)
    assert capped < sae_seconds(1 << 20, 64, 640, so, False)
    assert evaluation_seconds(1024, 640, 25, 4096) > evaluation_seconds(1024, 640, 25, None)


def test_uploaded_stories_build_the_same_probe_set_as_the_file(world):
    root, lm, _, stories = world
    data = stories.read_bytes()
    assert read_stories(StoriesText("up.txt", data)) == read_stories(stories)
    a = build_probe_set(lm, stories, per_tag=2, context=10, agreement=False)
    b = build_probe_set(lm, StoriesText("../../etc/up.txt", data), per_tag=2, context=10, agreement=False)
    assert a.fingerprint == b.fingerprint
    assert b.provenance["stories"]["file"] == "up.txt" and b.provenance["stories"]["sha256"] == \
        a.provenance["stories"]["sha256"]
    with pytest.raises(ValueError, match="not UTF-8"):
        read_stories(StoriesText("x.txt", b"\xff\xfe\x00bad"))
    with pytest.raises(ValueError, match="expected .txt or .jsonl"):
        read_stories(StoriesText("x.pdf", b"text"))


@pytest.mark.parametrize("edit", [
    lambda labs: labs[0].update(upos="<script>x</script>"),
    lambda labs: labs[1].update(morph={"Number": "[a](http://evil.invalid)"}),
    lambda labs: labs[2].update(morph={"Num ber": "Sing"}),
])
def test_labels_that_are_not_ud_names_are_one_line(world, tmp_path, edit):
    root, *_ = world
    bad = tmp_path / "bad"
    shutil.copytree(root / "set", bad)
    labs = json.loads((bad / "labels.json").read_text())
    edit(labs)
    (bad / "labels.json").write_text(json.dumps(labs))
    with pytest.raises(ValueError, match="not a UPOS tag with UD morphological features") as e:
        load_probe_set(bad)
    assert "\n" not in str(e.value)
    assert np.asarray(load_probe_set(root / "set").input_ids).shape[1] == 10  # the untouched set still loads
