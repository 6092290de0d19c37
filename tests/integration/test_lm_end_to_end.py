"""Random tiny model folders end to end through `probes` and `lm-align`, exactly as Gemma:
GPT-2 with every option, and Phi-3, GPT-NeoX, OPT, Falcon, OLMo, Gemma 2, Qwen3 and
Mistral (each saved with its own tokenizer and loaded back as a user would)."""
import json

import pytest

import _lm_models as M
from _cli import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-e2e")
    tok = M.build_tokenizer()
    models = root / "models"
    M.save_model_folder(models / "tiny-gpt2", "gpt2", layers=3, tokenizer=tok)
    M.save_model_folder(models / "other-gpt2", "gpt2", layers=3, seed=3, tokenizer=tok)
    stories = M.write_stories(root / "stories.txt", 200)
    return root, models, stories


def _cli(args, env):
    """The CLI in this process with ``env`` set (a subprocess pays ~10 s of imports; tests/README.md)."""
    return run_cli(*args, env=env)


def _main(args, capsys=None):
    """The CLI in this process."""
    return run_cli(*args)


def test_probes_then_lm_align_through_the_cli(world, tmp_path, monkeypatch, capsys):
    import os

    root, models, stories = world
    env = {**os.environ, "ENTK_MODELS_DIR": str(models), "ENTK_CACHE_DIR": str(tmp_path / "cache"),
           "ENTK_PROGRESS": "off", "OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("ENTK_MODELS_DIR", str(models))
    monkeypatch.setenv("ENTK_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "probes"
    r = _cli(["probes", "--model", "tiny-gpt2", "--stories", str(stories), "--out", str(out), "--per-tag", "6",
              "--context", "16", "--no-agreement", "--json"], env)
    assert r.returncode == 0, r.stderr
    built = json.loads(r.stdout)
    assert built["N"] == 48 and built["agreement"] is False and "Stanza" in built["tagger"]["note"]
    r = _cli(["lm-align", "--model", "tiny-gpt2", "--probes", str(out), "--layer", "2", "--layers", "all",
              "--min-count", "8", "--sae-latents", "64", "--sae-k", "4", "--sae-epochs", "4", "--json"], env)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    _check_report(rep, top=25)
    assert len(rep["eigenvalues"]) == 25 and rep["eigenvalues"] == sorted(rep["eigenvalues"], reverse=True)
    assert rep["params"] == ["mlp.c_proj.weight", "mlp.c_proj.bias"] and rep["tail_mode"] == "linear"
    for kind in ("pos", "morph"):
        for method in ("entk", "pca"):
            m = rep["macro"][kind][method]
            assert set(m) >= {"ap", "auroc", "prec_at_quota", "enrichment"}
            assert m["auroc"] is None or 0.0 <= m["auroc"] <= 1.0
    assert [row["label"] for row in rep["pos"]] == ["PUNCT", "PRON", "PROPN", "DET", "ADV", "CCONJ", "NOUN", "VERB"]
    assert [s["layer"] for s in rep["sweep"]] == [0, 1, 2]
    assert {r["label"] for r in rep["table3"]["pos"]["rows"]} == {row["label"] for row in rep["pos"]}
    for row in rep["table3"]["pos"]["rows"]:  # Table 3 = the max over layers
        best = max(s["auroc"]["pos"][row["label"]]["entk"] for s in rep["sweep"])
        assert row["entk"]["auroc"] == pytest.approx(best)
    # the same command again: every layer from the cache, same numbers
    r2 = _main(["lm-align", "--model", "tiny-gpt2", "--probes", str(out), "--layer", "2", "--layers", "all",
               "--min-count", "8", "--sae-latents", "64", "--sae-k", "4", "--sae-epochs", "4", "--json"], capsys)
    rep2 = json.loads(r2.stdout)
    assert rep2["sweep_cache_hits"] == 3 and rep2["eigenvalues"] == rep["eigenvalues"]
    assert rep2["macro"] == rep["macro"] and rep2["methods"]["sae"]["cache"] == "hit"
    # human-readable output and the models listing
    r3 = _main(["lm-align", "--model", "tiny-gpt2", "--probes", str(out), "--layer", "1", "--sae", "off"], capsys)
    assert r3.returncode == 0 and "macro POS" in r3.stdout and "Stanza" in r3.stdout
    assert "winner" in r3.stdout and "ICA" in r3.stdout and "SAE" not in r3.stdout.split("eNTK directions")[0]
    assert "eNTK directions" in r3.stdout and " + " in r3.stdout
    r4 = _main(["models", "--json"], capsys)
    assert [m["name"] for m in json.loads(r4.stdout)["models"]] == ["other-gpt2", "tiny-gpt2"]
    # bad inputs: one line, exit 2, nothing written
    for args, msg in [
        (["lm-align", "--model", "other-gpt2", "--probes", str(out), "--layer", "1"], "built with model 'tiny-gpt2'"),
        (["lm-align", "--model", "tiny-gpt2", "--probes", str(out), "--layer", "9"], "out of range"),
        (["lm-align", "--model", "tiny-gpt2", "--probes", str(out), "--layers", "0-999999999"], "out of range"),
        (["lm-align", "--model", "tiny-gpt2", "--probes", str(out), "--layer", "1", "--params", "mlp.zz"], "matches nothing"),
        (["lm-align", "--model", "tiny-gpt2", "--probes", str(root), "--layer", "1"], "not a probe set"),
        (["lm-align", "--model", str(root), "--probes", str(out), "--layer", "1"], "not a model folder"),
        (["probes", "--model", "tiny-gpt2", "--stories", str(tmp_path / "none.txt"), "--out", str(tmp_path / "p2")],
         "no stories file"),
    ]:
        r = _main(args, capsys)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("error: ") and msg in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "p2").exists()


def _check_report(rep, top):
    """What every `lm-align --json` carries: five baselines (and the full SAE), a winner per
    row, each direction's promoted/suppressed tokens and tag concentration."""
    assert set(rep["methods"]) == {"entk", "pca", "ica", "sae", "sae_full", "random"}
    assert rep["methods"]["random"]["draws"] == 20 and rep["methods"]["sae"]["directions"] <= top
    assert rep["methods"]["sae"]["fvu"] is not None and isinstance(rep["methods"]["sae"]["converged"], bool)
    assert isinstance(rep["methods"]["ica"]["converged"], bool)
    for kind in ("pos", "morph"):
        for r in rep[kind]:
            for m in ("entk", "pca", "ica", "sae", "sae_full", "random"):
                assert r[m]["auroc"] is None or 0.0 <= r[m]["auroc"] <= 1.0
            assert r["winner"] in ("entk", "pca", "ica", "sae", "random", "tie", None)
        assert set(rep["macro"][kind]) == {"entk", "pca", "ica", "sae", "sae_full", "random", "winner"}
    assert len(rep["directions"]) == len(rep["eigenvalues"])
    for d in rep["directions"]:
        pro, sup = d["promoted_tokens"], d["suppressed_tokens"]
        assert len(pro) == len(sup) == 12 and all(isinstance(t, str) for t, _ in pro + sup)
        assert [e for _, e in pro] == sorted((e for _, e in pro), reverse=True) and pro[0][1] > 0 > sup[0][1]
        c = d["concentration"]
        assert 0 < c["share"] <= 1 and c["tag"] in rep["probes"]["tags"]


@pytest.mark.parametrize("kind", ["phi3", "gpt_neox", "opt", "falcon", "olmo", "gemma2", "qwen3", "mistral"])
def test_every_architecture_runs_probes_and_lm_align(world, kind, tmp_path, monkeypatch, capsys):
    root, models, stories = world
    M.save_model_folder(tmp_path / f"tiny-{kind}", kind, layers=2, d=16)
    monkeypatch.setenv("ENTK_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "probes"
    r = _main(["probes", "--model", str(tmp_path / f"tiny-{kind}"), "--stories", str(stories), "--out", str(out),
               "--per-tag", "3", "--context", "10", "--no-agreement", "--max-stories", "100", "--json"], capsys)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"]["model_type"] == kind
    r = _main(["lm-align", "--model", str(tmp_path / f"tiny-{kind}"), "--probes", str(out), "--layer", "1",
               "--top", "4", "--steps", "6", "--min-count", "4", "--sae-latents", "32", "--sae-k", "4",
               "--sae-epochs", "3", "--json"], capsys)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    _check_report(rep, top=4)
    assert rep["model"]["model_type"] == kind and rep["tail_mode"] == "linear"
    assert rep["model"]["layout"]["parallel"] == (kind in M.PARALLEL)


def test_interrupted_sweep_resumes(world, tmp_path):
    from entk_core.families.causal_lm import build_probe_set, load_lm
    from entk_core.store.cache import ArrayCache
    from entk_core.workflows.lm import LMAlignOptions, cached_layers, lm_align

    root, models, stories = world
    lm = load_lm(models / "tiny-gpt2")
    ps = build_probe_set(lm, stories, per_tag=3, context=12, agreement=False)
    cache = ArrayCache(tmp_path / "c")
    opts = LMAlignOptions(top=5, steps=8, min_count=4, sae="off")

    def stop_in_layer_2(done, total, msg):
        if msg.startswith("layer 2") and "Lanczos step 3" in msg:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lm_align(lm, ps, layers="all", options=opts, cache=cache, progress=stop_in_layer_2)
    assert cached_layers(lm, ps, opts, cache) == [0, 1]
    rep = lm_align(lm, ps, layers="all", options=opts, cache=cache)
    assert [s["cache"] for s in rep["sweep"]] == ["hit", "hit", "miss"]
    assert cached_layers(lm, ps, opts, cache) == [0, 1, 2]


def _flat(o, pre=""):
    """Nested dicts/lists -> {path: number} (None kept), for approximate comparison."""
    if isinstance(o, dict):
        return {k2: v2 for k, v in o.items() for k2, v2 in _flat(v, f"{pre}/{k}").items()}
    if isinstance(o, list):
        return {k2: v2 for i, v in enumerate(o) for k2, v2 in _flat(v, f"{pre}/{i}").items()}
    return {pre: o}


def _same_tables(a, b):
    fa, fb = _flat([s["macro"] for s in a["sweep"]]), _flat([s["macro"] for s in b["sweep"]])
    assert fa.keys() == fb.keys()
    for k in fa:
        assert (fa[k] is None) == (fb[k] is None), k
        if fa[k] is not None:
            assert fa[k] == pytest.approx(fb[k], rel=1e-6, abs=1e-9), k


def test_layer_sweep_through_the_executors(world, tmp_path, ray_cluster):
    """`lm-align --layers` on worker processes and on a local Ray instance: the same numbers
    as in this process; the driver alone caches them (a re-run is all hits); a layer that
    fails twice is reported while the other layers are kept."""
    from dataclasses import replace as dc_replace

    from entk_core.families.causal_lm import build_probe_set, load_lm
    from entk_core.store.cache import ArrayCache
    from entk_core.workflows.executors import InlineExecutor
    from entk_core.workflows.lm import LMAlignOptions, cached_layers, lm_align

    root, models, stories = world
    lm = load_lm(models / "tiny-gpt2")
    ps = build_probe_set(lm, stories, per_tag=3, context=12, agreement=False)
    ps.save(tmp_path / "probes")
    from entk_core.families.causal_lm.probes import load_probe_set

    ps = load_probe_set(tmp_path / "probes")
    opts = LMAlignOptions(top=5, steps=8, min_count=4, sae="off")
    ref = lm_align(lm, ps, layers="all", options=opts, cache=ArrayCache(tmp_path / "inline"))
    assert ref["executor"]["executor"] == "inline"

    local = lm_align(lm, ps, layers="all", options=opts, cache=ArrayCache(tmp_path / "local"), workers=2)
    assert local["executor"]["executor"] == "local" and local["failed"] == []
    assert local["eigenvalues"] == pytest.approx(ref["eigenvalues"], rel=1e-6)
    _same_tables(local, ref)

    class FailLayer1(InlineExecutor):
        def _run(self, units, finished):
            def boom(**kw):
                raise MemoryError("out of memory in layer 1")
            super()._run([dc_replace(u, fn=boom) if u.key == "layer 1" else u for u in units], finished)

    cache = ArrayCache(tmp_path / "fail")
    rep = lm_align(lm, ps, layer=2, layers="all", options=opts, cache=cache, executor=FailLayer1())
    assert rep["failed"] == [{"layer": 1, "error": "MemoryError: out of memory in layer 1"}]
    assert [s["layer"] for s in rep["sweep"]] == [0, 2]
    assert cached_layers(lm, ps, opts, cache) == [0, 2]

    from entk_core.workflows.executors import make_executor

    ex = make_executor(ray=True)  # the session's local Ray instance (tests/conftest.py)
    try:
        rc = ArrayCache(tmp_path / "ray")
        on_ray = lm_align(lm, ps, layers="all", options=opts, cache=rc, executor=ex)
        assert on_ray["executor"]["executor"] == "ray" and on_ray["failed"] == []
        assert on_ray["eigenvalues"] == pytest.approx(ref["eigenvalues"], rel=1e-6)
        _same_tables(on_ray, ref)
        again = lm_align(lm, ps, layers="all", options=opts, cache=rc, executor=ex)
        assert again["sweep_cache_hits"] == 3 and "executor" not in again
    finally:
        ex.close()


def test_the_sae_trains_once_from_either_activation_path(world, tmp_path):
    """The SAE of the detailed layer is trained on the activations of the eNTK unit's capture
    pass when the unit runs here; when the unit is already cached, a forward pass through
    blocks 0..L gives the same activations (and the same SAE). `--sae cached` never trains."""
    import numpy as np

    from entk_core.families.causal_lm import build_probe_set, load_lm
    from entk_core.store.cache import ArrayCache
    from entk_core.workflows.lm import LMAlignOptions, lm_align, peek_layer, peek_sae, token_activations

    root, models, stories = world
    lm = load_lm(models / "tiny-gpt2")
    ps = build_probe_set(lm, stories, per_tag=3, context=12, agreement=False)
    opts = LMAlignOptions(top=4, steps=6, min_count=4, sae_latents=32, sae_k=4, sae_epochs=3)
    one = lm_align(lm, ps, layer=1, options=opts, cache=ArrayCache(tmp_path / "a"))
    assert one["methods"]["sae"]["cache"] == "miss" and one["methods"]["sae"]["tokens"] == ps.N * (ps.T - 1)
    cache = ArrayCache(tmp_path / "b")
    off = lm_align(lm, ps, layer=1, options=LMAlignOptions(**{**opts.__dict__, "sae": "cached"}), cache=cache)
    assert "sae" not in off["methods"] and peek_sae(lm, ps, 1, opts, cache) is None
    two = lm_align(lm, ps, layer=1, options=opts, cache=cache)   # the eNTK unit is cached: a forward pass
    assert two["cache"] == "hit" and two["methods"]["sae"]["cache"] == "miss"
    assert two["methods"]["sae"]["fvu"] == pytest.approx(one["methods"]["sae"]["fvu"], rel=1e-4)
    assert two["macro"]["pos"]["sae"]["auroc"] == pytest.approx(one["macro"]["pos"]["sae"]["auroc"], abs=1e-6)
    acts = token_activations(lm, ps, 1)
    assert acts.shape == (ps.N, ps.T, lm.d_model)
    assert np.allclose(acts[:, -1], peek_layer(lm, ps, 1, opts, cache)["hidden_last"], atol=1e-5)
    three = lm_align(lm, ps, layer=1, options=opts, cache=cache)
    assert three["methods"]["sae"]["cache"] == "hit"
