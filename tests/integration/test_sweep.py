"""Grokking sweeps (entk_core.workflows.sweep), the `sweep` CLI command and the Grokking page."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from entk_core.workflows import analysis
from entk_core.engine.measures import local_first_derivative, subspace_overlap
from entk_core.store.cache import ArrayCache
from entk_core.families.modadd_mlp.features import modadd_families
from entk_core.families.run import open_run
from entk_core.engine.spectra import Cliff, detect_cliffs
from entk_core.engine.measures import family_bases, window_overlaps
from entk_core.engine.spectra import label_cliffs
from entk_core.families.base import SweepSpec
from entk_core.workflows.services import Services
from entk_core.workflows.sweep import default_spec, sweep

REPO = Path(__file__).resolve().parents[2]


def test_window_overlaps_match_subspace_overlap():
    fams = {k: f for k, f in modadd_families(7).items() if k in ("a", "sum", "random")}
    bases = family_bases(fams)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((49, 5))  # not orthonormal: goes through the QR path
    Q, _ = np.linalg.qr(rng.standard_normal((49, 8)))  # orthonormal: used as is
    for V in (X, Q, Q[:, 0]):
        got = window_overlaps(V, bases)
        want = [subspace_overlap(V, f)[0] for f in fams.values()]
        np.testing.assert_allclose(got, want, atol=1e-10)


def test_label_cliffs_finds_the_constant_mode():
    n = 16
    V = np.eye(n)
    V[:, 0] = 1 / np.sqrt(n)
    cl = [Cliff(0, 1, 9.0), Cliff(1, 4, 2.0), Cliff(5, 3, 1.5)]
    assert label_cliffs(cl, V) == ["constant", "cliff 1", "cliff 2"]
    V[:, 0] = np.eye(n)[0]
    assert label_cliffs(cl, V) == ["cliff 1", "cliff 2", "cliff 3"]
    assert label_cliffs([(0, 0), (1, 3)], None) == ["cliff 1", "cliff 2"]


def test_sweep_structure_and_cache_hit(tiny_run_dir, tmp_path):
    run = open_run(tiny_run_dir)
    cache = ArrayCache(tmp_path / "c")
    calls = []
    res = sweep(run, cache=cache, progress=lambda d, t, m: calls.append((d, t)))
    E = len(run.epochs)
    assert list(res.epochs) == run.epochs == [0, 10, 20, 30]
    assert calls[-1][0] == calls[-1][1] == E + 1
    # the family hook: a, b, sum, diff and the random control; windows from the full kernel's last epoch
    assert res.families == ["a", "b", "sum", "diff", "random"] and list(res.dims) == [6] * 5
    ref = analysis.spectrum(run, 30, top=res.spec.top, cache=cache)
    ref_cliffs = detect_cliffs(ref.eigenvalues)  # the same rule as `spectrum`
    assert res.spec.min_ratio is None and ref_cliffs
    assert [(w.start, w.end) for w in res.windows] == [(c.start, c.end) for c in ref_cliffs]
    W, F = len(res.windows), len(res.families)
    assert res.overlap.shape == res.derivative.shape == (E, W, F)
    assert res.eigenvalues.shape[0] == E
    assert np.all(res.overlap >= -1e-9) and np.all(res.overlap <= res.dims[None, None, :] + 1e-9)
    for j in range(W):
        for k in range(F):
            np.testing.assert_allclose(res.derivative[:, j, k], local_first_derivative(res.percent[:, j, k]))
    # each epoch's own cliffs match the cached spectrum at that epoch
    for i, e in enumerate(run.epochs):
        ev = analysis.spectrum(run, e, top=res.spec.top, cache=cache).eigenvalues
        own = detect_cliffs(ev)[: res.spec.max_cliffs]
        assert [(c.start, c.size) for c in res.own_cliffs(i)] == [(c.start, c.size) for c in own]
    assert res.meta["cache"] == "miss"
    n_computed = cache.computed
    calls.clear()
    res2 = sweep(run, cache=cache, progress=lambda d, t, m: calls.append((d, t)))
    assert res2.meta["cache"] == "hit" and cache.computed == n_computed
    np.testing.assert_array_equal(res2.overlap, res.overlap)
    assert res2.onset_epoch == res.onset_epoch and res2.peak_epoch == res.peak_epoch
    assert calls[-1][0] == calls[-1][1]
    obj = res2.to_json()
    text = json.dumps(obj, allow_nan=False)
    assert len(obj["table"]) == E and "onset_epoch" in obj and "peak_epoch" in obj
    assert set(obj["table"][0]["overlap"]) == {w.label for w in res.windows}
    assert json.loads(text)["spec"]["group"] == "full"


def test_worker_processes_match_in_process(tiny_run_dir, tmp_path):
    run = open_run(tiny_run_dir)
    seq = sweep(run, cache=ArrayCache(tmp_path / "a"), workers=1)
    calls = []
    par = sweep(run, cache=ArrayCache(tmp_path / "b"), workers=2, progress=lambda d, t, m: calls.append(d))
    assert par.meta["cache"] == "miss" and calls == sorted(calls) and calls[-1] == len(run.epochs) + 1
    np.testing.assert_allclose(par.eigenvalues, seq.eigenvalues, rtol=1e-4)
    np.testing.assert_allclose(par.overlap, seq.overlap, atol=1e-3)
    assert [w.to_dict() for w in par.windows] == [w.to_dict() for w in seq.windows]


def test_custom_spec_per_layer_and_errors(tiny_run_dir, tmp_path):
    run = open_run(tiny_run_dir)
    cache = ArrayCache(tmp_path / "c")
    spec = SweepSpec(group="net.0", families=("a", "b"), windows=((1, 12),), primary="a", top=20)
    res = sweep(run, spec, cache=cache, workers=1)
    assert res.families == ["a", "b"] and [(w.start, w.end) for w in res.windows] == [(1, 12)]
    assert res.primary == (0, "a") and res.peak_epoch in res.epochs
    assert res.eigenvalues.shape == (4, 20)
    # a different spec is a different cache entry
    res_b = sweep(run, SweepSpec(group="net.3", families=("a", "b"), windows=((1, 12),), top=20), cache=cache)
    assert res_b.meta["cache"] == "miss" and not np.allclose(res_b.overlap, res.overlap)
    # the family's per-layer spec tracks the full kernel's windows
    assert default_spec(run, "net.3").window_group == "full"
    with pytest.raises(ValueError, match="unknown feature families"):
        sweep(run, SweepSpec(families=("nope",)), cache=cache)
    with pytest.raises(ValueError, match="unknown layer group"):
        sweep(run, SweepSpec(group="net.9"), cache=cache)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "entk_core", *map(str, args)], cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=600)


def test_sweep_cli(tiny_run_dir):
    r = _cli("sweep", tiny_run_dir, "--json")
    assert r.returncode == 0, r.stderr
    o = json.loads(r.stdout)
    assert [row["epoch"] for row in o["table"]] == [0, 10, 20, 30]
    assert "onset_epoch" in o and "peak_epoch" in o and o["cache"] == "miss"
    r = _cli("sweep", tiny_run_dir, "--group", "net.0", "--families", "a,b")
    assert r.returncode == 0, r.stderr
    assert "grokking onset" in r.stdout and "epoch    30" in r.stdout
    r = _cli("sweep", tiny_run_dir, "--json")
    assert json.loads(r.stdout)["cache"] == "hit"
    r = _cli("sweep", tiny_run_dir, "--families", "a,zzz")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown feature families")


def _chart_titles(at) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def test_grokking_page(install_run, tiny_run_dir):
    from streamlit.testing.v1 import AppTest

    install_run(tiny_run_dir)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    at.switch_page("app_pages/grokking.py").run()
    assert not at.exception and not at.error
    titles = _chart_titles(at)
    assert any("spectrum at epoch 30" in t for t in titles) and any("Overlap of" in t for t in titles)
    assert any("as a p × p image" in t or "eigenvector" in t for t in titles)
    assert [s.key for s in at.select_slider] == ["epoch"]  # one epoch control: the sidebar's
    at.select_slider(key="epoch").set_value(10).run()
    assert not at.exception and not at.error
    assert any("spectrum at epoch 10" in t for t in _chart_titles(at))
    at.selectbox(key="grok_group").set_value("net.3").run()
    assert not at.exception and not at.error
    assert any("net.3 eNTK spectrum" in t for t in _chart_titles(at))
    assert dict(at.query_params)["group"] == "net.3" and dict(at.query_params)["epoch"] == "10"


@pytest.mark.slow
def test_mlp29_sweep_grokking_and_layers(mlp29_run_dir, tmp_path):
    """The paper's p=29 MLP: the sum/diff window aligns during grokking; the overlap
    derivative peaks within 20 epochs of the grokking onset; layers localise the features."""
    run = open_run(mlp29_run_dir)
    cache = ArrayCache(tmp_path / "c")
    res = sweep(run, cache=cache)
    assert len(res.epochs) == 51
    labels = [w.label for w in res.windows]
    assert labels[:3] == ["constant", "cliff 1", "cliff 2"]
    assert [(w.start, w.end) for w in res.windows[1:3]] == [(1, 56), (57, 112)]
    c1, c2 = res.window_index("cliff 1"), res.window_index("cliff 2")
    last = res.overlap[-1]
    a, b, s, d = (res.family_index(f) for f in ("a", "b", "sum", "diff"))
    assert last[c1, a] >= 27 and last[c1, b] >= 27
    assert last[c2, s] >= 26 and last[c2, d] >= 24.5
    assert res.overlap[0, c2, s] < 10  # not aligned at initialisation
    assert res.primary == (c2, "sum")
    assert res.onset_epoch is not None and 60 <= res.onset_epoch <= 100
    assert abs(res.peak_epoch - res.onset_epoch) <= 20
    assert sweep(run, cache=cache).meta["cache"] == "hit"
    # layerwise (the last checkpoint; per-layer sweeps are exercised on the tiny run):
    # layer 1 carries a and b, layer 2 carries a+b and a-b
    l1 = run.family.align_report(run, 500, services=Services(cache), group="net.0", linearised=False)["cliffs"]
    l2 = run.family.align_report(run, 500, services=Services(cache), group="net.3", linearised=False)["cliffs"]
    o1, o2 = l1[c1]["overlap"], l2[c1]["overlap"]
    assert o1["a"] >= 27 and o1["b"] >= 27 and o1["sum"] + o1["diff"] < 2
    assert o2["sum"] + o2["diff"] > 3 * (o2["a"] + o2["b"])
