"""AppTest runs of the Language model page on a tiny random GPT-2 folder."""
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import _lm_models as M

pytestmark = pytest.mark.slow


def _ys(trace):
    import base64

    import numpy as np

    y = trace["y"]
    return np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"]) if isinstance(y, dict) else np.asarray(y)
REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")


@pytest.fixture(scope="module")
def lm_world(tmp_path_factory):
    from entk_core.families.causal_lm import build_probe_set, load_lm

    root = tmp_path_factory.mktemp("lmpage")
    tok = M.build_tokenizer()
    M.save_model_folder(root / "models" / "tiny-gpt2", "gpt2", layers=3, tokenizer=tok)
    stories = M.write_stories(root / "stories.txt", 150)
    lm = load_lm(root / "models" / "tiny-gpt2")
    ps = build_probe_set(lm, stories, per_tag=5, context=12, agreement=False)
    ps.save(root / "probes" / "tiny-set")
    return root


@pytest.fixture
def page(lm_world, monkeypatch, tmp_path):
    monkeypatch.setenv("ENTK_MODELS_DIR", str(lm_world / "models"))
    monkeypatch.setenv("ENTK_PROBES_DIR", str(lm_world / "probes"))
    monkeypatch.setenv("ENTK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ENTK_OFFER_GGUF_PACKAGE", "0")  # never load the real model here

    class Page:
        """``make(**query).run()``: open the app with that query string, then switch to the page."""

        def __init__(self, **params):
            self.at = AppTest.from_file(APP, default_timeout=300)
            for k, v in params.items():
                self.at.query_params[k] = v

        def run(self) -> AppTest:
            self.at.run()
            self.at.switch_page(str(REPO / "entk_core" / "families" / "causal_lm" / "page.py"))
            return self.at.run()

    return Page


def _texts(at) -> str:
    return "\n".join(t.value for t in at.text)


def _df(at, column: str):
    """The dataframe whose first column is ``column`` (AppTest keeps no dataframe keys)."""
    return next(d.value for d in at.dataframe if d.value.columns[0] == column)


def _cells(df) -> list[str]:
    return [str(v) for v in df.to_numpy().ravel()]


def test_compute_a_layer_then_read_table_contexts_and_url(page):
    at = page().run()
    assert not at.exception and not at.error
    assert at.session_state["lm_model"] == "tiny-gpt2" and at.session_state["lm_probes"] == "tiny-set"
    assert at.session_state["lm_layer"] == 1
    assert at.button(key="lm_compute")  # not cached yet: an estimate of every phase and a button, nothing computed
    est = next(i.value for i in at.info if "Estimate" in i.value)
    assert "eNTK ~" in est and "SAE ~" in est and "evaluation ~" in est and "in all" in est
    at.number_input(key="lm_top").set_value(6).run()
    at.number_input(key="lm_steps").set_value(12).run()
    from entk_core.workflows.jobs import jobs_started

    started = jobs_started()
    at.button(key="lm_compute").click().run()
    assert not at.exception and not at.error
    assert jobs_started() == started + 1  # computed in a worker process, not the server's script thread
    # finished: the estimate, the Compute and Stop buttons are gone (the page reran without them)
    assert not any("not computed yet" in i.value for i in at.info)
    keys = {b.key for b in at.button}
    assert "lm_compute" not in keys and "lm_compute_stop" not in keys
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert "layer 1" in spec["layout"]["title"]["text"] and len(_ys(spec["data"][0])) == 6
    pos = _df(at, "POS")
    assert list(pos.columns[:8]) == ["POS", "test n+", "eNTK", "PCA", "ICA", "SAE", "random", "winner"]
    assert "SAE (full)" in pos.columns
    assert list(pos["POS"])[-1] == "MACRO" and set(pos["POS"][:-1]) == {"PUNCT", "PRON", "PROPN", "DET", "ADV",
                                                                         "CCONJ", "NOUN", "VERB"}
    assert list(pos["test n+"])[-1] == "" and "None" not in _cells(pos) and "nan" not in _cells(pos)
    for _, r in pos.iterrows():  # the winner (from workflows) holds the row's highest same-budget AUROC
        vals = {m: float(r[m]) for m in ("eNTK", "PCA", "ICA", "SAE", "random") if r[m] != "–"}
        best = max(vals.values())
        assert r["winner"] == "tie" or (r["winner"].startswith("★ ") and vals[r["winner"][2:]] == best)
    dirs = _df(at, "direction")
    assert len(dirs) == 6 and {"promotes", "suppresses", "top scores", "concentration"} <= set(dirs.columns)
    assert all(isinstance(x, str) and x for x in dirs["promotes"])
    pro, sup = [d.value for d in at.dataframe if d.value.columns[0] == "token"]
    assert len(pro) == len(sup) == 12 and (pro["logit effect"] > 0).all() and (sup["logit effect"] < 0).all()
    html = "".join(h.proto.body for h in at.get("html"))
    assert "<mark" in html and "Most positive" in _texts(at) and "Top " in "".join(c.value for c in at.caption)
    assert any("SAE: TopK" in c.value for c in at.caption)
    # the shared URL rule: values that differ from the page's default are written
    assert at.query_params["k"] == "6" and at.query_params["steps"] == "12" and "layer" not in at.query_params
    at.selectbox(key="lm_dir").set_value(3).run()
    assert at.query_params["vector"] == "3" and not at.exception
    # a second layer computed makes the AUROC-per-layer chart appear
    at.selectbox(key="lm_layer").set_value(2).run()
    assert at.query_params["layer"] == "2"
    at.button(key="lm_compute").click().run()
    assert not at.exception and not at.error
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any("per layer" in t for t in titles)


def test_viewer_mode_offers_no_build_and_computes_only_under_the_limit(page, monkeypatch):
    monkeypatch.setenv("ENTK_VIEWER", "1")
    monkeypatch.setenv("ENTK_VIEWER_MAX_SECONDS", "0")
    at = page(k="5", steps="10").run()
    assert not at.exception and not at.error
    keys = {w.key for w in [*at.button, *at.selectbox, *at.text_input]}
    assert not {"lm_build", "lm_build_stories", "lm_build_name", "lm_compute", "lm_sweep"} & keys
    assert not any("entk_core lm-align" in c.value for c in at.code)  # no server paths for visitors
    assert "viewer mode: layer 1 is not cached" in _texts(at)
    monkeypatch.setenv("ENTK_VIEWER_MAX_SECONDS", "100000")
    at = page(k="5", steps="10").run()
    assert at.button(key="lm_compute")  # small enough: a visitor may start it
    at.button(key="lm_compute").click().run()
    assert not at.exception and not at.error and len(_df(at, "POS")) == 9


def test_a_broken_model_and_a_malformed_probe_set_are_one_line_each(lm_world, page, monkeypatch, tmp_path):
    import shutil

    models, probes = tmp_path / "models", tmp_path / "probes"
    shutil.copytree(lm_world / "models", models)
    shutil.copytree(lm_world / "probes", probes)
    (models / "a-broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 40)  # truncated, first in order
    bad = probes / "a-bad"
    shutil.copytree(probes / "tiny-set", bad)
    prov = json.loads((bad / "provenance.json").read_text())
    prov["options"] = ["not", "a", "dict"]
    (bad / "provenance.json").write_text(json.dumps(prov))
    hostile = probes / "b-hostile"
    shutil.copytree(probes / "tiny-set", hostile)
    labels = json.loads((hostile / "labels.json").read_text())
    labels[0]["upos"] = "![x](http://evil.invalid/x.png)"
    (hostile / "labels.json").write_text(json.dumps(labels))
    monkeypatch.setenv("ENTK_MODELS_DIR", str(models))
    monkeypatch.setenv("ENTK_PROBES_DIR", str(probes))
    at = page().run()
    assert not at.exception and not at.error
    lines = [t for t in _texts(at).splitlines() if t.startswith("⚠ ")]
    assert len(lines) == 3, lines
    assert any("a-broken.gguf" in t for t in lines) and any("a-bad" in t and "options" in t for t in lines)
    assert any("b-hostile" in t and "UPOS" in t for t in lines)
    assert not any(str(tmp_path) in t for t in lines)  # no server path in the lines
    empty = probes / "c-empty"
    empty.mkdir()
    at = page().run()
    assert any("c-empty" in t and "skipped" in t for t in _texts(at).splitlines())
    assert str(tmp_path) not in _texts(at) and not at.exception
    assert at.session_state["lm_model"] == "tiny-gpt2" and at.session_state["lm_probes"] == "tiny-set"
    assert at.button(key="lm_compute")


def test_build_a_probe_set_from_the_data_folder(lm_world, page, monkeypatch, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    M.write_stories(data / "mine.txt", 150)
    monkeypatch.setenv("ENTK_DATA_DIR", str(data))
    monkeypatch.setenv("ENTK_PROBES_DIR", str(tmp_path / "probes"))
    at = page().run()
    assert not at.exception
    opts = at.selectbox(key="lm_build_stories").options
    assert "data/mine.txt" in opts and opts[-1] == "Upload a file…" and not at.text_input(key="lm_build_name").disabled
    assert not any(ti.key == "lm_build_stories" for ti in at.text_input)  # no free-text path
    at.selectbox(key="lm_build_stories").set_value("data/mine.txt")
    at.text_input(key="lm_build_name").set_value("from-data")
    at.number_input(key="lm_build_per_tag").set_value(3)
    at.number_input(key="lm_build_context").set_value(12)
    at.toggle(key="lm_build_agree").set_value(False)
    at.button(key="lm_build").click().run()
    assert not at.exception and not at.error
    assert at.session_state["lm_probes"] == "from-data"
    prov = json.loads((tmp_path / "probes" / "from-data" / "provenance.json").read_text())
    assert prov["stories"]["file"] == "mine.txt" and prov["counts"]["NOUN"] == 3
    # choosing the upload shows an uploader; building without a file is one line, nothing written
    at.selectbox(key="lm_build_stories").set_value("Upload a file…").run()
    at.text_input(key="lm_build_name").set_value("up")
    at.button(key="lm_build").click().run()
    assert not at.exception and any("choose a stories file to upload" in e.value for e in at.error)
    assert not (tmp_path / "probes" / "up").exists()


def test_link_restores_the_view_and_reports_bad_values(page):
    at = page(layer="2", vector="1", probes="nope").run()
    assert not at.exception
    assert at.session_state["lm_layer"] == 2 and at.session_state["lm_probes"] == "tiny-set"
    # (the one-line "from the link" message on a first load is the shared URL helper's, tested with it)


def test_no_models_explains_what_to_do(page, monkeypatch, tmp_path):
    monkeypatch.setenv("ENTK_MODELS_DIR", str(tmp_path / "empty"))
    at = page().run()
    assert not at.exception
    assert any("No models in the models folder" in i.value and "ENTK_MODELS_DIR" in i.value for i in at.info)
