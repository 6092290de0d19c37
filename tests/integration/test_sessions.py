"""Long work in worker processes, actions whose estimate covers every phase, answers from the
cache, and pages without stale elements once work is done (issue 22 §3 and its findings)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from entk_core.families.run import open_run
from entk_core.store.cache import ArrayCache
from entk_core.workflows import alignment, baselines, jobs

REPO = Path(__file__).resolve().parents[2]


def _titles(at) -> list[str]:
    import json

    out = []
    for c in at.get("plotly_chart"):
        fig = json.loads(c.proto.spec)
        out.append(str(fig.get("layout", {}).get("title", {}).get("text", "")))
    return out


def test_the_pca_profile_answers_every_size_and_family_with_one_computation(tiny_run_dir, tmp_path):
    """The PCA baseline over training is computed once per run (one SVD per checkpoint) and
    every (window size, families) choice is read from it: the same numbers as measuring the
    top-k principal directions directly, and no further computation."""
    from entk_core.engine.measures import family_bases, window_overlaps
    from entk_core.families.features import families_with_rows

    run = open_run(tiny_run_dir)
    cache = ArrayCache(tmp_path / "c")
    a = alignment.pca_over_training(run, [3, 8], ["a", "sum"], cache=cache)
    assert cache.computed == 1
    b = alignment.pca_over_training(run, [5], ["diff", "b", "a"], cache=cache)
    c = alignment.pca_over_training(run, [10**6], ["sum"], cache=cache)  # above the rank: every direction
    assert cache.computed == 1  # a new choice of families or sizes: no recomputation
    fams = families_with_rows(run.family.feature_families(run.config, run.data, run.load_model(run.epochs[-1])),
                              len(run.data.kernel_idx))
    bases = family_bases(fams)
    for i, e in enumerate(run.epochs):
        H = baselines.hidden_activations(run, e)
        for j, k in enumerate([3, 8]):
            ref = window_overlaps(baselines.pca_directions(H, k), {f: bases[f] for f in ["a", "sum"]})
            np.testing.assert_allclose(a[i, j], ref, rtol=1e-9, atol=1e-12)
        ref = window_overlaps(baselines.pca_directions(H, 5), {f: bases[f] for f in ["diff", "b", "a"]})
        np.testing.assert_allclose(b[i, 0], ref, rtol=1e-9, atol=1e-12)
        full = window_overlaps(baselines.pca_directions(H, 10**6), {"sum": bases["sum"]})
        np.testing.assert_allclose(c[i, 0], full, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="unknown feature families"):
        alignment.pca_over_training(run, [3], ["nope"], cache=cache)


def test_a_job_runs_its_steps_in_order_in_one_niced_worker_with_the_callers_environment(tiny_run_dir, tmp_path,
                                                                                         monkeypatch):
    """Two steps in one worker (the sweep, then the PCA profile) fill the cache the caller
    names in its environment of the moment (not the forkserver's), report progress per step,
    and run at a lower priority than the caller; a step with no run is called without one."""
    cache_dir = tmp_path / "jobcache"
    monkeypatch.setenv("ENTK_CACHE_DIR", str(cache_dir))
    run = open_run(tiny_run_dir)
    n0 = jobs.jobs_started()
    job = jobs.Job(run=str(run.path), steps=[
        {"target": "entk_core.workflows.alignment:grokking_sweep", "kwargs": {"group": "full"}},
        {"target": "entk_core.workflows.baselines:pca_profile", "kwargs": {}, "return": True}]).start()
    seen, nice = set(), []

    def on_progress(done, total, message):
        seen.add(job.step)
        if done and not nice:  # the worker has reported: it set its priority before
            try:
                nice.append(os.getpriority(os.PRIO_PROCESS, job.pid) - os.getpriority(os.PRIO_PROCESS, 0))
            except OSError:
                pass

    job.wait(on_progress, interval=0.02)
    assert jobs.jobs_started() == n0 + 1
    assert set(job.results) == {1}  # only the step marked "return" sends its result back
    assert job.results[1].overlaps([2], ["a"]) is not None
    assert seen <= {0, 1} and 1 in seen or job.step == 1
    if nice:  # lower priority than the caller (by WORKER_NICE, less when the caller is niced near 19)
        assert nice[0] > 0
    cache = ArrayCache(cache_dir)
    assert jobs.cached(alignment.grokking_sweep, run, "full", cache=cache) is not None
    assert jobs.cached(baselines.pca_profile, run, cache=cache) is not None
    bad = jobs.Job(steps=[{"target": "entk_core.workflows.presets:train_preset", "kwargs": {"name": "no-such"}}]).start()
    with pytest.raises(jobs.JobError, match="unknown preset 'no-such'") as info:
        bad.wait(interval=0.05)
    assert info.value.user_error


@pytest.mark.slow
def test_grokking_first_visit_is_one_action_and_families_come_from_the_cache(install_run, tiny_run_dir,
                                                                             monkeypatch):
    """The first visit states both phases' estimates (the sweep, then the PCA baseline) before
    it starts, computes them in one worker job, and then shows the results with no offer,
    Stop button or progress bar left above them. A new choice of families (removing one, any
    subset) starts no job and draws the PCA curves at once; a new window shows its own first
    eigenvector instead of keeping one outside it."""
    from streamlit.testing.v1 import AppTest

    from entk_core.ui import jobs as ui_jobs

    monkeypatch.setattr(ui_jobs, "ASK_ABOVE_S", 0.0)  # the tiny run is quick: ask anyway, as for the p = 29 run
    install_run(tiny_run_dir)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    n_before = jobs.jobs_started()
    at.switch_page("app_pages/grokking.py").run()
    offer = " ".join(i.value for i in at.info)
    assert "estimated at about" in offer and "checkpoints (~" in offer and "then the PCA baseline" in offer, offer
    start = [b for b in at.button if b.label.startswith("Start (")]
    assert len(start) == 1 and jobs.jobs_started() == n_before  # nothing starts before the click
    start[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert jobs.jobs_started() == n_before + 1  # both phases in one worker
    assert not any("estimated at about" in i.value for i in at.info)
    assert not [b for b in at.button if b.label in ("Stop",) or b.label.startswith("Start (")]  # nothing stale
    assert any("Overlap of" in t for t in _titles(at))
    n0 = jobs.jobs_started()
    fams = at.multiselect(key="grok_fams")
    for choice in (fams.value[1:], ["sum"], ["a", "b", "diff"]):
        at.multiselect(key="grok_fams").set_value(choice).run()
        assert not at.exception and not at.error
        assert jobs.jobs_started() == n0  # answered from the cache: no worker, no recomputation
        assert not [p for p in at.get("progress")]
        assert not any("estimated at about" in i.value for i in at.info)
    # the window: an eigenvector left outside a newly chosen window is not kept (nor pinned in the URL)
    res = jobs.cached(alignment.grokking_sweep, open_run(Path(os.environ["ENTK_RUNS_DIR"]) / tiny_run_dir.name), "full")
    cur = at.selectbox(key="grok_window").value
    j = next(k for k in range(len(res.windows)) if k != cur)
    w = res.windows[j]
    outside = w.end + 1 if w.start == 0 else 0
    at.number_input(key="grok_vector").set_value(outside).run()
    assert at.number_input(key="grok_vector").value == outside
    at.selectbox(key="grok_window").set_value(j).run()
    assert not at.exception and not at.error
    assert at.number_input(key="grok_vector").value == w.start
    assert "vector" not in dict(at.query_params)  # the window's own first eigenvector is the default
    assert jobs.jobs_started() == n0


@pytest.mark.slow
def test_training_dynamics_first_visit_is_one_action_of_three_phases(install_run, tiny_run_dir, monkeypatch):
    """The Training dynamics page offers the kernels, the sweep and the animation's frames as
    one action, every phase with its estimate, and computes them in one worker job; the page
    then draws everything with nothing started after it. (It offered the kernels alone,
    "Start (~13 s)" on the p = 29 run, then started the other two by itself: 22.4 s from the
    click to the drawn page.)"""
    from streamlit.testing.v1 import AppTest

    from entk_core.ui import jobs as ui_jobs

    monkeypatch.setattr(ui_jobs, "ASK_ABOVE_S", 0.0)
    install_run(tiny_run_dir)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    n_before = jobs.jobs_started()
    at.switch_page("app_pages/dynamics.py").run()
    offer = " ".join(i.value for i in at.info)
    for phase in ("the kernel at each of 4 checkpoints (~", "then the windows and overlaps of every checkpoint (~",
                  "then the epoch animation's frames (~"):
        assert phase in offer, offer
    start = [b for b in at.button if b.label.startswith("Start (")]
    assert len(start) == 1 and jobs.jobs_started() == n_before
    start[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert jobs.jobs_started() == n_before + 1  # the three phases in one worker, nothing after them
    assert not [p for p in at.get("progress")]
    assert not [b for b in at.button if b.label in ("Stop",) or b.label.startswith("Start (")]
    titles = " ".join(_titles(at))
    assert "played in the browser" in titles and "Overlap of" in titles and "spectrum over training" in titles


def _fake_trainer(monkeypatch, configs: dict):
    """Train the named runs in this process with tiny configs (``name -> (family, overrides)``)
    instead of the paper's presets in a worker: what is under test is the page once the
    training has finished (the worker itself: test_a_job_runs_its_steps...)."""
    from entk_core.families.base import get_family
    from entk_core.store.runs import runs_root
    from entk_core.ui import jobs as ui_jobs
    from entk_core.workflows.training import train

    def fake(label, steps, names):
        for st in steps:
            assert st["target"] == "entk_core.workflows.presets:train_values"
            name = st["kwargs"]["name"]
            fam_name, over = configs[name]
            fam = get_family(fam_name)
            train(fam, fam.config_from_dict(over), runs_root() / name)

    monkeypatch.setattr(ui_jobs, "run_in_worker", fake)


@pytest.mark.slow
def test_training_from_a_family_page_shows_the_new_run_at_once(install_run, tiny_run_dir, monkeypatch):
    """TMS and Transformer, opened on another family's run: once their training finishes the
    page shows the new run (no "not available for this family", no offer to train it again,
    no "Open …" to click)."""
    from streamlit.testing.v1 import AppTest

    install_run(tiny_run_dir)
    tiny_tms = {"n": 6, "m": 2, "n_points": 40, "epochs": 20, "checkpoint_every": 10}
    _fake_trainer(monkeypatch, {
        "tms-m10-s0.3-seed0": ("tms", tiny_tms), "tms-m10-s0.9-seed0": ("tms", {**tiny_tms, "sparsity": 0.9}),
        "tms-m40-s0.9-seed0": ("tms", {**tiny_tms, "m": 3, "sparsity": 0.9}),
        "modadd-transformer-p29-seed2": ("modadd-transformer", {"p": 7, "d_model": 8, "n_heads": 1, "d_mlp": 16,
                                                                "epochs": 20, "checkpoint_every": 10}),
    })
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    at.switch_page("entk_core/families/tms/page.py").run()
    assert any("not available for this family" in i.value for i in at.info)
    at.button(key="tms_train_top").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert not any("not available for this family" in i.value for i in at.info)
    assert at.sidebar.selectbox(key="run").value == "tms-m10-s0.3-seed0"
    assert not [b for b in at.button if b.key and (b.key.startswith("tms_open_") or b.key.startswith("tms_train"))]
    assert any(m.label == "Represented features" for m in at.metric)

    at.sidebar.selectbox(key="run").set_value(tiny_run_dir.name).run()
    at.switch_page("entk_core/families/modadd_transformer/page.py").run()
    assert any("not available for this family" in i.value for i in at.info)
    at.button(key="train_transformer").click().run()
    assert not at.exception
    assert at.sidebar.selectbox(key="run").value == "modadd-transformer-p29-seed2"
    assert not any("not available for this family" in i.value for i in at.info)
    assert not [b for b in at.button if b.key == "train_transformer" or (b.key or "").startswith("open_")]


@pytest.mark.slow
def test_compare_on_the_alignment_page_changes_the_table_and_draws_over_the_spectrum(install_run, tiny_run_dir):
    """"Compare with" adds the compared checkpoint's overlaps of the same directions to the
    table, and its spectrum is drawn over this one (not hidden under it)."""
    import json

    from streamlit.testing.v1 import AppTest

    install_run(tiny_run_dir)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    at.switch_page("app_pages/alignment.py").run()
    assert not at.exception and not at.error
    before = [list(d.value.columns) for d in at.dataframe]
    at.selectbox(key="align_compare").set_value("10").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    cols = [list(d.value.columns) for d in at.dataframe]
    assert cols != before and any("eNTK · epoch 10" in c for c in cols), cols
    spec = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                if "click an eigenvalue" in str(json.loads(c.proto.spec)["layout"]["title"]["text"]))
    names = [t.get("name") for t in spec["data"]]
    assert names.index("epoch 10") > names.index("eigenvalue")  # drawn over the main spectrum


def test_viewer_mode_refuses_an_action_whose_phases_together_are_over_its_limit(install_run, tiny_run_dir,
                                                                                 monkeypatch):
    """In viewer mode an uncached action is refused in one line naming it and its estimate
    (all its phases together) when that is over ENTK_VIEWER_MAX_SECONDS: no worker starts."""
    from streamlit.testing.v1 import AppTest

    install_run(tiny_run_dir)
    monkeypatch.setenv("ENTK_VIEWER", "1")
    monkeypatch.setenv("ENTK_VIEWER_MAX_SECONDS", "0")
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    n0 = jobs.jobs_started()
    at.switch_page("app_pages/grokking.py").run()
    assert not at.exception and not at.error
    lines = [i.value for i in at.info if "viewer mode:" in i.value and "not cached" in i.value]
    assert len(lines) == 1 and "The grokking view" in lines[0] and "limit 0 s" in lines[0], lines
    assert jobs.jobs_started() == n0 and not [b for b in at.button if b.label.startswith("Start (")]
