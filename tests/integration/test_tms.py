"""TMS runs (entk_core.families.tms, its analysis and page): align_report and heatmaps on a tiny
trained run, the paper's (m, S) = (10, 0.3), the TMS page. The family without training
(model, data, rescaling, the Gram trick): tests/unit/test_tms_family.py."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from entk_core.families.tms import analysis as tms
from entk_core.engine.measures import best_feature, cosine_heatmap
from entk_core.families.tms.features import tms_feature_vectors
from entk_core.families.tms import represented_features
from entk_core.engine.kernels import empirical_ntk
from entk_core.families.base import get_family
from entk_core.engine.eigenpairs import top_eigenpairs
from entk_core.workflows.services import Services

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def fam():
    return get_family("tms")


# ------------------------------------------------------------ run-level API
@pytest.fixture(scope="module")
def tiny_tms_run(tmp_path_factory):
    """A tiny TMS run, trained once for this module (tests read it; the page test copies it)."""
    from entk_core.workflows.training import train

    fam = get_family("tms")
    return train(fam, fam.Config(n=8, m=3, n_points=40, sparsity=0.6, epochs=30, lr=1e-2, checkpoint_every=10),
                 tmp_path_factory.mktemp("tms") / "tiny-tms")


def test_align_report_best_feature(tiny_tms_run):
    run = tiny_tms_run
    assert run.status == "complete" and "represented_features" in run.info()
    rep = run.family.align_report(run, run.epochs[-1], services=Services(), beta=0.3, group=None)
    json.dumps(rep, allow_nan=False)
    model, x = run.load_model(), run.data.kernel_x
    w = run.family.class_weights(run.config, 0.3)
    K = empirical_ntk(model.double(), x.double(), reduction="flat", class_weights=w.double())
    vals, vecs = top_eigenpairs(K, rep["top"])
    H = cosine_heatmap(vecs, tms_feature_vectors(x))
    keep = vals > 1e-8 * vals[0]
    gaps = np.abs(np.diff(vals)) > 1e-6 * vals[0]
    distinct = keep & np.r_[gaps, True] & np.r_[True, gaps]    # eigenvectors defined up to sign only
    assert rep["beta"] == 0.3 and rep["n_features"] == 8 and rep["top"] == 80
    np.testing.assert_allclose(rep["eigenvalues"], vals, rtol=1e-4, atol=1e-6 * vals[0])
    assert np.array_equal(np.asarray(rep["best_feature"])[distinct], best_feature(H)[distinct])
    assert rep["represented_features"] == represented_features(run.load_state()["W"])
    # the cached second call gives the same report
    again = run.family.align_report(run, run.epochs[-1], services=Services(), beta=0.3, group=None)
    assert again["best_feature"] == rep["best_feature"] and again["cache"] == "hit"


def test_analyse_matches_spectrum_command_path(tiny_tms_run):
    from entk_core.workflows import analysis

    run = tiny_tms_run
    for beta in (0.0, 1.0):
        a = tms.analyse(run, beta=beta, top=20)
        s = analysis.spectrum(run, reduction="flat", top=20, beta=beta)
        np.testing.assert_allclose(a.eigenvalues, s.eigenvalues, rtol=1e-4, atol=1e-6 * s.eigenvalues[0])


def test_analyse_rejects_non_tms_and_bad_options(tiny_tms_run, tiny_run_dir):
    from entk_core.families.run import open_run

    with pytest.raises(ValueError, match="not a TMS run"):
        tms.analyse(open_run(tiny_run_dir), beta=0.3)
    with pytest.raises(ValueError, match="beta"):
        tms.analyse(tiny_tms_run, beta=-1)
    with pytest.raises(ValueError, match="layer group"):
        tms.analyse(tiny_tms_run, group="net.0")


# --------------------------------------------------------------- integration
@pytest.mark.slow
def test_paper_dense_config_m10_s03(tmp_path, fam):
    """(m, S) = (10, 0.3), seed 0: 10 represented features; at β = 0 the sharpest cliff ends
    after index 49 (n = 50); at β = 0.3 eigenvectors 0..49 match features 0..49 in order."""
    from entk_core.workflows.training import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # a 50-feature model: one thread is faster, and robust on a loaded machine
    try:
        run = train(fam, fam.Config(m=10, sparsity=0.3, seed=0), tmp_path / "runs" / "tms-m10-s0.3-seed0")
    finally:
        torch.set_num_threads(threads)
    assert abs(run.info()["represented_features"] - 10) <= 2
    r0 = tms.analyse(run, beta=0.0)
    assert r0.sharpest is not None and r0.sharpest.end == 49, r0.cliffs
    r3 = tms.analyse(run, beta=0.3)
    assert r3.in_order(50) >= 45, r3.best_feature[:50]


# ---------------------------------------------------------------- dashboard
def test_tms_page(tmp_path, tiny_tms_run, tiny_run_dir):
    import shutil

    from streamlit.testing.v1 import AppTest

    from entk_core.store.runs import runs_root

    root = runs_root()  # tmp, from conftest
    shutil.copytree(tiny_run_dir, root / "a-mlp")
    shutil.copytree(tiny_tms_run.path, root / "b-tms")

    def page(run_name):
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
        at.session_state["run"] = run_name
        at.run()
        at.switch_page(str(REPO / "entk_core" / "families" / "tms" / "page.py"))
        at.run()
        assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
        return at

    at = page("a-mlp")  # not a TMS run: explained, with an offer to open the TMS run / train the paper's
    assert "Toy Models of Superposition" in at.info[0].value
    labels = [b.label for b in at.button]
    assert "Open b-tms" in labels and "Train 3 TMS runs" in labels

    at = page("b-tms")
    assert at.metric[0].label == "Represented features"
    assert at.metric[0].value.endswith("/ 8")
    assert any("cached" in c.value or "from the cache" in c.value for c in at.caption)
    at.slider(key="tms_beta").set_value(1.0)
    at.run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    titles = [json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "") for c in at.get("plotly_chart")]
    assert any("β = 1" in t for t in titles), titles
    assert dict(at.query_params).get("beta") == "1"
