"""AppTest runs of the Training dynamics page (/dynamics) and the epoch animation: on the
modular-addition MLP (feature overlaps over training) and on a plug-in family without feature
families (the page says what would add them). The plug-in with features (examples/entk-toy-family)
is drawn in tests/integration/test_plugin.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from _plain_family import PlainMLPFamily
from streamlit.testing.v1 import AppTest

from entk_core.families.base import register, unregister

REPO = Path(__file__).resolve().parents[2]
PAGE = "app_pages/dynamics.py"


def _charts(at) -> dict[str, dict]:
    """Every Plotly chart on the page by its title."""
    out = {}
    for c in at.get("plotly_chart"):
        spec = json.loads(c.proto.spec)
        out[spec["layout"].get("title", {}).get("text", "")] = spec
    return out


def _find(charts: dict[str, dict], fragment: str) -> dict:
    hits = [s for t, s in charts.items() if fragment in t]
    assert hits, f"no chart titled like {fragment!r}: {list(charts)}"
    return hits[0]


def _title(spec: dict) -> str:
    return spec["layout"]["title"]["text"]


def _epoch_lines(spec: dict) -> set[float]:
    return {s["x0"] for s in spec["layout"].get("shapes", []) if s["type"] == "line" and s["line"]["width"] == 2}


def test_dynamics_page_on_the_mlp(install_run, tiny_run_dir):
    name = install_run(tiny_run_dir)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    at.switch_page(PAGE).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    charts = _charts(at)
    heat = _find(charts, "spectrum over training")
    assert heat["data"][0]["type"] == "heatmap"
    curves = _find(charts, "How the kernel moves")
    names = {t.get("name") for t in curves["data"]}
    assert {"kernel distance to the previous checkpoint", "centred kernel-target alignment", "effective rank"} <= names
    acc = _find(charts, "kernel-regression predictor")
    assert {"network test accuracy", "kernel regression test accuracy"} <= {t.get("name") for t in acc["data"]}
    anim = _find(charts, "played in the browser · eigenvector 1")
    assert [f["name"] for f in anim["frames"]] == ["0", "10", "20", "30"]
    # the spectrum, the image and its power
    assert [im["source"][:15] for im in anim["frames"][0]["layout"]["images"]] == ["data:image/svg+", "data:image/png;",
                                                                                   "data:image/png;"]
    assert anim["layout"]["sliders"][0]["active"] == 3  # opens on the sidebar's checkpoint
    ov = _find(charts, "Overlap of")
    assert any(str(t.get("name", "")).startswith("sum") for t in ov["data"])
    assert _epoch_lines(curves) == {30}
    # the sidebar's checkpoint marks every curve; the URL follows; the animation stays where it
    # opened (the same figure: the browser does not draw it again), and opens on the sidebar's
    # checkpoint when turned off and on
    at.select_slider(key="epoch").set_value(10).run()
    assert not at.exception and not at.error
    charts = _charts(at)
    assert _epoch_lines(_find(charts, "How the kernel moves")) == {10}
    assert _find(charts, "played in the browser · eigenvector 1")["layout"]["sliders"][0]["active"] == 3
    assert at.query_params["epoch"] == "10"
    at.toggle(key="dyn_animation_on").set_value(False).run()
    assert not any("played in the browser" in t for t in _charts(at))
    at.toggle(key="dyn_animation_on").set_value(True).run()
    assert _find(_charts(at), "played in the browser · eigenvector 1")["layout"]["sliders"][0]["active"] == 1
    # a layer group: its own kernels, in the URL
    at.selectbox(key="dyn_group").set_value("net.0").run()
    assert not at.exception and not at.error
    assert at.query_params["group"] == "net.0" and at.query_params["run"] == name
    assert "net.0 eNTK spectrum over training" in " ".join(_charts(at))


@pytest.fixture
def plain_family():
    register(PlainMLPFamily)
    yield
    unregister(PlainMLPFamily.name)


def test_dynamics_page_on_a_plugin_without_feature_families(plain_family, install_run, tmp_path):
    from entk_core.workflows.training import train

    run_dir = tmp_path / "src" / "plain"
    train(PlainMLPFamily(), PlainMLPFamily.Config(), run_dir)
    install_run(run_dir)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    at.switch_page(PAGE).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    charts = _charts(at)
    heat = _find(charts, "spectrum over training")
    assert heat["data"][0]["type"] == "heatmap" and "top 12 of 30" in _title(heat)
    anim = _find(charts, "played in the browser")
    assert [f["name"] for f in anim["frames"]] == ["0", "10", "20"]
    vec = anim["layout"]["images"][-1]  # the vector over the inputs, a line in its own panel
    assert vec["xref"] == "x2" and vec["source"].startswith("data:image/svg+xml")
    assert not any("Overlap of" in t for t in charts)
    infos = " ".join(i.value for i in at.info)
    assert "declares no feature families" in infos and "feature_families()" in infos
