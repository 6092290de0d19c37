"""Tests of the TMS family (entk_core.families.tms) and TMS analysis (entk_core.families.tms.analysis):
model, data, represented features, importance rescaling, the Gram trick and its closed
form, heatmaps, align_report; a slow integration test on the paper's (m, S) = (10, 0.3)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from entk_core.families.tms import analysis as tms
from entk_core.engine.measures import best_feature, cosine_heatmap
from entk_core.families.tms.features import tms_feature_vectors
from entk_core.families.tms import TMSModel, feature_norms, importances, make_points, represented_features
from entk_core.engine.kernels import empirical_ntk, layer_groups
from entk_core.families.base import get_family, seeded
from entk_core.engine.eigenpairs import top_eigenpairs
from entk_core.engine.operators import flat_jacobian
from entk_core.workflows.services import Services

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def fam():
    return get_family("tms")


def _random_model(n=7, m=3, seed=0, bias_shift=0.0):
    torch.manual_seed(seed)
    model = TMSModel(n, m)
    with torch.no_grad():
        model.W.normal_()
        model.b.normal_().sub_(bias_shift)
    return model.double()


def _points(N=20, n=7, S=0.5, seed=1):
    return make_points(N, n, S, seeded(seed)).double()


# ------------------------------------------------------------------ family
def test_registered_with_cli_fields(fam):
    cfg = fam.Config()
    assert (cfg.n, cfg.m, cfg.sparsity, cfg.importance, cfg.seed, cfg.epochs, cfg.lr, cfg.n_points) == (
        50, 10, 0.9, 0.8, 0, 5000, 1e-3, 500)
    assert cfg.checkpoint_every > 0
    assert fam.default_reduction == "flat" and fam.default_top == 80
    assert fam.config_from_dict({"m": 40, "sparsity": 0.3}).m == 40


def test_model_forward_init_and_groups(fam):
    cfg = fam.Config(n=50, m=10)
    model = fam.build_model(cfg)
    assert list(layer_groups(model)) == ["W", "b"]
    assert model.W.shape == (10, 50) and torch.all(model.b == 0)
    assert abs(model.W.std().item() - math.sqrt(2 / 60)) < 0.02          # xavier_normal
    torch.testing.assert_close(fam.build_model(cfg).W, model.W)           # seeded
    assert not torch.equal(fam.build_model(fam.Config(seed=1)).W, model.W)
    x = torch.rand(4, 50)
    torch.testing.assert_close(model(x), torch.relu(x @ model.W.T @ model.W + model.b))


def test_data_unit_norm_sparse_and_deterministic(fam):
    cfg = fam.Config(n=50, n_points=2000, sparsity=0.9)
    data = fam.make_data(cfg)
    x = data.kernel_x
    assert x.shape == (2000, 50) and len(data.train_idx) == 2000
    nz = x.norm(dim=1) > 0
    torch.testing.assert_close(x[nz].norm(dim=1), torch.ones(int(nz.sum())), atol=1e-4, rtol=0)  # +1e-8 in the norm
    assert abs((x == 0).float().mean().item() - 0.9) < 0.01
    assert x.min() >= 0
    torch.testing.assert_close(data.x[data.test_idx], torch.eye(50))     # one-hot test set
    torch.testing.assert_close(fam.make_data(cfg).x, data.x)
    assert not torch.equal(fam.make_data(fam.Config(n_points=2000, seed=1)).x, data.x)
    dense = fam.make_data(fam.Config(sparsity=0.3, n_points=2000)).kernel_x
    assert abs((dense == 0).float().mean().item() - 0.3) < 0.01


def test_importance_weighted_loss_and_no_accuracy(fam):
    cfg = fam.Config(n=5, n_points=8, importance=0.5)
    data = fam.make_data(cfg)
    out = torch.rand(8, 5)
    y = data.y[data.train_idx]
    I = torch.tensor([1, 0.5, 0.25, 0.125, 0.0625])
    expected = (I * (out - data.x[:8]) ** 2).mean()
    torch.testing.assert_close(fam.loss(out, y), expected)
    assert fam.accuracy(out, y) is None


def test_class_weights_are_importance_to_beta_half(fam):
    cfg = fam.Config(n=4, importance=0.8)
    torch.testing.assert_close(fam.class_weights(cfg, 0.0), torch.ones(4))
    torch.testing.assert_close(fam.class_weights(cfg, 1.0), torch.tensor([1, 0.8, 0.64, 0.512]).sqrt())
    torch.testing.assert_close(fam.class_weights(cfg, 0.3) ** 2, importances(4, 0.8) ** 0.3)


def test_represented_features_hand_built_W():
    W = torch.zeros(3, 6, dtype=torch.float64)
    W[0, 0] = 1.0                   # norm² 1
    W[1, 1] = math.sqrt(0.76)       # just above the threshold: counts
    W[2, 2] = math.sqrt(0.74)       # just below
    W[:, 3] = torch.tensor([0.6, 0.6, 0.0], dtype=torch.float64)   # 0.72: below
    W[:, 4] = torch.tensor([0.6, 0.6, 0.3], dtype=torch.float64)   # 0.81: counts
    np.testing.assert_allclose(feature_norms(W), [1, 0.76, 0.74, 0.72, 0.81, 0], atol=1e-6)
    assert represented_features(W) == 3
    assert represented_features(W, threshold=0.7) == 5


def test_summary_reports_represented_features(fam):
    cfg = fam.Config(n=6, m=3)
    model = fam.build_model(cfg)
    with torch.no_grad():
        model.W.zero_()
        model.W[0, 0] = model.W[1, 3] = 1.0
    assert fam.summary(model, cfg, fam.make_data(cfg))["represented_features"] == 2


# ----------------------------------------------------- kernel and rescaling
def test_rescaling_identity_beta0_and_beta1(fam):
    cfg = fam.Config(n=6, importance=0.8)
    model, x = _random_model(n=6, m=3), _points(N=12, n=6)
    K = empirical_ntk(model, x, reduction="flat")
    K0 = empirical_ntk(model, x, reduction="flat", class_weights=fam.class_weights(cfg, 0.0))
    K1 = empirical_ntk(model, x, reduction="flat", class_weights=fam.class_weights(cfg, 1.0))
    torch.testing.assert_close(K0, K)
    d = importances(6, 0.8).double().sqrt().repeat_interleave(12)         # D^{1/2}, class-major
    torch.testing.assert_close(K1, d[:, None] * K * d[None, :])


@pytest.mark.parametrize("group", ["full", "W", "b"])
def test_closed_form_gram_matches_flat_jacobian(group):
    model, x = _random_model(n=7, m=3, bias_shift=0.5), _points(N=20, n=7)
    w = np.linspace(1.0, 0.3, 7)
    J = flat_jacobian(model, x, groups=None if group == "full" else [group], dtype=torch.float64)
    Jw = (J.view(7, 20, -1) * torch.as_tensor(w)[:, None, None]).reshape(140, -1)
    st = tms.TMSStats.from_model(model, x)
    np.testing.assert_allclose(st.gram(w, group), (Jw.T @ Jw).numpy(), atol=1e-10)
    Y = np.stack([(J.view(7, 20, -1)[a].T @ x[:, a]).numpy() for a in range(7)])
    np.testing.assert_allclose(st.projections(group), Y, atol=1e-12)


def test_gram_trick_equals_dense_eigendecomposition(fam):
    cfg = fam.Config(n=7, importance=0.8)
    model, x = _random_model(n=7, m=3, bias_shift=0.3), _points(N=15, n=7)
    w = fam.class_weights(cfg, 0.5).double()
    K = empirical_ntk(model, x, reduction="flat", class_weights=w, dtype=torch.float64)   # (105, 105)
    dvals, dvecs = top_eigenpairs(K, 12)
    # the generic Gram trick on the explicit Jacobian (what `spectrum --reduction flat` runs)
    gvals, gvecs = top_eigenpairs(model, 12, x=x, class_weights=w, method="gram", dtype=torch.float64)
    np.testing.assert_allclose(gvals, dvals, rtol=1e-9, atol=1e-9 * dvals[0])
    np.testing.assert_allclose(np.abs(np.sum(gvecs * dvecs, axis=0)), 1.0, atol=1e-7)
    # the closed-form Gram of entk_core.families.tms.analysis: same eigenvalues and the same heatmap
    st = tms.TMSStats.from_model(model, x)
    vals, U = tms.gram_top_eigenpairs(st.gram(w.numpy()), 12)
    np.testing.assert_allclose(vals, dvals, rtol=1e-9, atol=1e-9 * dvals[0])
    H = tms.heatmap_from_gram(st.projections(), st.xnorm, w.numpy(), vals, U)
    np.testing.assert_allclose(H, cosine_heatmap(dvecs, tms_feature_vectors(x)), atol=1e-7)


def test_gram_eigenpairs_beyond_rank_are_zero():
    model, x = _random_model(n=4, m=2), _points(N=6, n=4)
    st = tms.TMSStats.from_model(model, x)
    vals, U = tms.gram_top_eigenpairs(st.gram(), 20)   # P = 12 < 20
    assert vals.shape == (20,) and np.all(vals[12:] == 0) and np.all(U[:, 12:] == 0)
    H = tms.heatmap_from_gram(st.projections(), st.xnorm, None, vals, U)
    assert np.all(np.isfinite(H)) and np.all(H[:, 12:] == 0)


# ------------------------------------------------------------ run-level API
@pytest.fixture()
def tiny_tms_run(tmp_path, fam):
    from entk_core.workflows.training import train

    return train(fam, fam.Config(n=8, m=3, n_points=40, sparsity=0.6, epochs=30, lr=1e-2, checkpoint_every=10),
                 tmp_path / "runs" / "tiny-tms")


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
def test_tms_page(tmp_path, fam, tiny_run_dir):
    import shutil

    from streamlit.testing.v1 import AppTest

    from entk_core.store.runs import runs_root
    from entk_core.workflows.training import train

    root = runs_root()  # tmp, from conftest
    shutil.copytree(tiny_run_dir, root / "a-mlp")
    train(fam, fam.Config(n=8, m=3, n_points=40, sparsity=0.6, epochs=20, lr=1e-2, checkpoint_every=10),
          root / "b-tms")

    def page(run_name):
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
        at.session_state["run"] = run_name
        at.run()
        at.switch_page("app_pages/tms.py")
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
