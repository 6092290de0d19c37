"""What the pages show comes from workflows (views, estimates) and equals what the family's
own analysis and the sweep compute (the pages only draw)."""
from __future__ import annotations

import numpy as np
import pytest

from entk_core.families.run import open_run
from entk_core.workflows import alignment, analysis, estimates, views
from entk_core.workflows.sweep import CONSTANT_LABEL

pytestmark = pytest.mark.slow


def test_the_generic_cliff_view_equals_the_mlp_analysis(mlp29_run_dir):
    """Generic Alignment view == the MLP's own analyse_cliff (the CLI's align report): same
    rotation, same correlations before and after, same rotated directions, same overlaps."""
    from entk_core.families.modadd_mlp import analysis as ma

    run = open_run(mlp29_run_dir)
    e = run.epochs[-1]
    res = analysis.spectrum(run, e)
    V = res.eigenvectors
    inputs = views.view_inputs(run, e, rows=V.shape[0])
    assert list(inputs.families) == ["a", "b", "sum", "diff", "random"]
    assert inputs.features == ["a", "b", "sum", "diff"] and inputs.controls == ["random"]
    assert inputs.activations.shape == (841, 512)
    wins = [w for w in views.cliff_windows(res) if w[0] != CONSTANT_LABEL]
    assert [(s, t) for _, s, t, _ in wins[:2]] == [(1, 56), (57, 112)]
    for (lab, s, t, _), kind in zip(wins[:2], ("axis", "sumdiff")):
        cv = views.cliff_view(run, V, (lab, s, t), inputs, chosen=["a", "b"], rotate=True)
        ref = ma.analyse_cliff(V[:, s:t + 1], inputs.families, 29, bases=inputs.bases)
        assert cv.rotation == ref["rotation"] == kind
        assert cv.mean_best_corr == {"raw": ref["mean_best_corr"]["before"], "rotated": ref["mean_best_corr"]["after"]}
        assert np.allclose(cv.rotated, ref["rotated"]) and cv.directions is cv.rotated
        H, rows = alignment.direction_correlations(ref["rotated"], inputs.families, ["a", "b"])
        assert np.allclose(cv.heatmap, H) and cv.row_labels == rows and cv.column_labels[0] == "rotated direction 0"
        assert {r["family"]: r["eNTK"] for r in cv.table} == ref["overlap"]
        assert all(r["PCA"] is not None for r in cv.table)
        vec, name = cv.direction_at(s + 2)
        assert np.allclose(vec, ref["rotated"][:, 2]) and name == f"rotated direction 2 of the cliff (position {s + 2})"
        assert cv.direction_at(t + 1) == (None, f"eigenvector {t + 1}")
    raw = views.cliff_view(run, V, wins[0][:3], inputs, chosen=[], rotate=False)
    assert raw.rotated is None and raw.heatmap is None and raw.mean_best_corr["rotated"] is None
    assert np.array_equal(raw.directions, V[:, 1:57])
    label, corr = views.best_match(V[:, 1], inputs)
    assert label.split()[0] in ("a", "b") and 0 < corr <= 1


def test_overlap_curves_and_estimates_of_a_sweep(tiny_run_dir):
    run = open_run(tiny_run_dir)
    before = estimates.sweep_seconds(run, group="full")
    assert before is not None and before > 0  # nothing cached: the planner's estimate per checkpoint
    sw = alignment.grokking_sweep(run, "full")
    assert estimates.sweep_seconds(run, group="full") == 0.0  # every checkpoint's spectrum is cached now
    fams = ["a", "sum"]
    w = sw.primary[0] if sw.primary else 0
    # the PCA baseline's estimate: one checkpoint timed here, times the number of checkpoints; 0 once cached
    pe = estimates.pca_over_training_seconds(run)
    assert pe is not None and pe > 0 and estimates.pca_over_training_seconds(run) == pe
    pca = alignment.pca_over_training(run, [sw.windows[w].size], fams)
    assert estimates.pca_over_training_seconds(run) == 0.0  # the run's PCA profile serves every size and family
    cv = views.overlap_curves(sw, w, fams, pca=pca)
    k = sw.family_index("sum")
    assert np.array_equal(cv.curves[f"sum ({sw.dims[k]}-dim)"], sw.percent[:, w, k])
    assert np.array_equal(cv.derivatives[f"sum ({sw.dims[k]}-dim)"], sw.derivative[:, w, k])
    assert np.allclose(cv.curves["sum · PCA"], 100 * pca[:, 0, 1] / sw.dims[k]) and cv.dashed == ["a · PCA", "sum · PCA"]
    if sw.peak_epoch is not None:
        assert cv.markers[f"peak {sw.peak_epoch:g}"] == sw.peak_epoch
    plain = views.overlap_curves(sw, w, ["sum"], with_dims=False, peak_of="sum")
    assert list(plain.curves) == ["sum"] and all(m.endswith("(sum)") for m in plain.markers if m.startswith("peak"))
    rows = views.curve_rows(cv)
    assert [r["epoch"] for r in rows] == [int(e) for e in sw.epochs] and set(rows[0]) == {"epoch", *cv.curves}
    assert views.overlap_rows(sw, 0, str)[w] == {"window": str(w), **{f: round(float(sw.overlap[0, w, j]), 2)
                                                                     for j, f in enumerate(sw.families)}}
    other = views.overlap_curves(sw, w, ["sum"], other=sw, other_name="again")
    assert np.allclose(other.curves["sum · again"], sw.percent[:, w, k])


def test_estimates_say_nothing_for_what_cannot_run(tiny_run_dir, tmp_path):
    from entk_core.families.base import get_family
    from entk_core.workflows.training import train

    run = open_run(tiny_run_dir)
    assert estimates.spectrum_seconds(run, group="no-such-group") is None  # refused at once, with its message
    fam = get_family("tms")
    tms = train(fam, fam.Config(n=5, m=2, n_points=20, epochs=2, checkpoint_every=1), tmp_path / "tms")
    assert estimates.pca_over_training_seconds(tms) is None  # TMS declares no hidden activations
    assert estimates.spectrum_seconds(tms, group="full") >= 0


def test_a_sweep_of_small_units_is_estimated_from_timed_units(tmp_path, monkeypatch):
    """From 8 uncached checkpoints on, a unit the planner puts under MEASURE_UNIT_BELOW_S is
    timed: the last two checkpoints' spectra are computed (and kept in the cache), and the
    estimate is the workers' start plus the rest of the units at the faster one's time, shared
    by the workers. The timing happens once; a larger unit takes the planner's estimate and
    computes nothing."""
    import os

    from entk_core.families.base import get_family
    from entk_core.workflows.sweep import default_spec, resolve_spec
    from entk_core.workflows.training import train

    fam = get_family("modadd-mlp")
    run = train(fam, fam.Config(p=5, width=16, epochs=9, checkpoint_every=1, seed=0), tmp_path / "r")
    assert len(run.epochs) == 10
    spec = resolve_spec(default_spec(run, "full"), run)
    monkeypatch.setattr(estimates, "busy_factor", lambda: 1.0)  # the load is not part of this test
    workers = min(os.cpu_count() or 1, 4)

    threshold = estimates.MEASURE_UNIT_BELOW_S  # with nothing under it: the planner, nothing computed
    monkeypatch.setattr(estimates, "MEASURE_UNIT_BELOW_S", 0.0)
    p_est = estimates.sweep_seconds(run, spec)
    assert p_est > 0 and estimates._uncached(run, spec, run.epochs) == run.epochs
    monkeypatch.setattr(estimates, "MEASURE_UNIT_BELOW_S", threshold)

    est = estimates.sweep_seconds(run, spec)
    assert estimates._uncached(run, spec, run.epochs) == run.epochs[:-2]  # the two timed units are kept
    key = (str(run.path), run.checkpoint_sha(run.epochs[-1]), spec.group, spec.reduction, spec.top)
    unit = estimates._SWEEP_UNIT[key]
    assert unit > 0
    assert est == pytest.approx(estimates.worker_start_seconds() + 8 * (unit + estimates.UNIT_OVERHEAD_S) / workers)

    def no_compute(*a, **k):
        raise AssertionError("the unit was timed again")

    with monkeypatch.context() as m:
        m.setattr(analysis, "spectrum", no_compute)
        assert estimates.sweep_seconds(run, spec) == est  # the timed unit is reused, nothing computed
    sw = alignment.grokking_sweep(run, "full")  # the sweep reads the timed unit from the cache
    assert len(sw.epochs) == 10
