"""Fourier-feature alignment of the modular-addition MLP on trained runs: the report, the
`align` CLI, the Alignment page, the paper's p = 29 figures. The helpers without a run:
tests/unit/test_modadd_mlp_analysis.py."""
import json
from pathlib import Path

import pytest

from _cli import run_cli
from entk_core.families.run import open_run
from entk_core.workflows.services import Services

REPO = Path(__file__).resolve().parents[2]


def test_align_report_structure(tiny_run_dir):
    run = open_run(tiny_run_dir)
    rep = run.family.align_report(run, 30, services=Services())
    json.dumps(rep, allow_nan=False)
    assert rep["p"] == 7 and rep["group"] == "full" and rep["families"]["sum"] == 6
    assert rep["cliffs"] and all({"overlap", "overlap_pct", "mean_best_corr", "best_before"} <= set(c) for c in rep["cliffs"])
    for c in rep["cliffs"]:
        if c["rotation"]:
            assert len(c["best_after"]) == c["size"] and c["overlap_after"].keys() == c["overlap"].keys()
    lin = rep["linearised"]
    assert {"r2", "acc_gap", "loss_ratio"} <= set(lin["expand"]) and {"r2", "acc_gap", "loss_ratio"} <= set(lin["pure"])
    assert lin["n_train"] + lin["n_test"] == 49
    rep3 = run.family.align_report(run, 30, services=Services(), group="net.3", linearised=False)
    assert rep3["group"] == "net.3" and "linearised" not in rep3
    with pytest.raises(ValueError, match="beta"):
        run.family.align_report(run, 30, services=Services(), beta=1.0)


def _cli(*args):
    return run_cli(*args)  # in this process (tests/README.md)


def test_align_cli(tiny_run_dir):
    r = _cli("align", tiny_run_dir, "--epoch", 20, "--group", "net.0", "--json")
    assert r.returncode == 0, r.stderr
    o = json.loads(r.stdout)
    assert o["epoch"] == 20 and o["group"] == "net.0" and "linearised" in o and o["cliffs"]
    r = _cli("align", tiny_run_dir, "--beta", 1)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "beta" in r.stderr


def _titles(at):
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def test_alignment_page(install_run, tiny_run_dir):
    from streamlit.testing.v1 import AppTest

    install_run(tiny_run_dir)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    at.switch_page("app_pages/alignment.py").run()
    assert not at.exception and not at.error
    titles = _titles(at)
    assert any("phase-insensitive correlation" in t and "after axis rotation" in t for t in titles)
    assert any(t.startswith("rotated direction 0 of the cliff") for t in titles)
    assert at.multiselect(key="align_fams").value == ["a", "b", "sum", "diff"]  # the MLP's view families, no control
    at.toggle(key="align_rotated").set_value(False).run()
    assert not at.exception and not at.error
    assert any("raw eigenvectors" in t for t in _titles(at))
    at.number_input(key="align_vector").set_value(3).run()
    assert "eigenvector 3" in _titles(at)
    at.selectbox(key="align_group").set_value("net.0").run()
    assert not at.exception and not at.error


def test_the_alignment_views_spectra_are_one_action(install_run, tiny_run_dir, monkeypatch):
    """Windows from another group and a compared checkpoint need three spectra: one offer states
    each with its estimate, and one worker computes them (each was its own action, started
    after the one before it ended)."""
    from streamlit.testing.v1 import AppTest

    from entk_core.ui import jobs as ui_jobs
    from entk_core.workflows import jobs

    monkeypatch.setattr(ui_jobs, "ASK_ABOVE_S", 0.0)  # the tiny run is quick: ask anyway
    name = install_run(tiny_run_dir)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.query_params.update({"run": name, "windows": "net.0", "compare": "10"})
    at.run()
    at.switch_page("app_pages/alignment.py").run()
    offer = " ".join(i.value for i in at.info)
    for part in ("the full eNTK spectrum (~", "then the net.0 eNTK spectrum (~", "then the full eNTK spectrum of "):
        assert part in offer, offer
    n0 = jobs.jobs_started()
    [b for b in at.button if b.label.startswith("Start (")][0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert jobs.jobs_started() == n0 + 1
    assert not [b for b in at.button if b.label == "Stop" or b.label.startswith("Start (")]
    assert any("phase-insensitive correlation" in t for t in _titles(at))


def test_alignment_page_is_generic_over_families(tmp_path, monkeypatch):
    """The Alignment page over TMS's feature indicators (β offered, no rotation: TMS declares
    none), and a family without feature families told so in one line."""
    from streamlit.testing.v1 import AppTest

    from entk_core.families.base import get_family, register, unregister
    from entk_core.families.modadd_mlp import ModAddMLPFamily
    from entk_core.workflows.training import train

    fam = get_family("tms")  # a built-in family: its absence is a failure, never a skip
    root = tmp_path / "runs"
    train(fam, fam.Config(n=5, m=2, n_points=20, epochs=2, checkpoint_every=1), root / "tms-tiny")
    monkeypatch.setenv("ENTK_RUNS_DIR", str(root))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    at.switch_page("app_pages/alignment.py").run()
    assert not at.exception and not at.error
    assert at.multiselect(key="align_fams").value == ["features"] and not at.toggle
    assert at.slider(key="align_beta").value == 0.0
    assert any("phase-insensitive correlation" in t for t in _titles(at))
    at.slider(key="align_beta").set_value(1.0).run()
    assert not at.exception and not at.error and at.query_params["beta"] == "1"

    class Featureless(ModAddMLPFamily):
        name = "featureless-mlp"

        def feature_families(self, cfg, data, model=None):
            return {}

    register(Featureless)
    try:
        f = get_family("featureless-mlp")
        train(f, f.Config(p=5, width=8, epochs=2, checkpoint_every=2), root / "a-featureless")
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
        at.switch_page("app_pages/alignment.py").run()
        assert at.session_state["run"] == "a-featureless"
        assert not at.exception and not at.error
        assert any("alignment view** is not available for this family" in i.value and "declares none" in i.value
                   for i in at.info), [i.value for i in at.info]
    finally:
        unregister("featureless-mlp")


@pytest.mark.slow
def test_mlp29_alignment_figures(mlp29_run_dir, mlp29_cache_dir):
    """The Done figures at the last epoch of the paper's p=29 MLP (its spectra from the session's cache)."""
    from entk_core.store.cache import ArrayCache

    run = open_run(mlp29_run_dir)
    rep = run.family.align_report(run, 500, services=Services(ArrayCache(mlp29_cache_dir)))
    by = {c["label"]: c for c in rep["cliffs"]}
    assert [(by[k]["start"], by[k]["end"]) for k in ("cliff 1", "cliff 2")] == [(1, 56), (57, 112)]
    c1, c2 = by["cliff 1"], by["cliff 2"]
    assert c1["overlap"]["a"] >= 27 and c1["overlap"]["b"] >= 27
    assert c2["overlap"]["sum"] >= 26 and c2["overlap"]["diff"] >= 24.5
    assert c1["overlap"]["random"] < 4 and c2["overlap"]["random"] < 4
    assert c1["rotation"] == "axis" and c2["rotation"] == "sumdiff"
    assert c1["mean_best_corr"]["before"] < 0.5 and c1["mean_best_corr"]["after"] > 0.9
    assert c2["mean_best_corr"]["after"] > c2["mean_best_corr"]["before"]
    lin = rep["linearised"]
    assert lin["expand"]["r2"] > 0.99 and abs(lin["expand"]["acc_gap"]) < 1


@pytest.mark.slow
def test_mlp29_pages(install_run, mlp29_run_dir, mlp29_cache_dir, monkeypatch):
    """The pages on the paper's run, its sweep already in the cache (the pages computing a
    sweep themselves: test_sweep.py::test_grokking_page on the tiny run)."""
    from streamlit.testing.v1 import AppTest

    install_run(mlp29_run_dir)
    monkeypatch.setenv("ENTK_CACHE_DIR", str(mlp29_cache_dir))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=600).run()
    for page in ("app_pages/grokking.py", "app_pages/alignment.py"):
        at.switch_page(page).run()
        for _ in range(3):  # long work (the sweep, the PCA baseline) is offered with its estimate: start it
            start = [b for b in at.button if b.label.startswith("Start (")]
            if not start:
                break
            assert any("estimated at about" in i.value for i in at.info)
            start[0].click().run()
        assert not at.exception and not at.error
        assert at.get("plotly_chart")
