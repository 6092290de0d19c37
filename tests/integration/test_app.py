"""AppTest runs of the dashboard shell and the Spectrum page (no browser)."""
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")


def _app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=180)


def test_no_runs_offers_demo():
    at = _app().run()
    assert not at.exception
    assert any("No runs yet" in i.value for i in at.info)
    assert at.button(key="train_demo")


@pytest.mark.slow
def test_demo_training_from_the_ui(monkeypatch):
    """The button trains the demo preset into the runs folder and opens it. The preset is cut
    to 20 epochs here: the full 500-epoch training is the session's ``mlp29_run_dir``."""
    import dataclasses

    from entk_core.workflows import presets
    from entk_core.workflows.presets import DEMO

    demo = presets.PRESETS[DEMO]
    monkeypatch.setitem(presets.PRESETS, demo.name,
                        dataclasses.replace(demo, overrides={**demo.overrides, "epochs": 20, "checkpoint_every": 10}))
    at = _app().run()
    at.button(key="train_demo").click().run()
    assert not at.exception
    assert at.session_state["run"] == DEMO
    assert at.get("plotly_chart")
    from entk_core.families.run import open_run
    from entk_core.store.runs import runs_root

    trained = open_run(runs_root() / DEMO)
    assert trained.status == "complete" and trained.epochs == [0, 10, 20] and trained.config.p == 29


def test_spectrum_page_renders_and_reacts(install_run, tiny_run_dir):
    name = install_run(tiny_run_dir)
    at = _app().run()
    assert not at.exception and not at.error
    assert at.session_state["run"] == name and at.session_state["epoch"] == 30
    charts = at.get("plotly_chart")
    assert charts
    spec = json.loads(charts[0].proto.spec)
    assert "epoch 30" in spec["layout"]["title"]["text"]
    assert not dict(at.query_params)  # the default view is the bare URL
    # change group, reduction and checkpoint
    at.selectbox(key="spec_group").set_value("net.3").run()
    assert dict(at.query_params) == {"run": name, "epoch": "30", "group": "net.3"}
    at.selectbox(key="spec_reduction").set_value("mean").run()
    at.select_slider(key="epoch").set_value(10).run()
    assert not at.exception and not at.error
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert "net.3" in spec["layout"]["title"]["text"] and "epoch 10" in spec["layout"]["title"]["text"]


def test_url_parameters_select_the_view_and_are_confined(install_run, tiny_run_dir):
    name = install_run(tiny_run_dir)
    at = _app()
    at.query_params["run"] = name
    at.query_params["epoch"] = "20"
    at.run()
    assert not at.exception and at.session_state["epoch"] == 20
    at = _app()
    at.query_params["run"] = "../../etc"
    at.run()
    assert not at.exception
    msgs = [w.value for w in at.warning]
    assert len(msgs) == 1 and "from the link" in msgs[0] and "runs folder" in msgs[0], msgs  # one message


def test_viewer_mode_offers_no_training_and_no_cache_clearing(monkeypatch):
    monkeypatch.setenv("ENTK_VIEWER", "1")
    at = _app().run()
    assert not at.exception
    assert any("viewer mode" in i.value for i in at.sidebar.info)
    assert any("No runs on this server yet" in i.value for i in at.info)
    keys = {b.key for b in at.button}
    assert not keys & {"train_demo", "cache_clear", "cache_clear_yes"}, keys
    monkeypatch.delenv("ENTK_VIEWER")
    at = _app().run()  # the owner's server offers both
    assert {"train_demo", "cache_clear"} <= {b.key for b in at.button}


def test_viewer_mode_refuses_an_uncached_computation_above_the_limit(install_run, tiny_run_dir, monkeypatch):
    name = install_run(tiny_run_dir)
    monkeypatch.setenv("ENTK_VIEWER", "1")
    monkeypatch.setenv("ENTK_VIEWER_MAX_SECONDS", "0")
    at = _app().run()
    assert not at.exception and not at.error
    (line,) = [i.value for i in at.info if "would take about" in i.value]
    assert line.startswith("viewer mode: the eNTK spectrum is not cached and would take about ") and "(limit 0 s)" in line
    assert not at.get("plotly_chart") and not [b for b in at.button if b.label.startswith("Start")]
    monkeypatch.setenv("ENTK_VIEWER_MAX_SECONDS", "600")  # under the limit: computed for the visitor
    at = _app().run()
    assert not at.exception and not at.error and at.get("plotly_chart")
    assert at.session_state["run"] == name


def test_a_link_error_names_the_run_inside_the_runs_folder(install_run, tiny_run_dir, monkeypatch, tmp_path):
    install_run(tiny_run_dir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENTK_RUNS_DIR", "runs")  # the default, relative runs folder
    at = _app()
    at.query_params["run"] = "nope"
    at.run()
    (msg,) = [w.value for w in at.warning]
    assert "runs/nope: no such run folder" in msg and "runs//" not in msg, msg


def test_a_broken_run_is_one_line_and_the_page_goes_on(install_run, tiny_run_dir, tmp_path):
    """A checkpoint file truncated on disk, and a second run whose manifest declares p = 100,000:
    each is one plain line (no traceback), and the good run still opens on its own link."""
    import shutil

    name = install_run(tiny_run_dir)
    root = tmp_path / "runs"
    ck = root / name / "checkpoints" / "epoch_000030.safetensors"
    ck.write_bytes(ck.read_bytes()[:100])
    big = root / "big-p"
    shutil.copytree(root / name, big)
    manifest = json.loads((big / "manifest.json").read_text())
    manifest["config"]["p"] = 100_000
    (big / "manifest.json").write_text(json.dumps(manifest))
    at = _app()
    at.query_params["run"] = name
    at.query_params["epoch"] = "30"
    at.run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(e.startswith("big-p: ") and "p" in e for e in errors), errors  # the sidebar's line for big-p
    assert any("epoch_000030.safetensors" in e for e in errors), errors  # the page's line for the checkpoint
    assert all("\n" not in e and "Traceback" not in e for e in errors), errors
    at.select_slider(key="epoch").set_value(20).run()  # another checkpoint of the same run works
    assert not at.exception and at.get("plotly_chart")
