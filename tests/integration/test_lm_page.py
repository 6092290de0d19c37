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


def test_compute_a_layer_then_read_table_contexts_and_url(page):
    at = page().run()
    assert not at.exception and not at.error
    assert at.session_state["lm_model"] == "tiny-gpt2" and at.session_state["lm_probes"] == "tiny-set"
    assert at.session_state["lm_layer"] == 1
    assert at.button(key="lm_compute")  # not cached yet: an estimate and a button, nothing computed
    assert any("Estimate" in i.value for i in at.info)
    at.number_input(key="lm_top").set_value(6).run()
    at.number_input(key="lm_steps").set_value(12).run()
    at.button(key="lm_compute").click().run()
    assert not at.exception and not at.error
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert "layer 1" in spec["layout"]["title"]["text"] and len(_ys(spec["data"][0])) == 6
    tables = at.dataframe
    pos = tables[0].value
    assert list(pos["POS"])[-1] == "MACRO" and set(pos["POS"][:-1]) == {"PUNCT", "PRON", "PROPN", "DET", "ADV",
                                                                         "CCONJ", "NOUN", "VERB"}
    assert all(w.startswith("★") or w == "" for w in pos["winner"])
    html = "".join(h.proto.body for h in at.get("html"))
    assert "<mark" in html and "Most" in "".join(m.value for m in at.markdown)
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
