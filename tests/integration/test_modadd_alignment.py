"""Fourier-feature alignment of the modular-addition MLP: report helpers, `align` CLI, Alignment page."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from entk_core.families.modadd_mlp import analysis as ma
from entk_core.families.modadd_mlp.features import modadd_families
from entk_core.families.run import open_run
from entk_core.workflows.services import Services

REPO = Path(__file__).resolve().parents[2]


def _families(p):
    return {k: f for k, f in modadd_families(p).items() if k in ma.REPORT_FAMILIES}


def _mixed_block(fams, names, p, seed=0):
    """Orthonormal basis of the (centred) span of the named families, randomly rotated
    (what eigh returns inside a degenerate cliff)."""
    F = np.hstack([fams[n].matrix for n in names])
    F = F - F.mean(0)
    Q, _ = np.linalg.qr(F)
    R, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((Q.shape[1], Q.shape[1])))
    return Q @ R


@pytest.mark.parametrize("names, kind", [(("a", "b"), "axis"), (("sum", "diff"), "sumdiff")])
def test_rotation_makes_each_direction_one_fourier_mode(names, kind):
    p = 11
    fams = _families(p)
    block = _mixed_block(fams, names, p)
    info = ma.analyse_cliff(block, fams, p)
    assert info["rotation"] == kind
    K = 2 * (p // 2)
    for n in names:
        assert info["overlap"][n] == pytest.approx(K, abs=1e-6)
        assert info["overlap_after"][n] == pytest.approx(info["overlap"][n], abs=1e-6)  # rotation-invariant
    assert info["mean_best_corr"]["before"] < 0.7
    assert info["mean_best_corr"]["after"] > 0.99 and info["frac_above_0.9"]["after"] == 1.0
    fam_of = [lab.split()[0] for lab in info["best_after"]]
    assert sorted(set(fam_of)) == sorted(names) and fam_of.count(names[0]) == K
    U = info["rotated"]
    np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), atol=1e-10)


def test_eigenvector_image_and_power():
    p, k = 7, 2
    a, b = np.divmod(np.arange(p * p), p)
    img, power, freqs = ma.eigenvector_image(np.cos(2 * np.pi * k * a / p), p)
    assert img.shape == power.shape == (p, p) and list(freqs) == [-3, -2, -1, 0, 1, 2, 3]
    peaks = {(int(freqs[i]), int(freqs[j])) for i, j in zip(*np.nonzero(power > 0.1))}
    assert peaks == {(k, 0), (-k, 0)} and power.sum() == pytest.approx(1.0)
    _, power, _ = ma.eigenvector_image(np.sin(2 * np.pi * k * (a + b) / p), p)
    assert {(int(freqs[i]), int(freqs[j])) for i, j in zip(*np.nonzero(power > 0.1))} == {(k, k), (-k, -k)}
    with pytest.raises(ValueError, match="expected p"):
        ma.eigenvector_image(np.zeros(10), p)


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
    return subprocess.run([sys.executable, "-m", "entk_core", *map(str, args)], cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=600)


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
    assert any("phase-insensitive correlation" in t for t in titles)
    assert any("as a p × p image" in t for t in titles)
    at.toggle(key="align_rotated").set_value(False).run()
    assert not at.exception and not at.error
    assert any("raw eigenvectors" in t for t in _titles(at))
    at.number_input(key="align_vector").set_value(3).run()
    assert any(t.startswith("eigenvector 3 as") for t in _titles(at))
    at.selectbox(key="align_group").set_value("net.0").run()
    assert not at.exception and not at.error


def test_alignment_page_other_family_shows_info(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from entk_core.families.base import get_family, list_families
    from entk_core.workflows.training import train

    if "tms" not in list_families():
        pytest.skip("no TMS family registered")
    fam = get_family("tms")
    root = tmp_path / "runs"
    train(fam, fam.Config(n=5, m=2, n_points=20, epochs=2, checkpoint_every=1), root / "tms-tiny")
    monkeypatch.setenv("ENTK_RUNS_DIR", str(root))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    at.switch_page("app_pages/alignment.py").run()
    assert not at.exception and not at.error
    assert any("needs a modular-arithmetic run" in i.value for i in at.info)


@pytest.mark.slow
def test_mlp29_alignment_figures(mlp29_run_dir):
    """The Done figures at the last epoch of the paper's p=29 MLP."""
    run = open_run(mlp29_run_dir)
    rep = run.family.align_report(run, 500, services=Services())
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
def test_mlp29_pages(install_run, mlp29_run_dir):
    from streamlit.testing.v1 import AppTest

    install_run(mlp29_run_dir)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=600).run()
    for page in ("app_pages/grokking.py", "app_pages/alignment.py"):
        at.switch_page(page).run()
        assert not at.exception and not at.error
        assert at.get("plotly_chart")
