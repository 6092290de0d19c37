"""`dynamics` (entk_core.workflows.dynamics) on plug-in families without feature families, against
an independent float64 eNTK; the CLI with its progress lines; the sweep on such a family; caching;
and the bad input of issue 19 (one checkpoint, no labels, checkpoints of different shapes)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _brute import jacobian
from _plain_family import PlainMLPFamily, PlainUnlabelledFamily, plugin_site

from entk_core.families.base import register, unregister
from entk_core.families.run import Run
from entk_core.store.cache import ArrayCache
from entk_core.workflows.dynamics import FIELDS, cached_dynamics, dynamics, dynamics_plan, dynamics_seconds
from entk_core.workflows.estimates import UNIT_OVERHEAD_S
from entk_core.workflows.sweep import sweep
from entk_core.workflows.training import train

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"


@pytest.fixture(scope="module", autouse=True)
def _families():
    for cls in (PlainMLPFamily, PlainUnlabelledFamily):
        register(cls)
    yield
    for cls in (PlainMLPFamily, PlainUnlabelledFamily):
        unregister(cls.name)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, _families) -> Path:
    """plain-mlp, 30 points, epochs 0, 10, 20."""
    out = tmp_path_factory.mktemp("plain") / "plain"
    train(PlainMLPFamily(), PlainMLPFamily.Config(), out)
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return plugin_site(tmp_path_factory.mktemp("site"))


def _cli(site: Path, *args, env=None):
    e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), **(env or {})}
    return subprocess.run([sys.executable, "-m", "entk_core", *map(str, args)], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=600)


# ------------------------------------------------------------- brute force
def _brute_kernel(run: Run, epoch: int) -> np.ndarray:
    """The class-traced eNTK in float64, one autograd.grad per output per example (tests/_brute.py)."""
    J = jacobian(run.load_model(epoch), run.data.kernel_x).numpy()  # (N, C, P)
    return np.einsum("ncp,mcp->nm", J, J) / J.shape[1]


def _alignment(K: np.ndarray, Y: np.ndarray) -> float:
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    A, B = H @ K @ H, H @ Y @ Y.T @ H
    return float(np.sum(A * B) / (np.linalg.norm(A) * np.linalg.norm(B)))


def test_dynamics_matches_an_independent_float64_entk(plain_run, tmp_path):
    run = Run(plain_run)
    res = dynamics(run, cache=ArrayCache(tmp_path / "c"), workers=1)
    assert [r["epoch"] for r in res.rows] == run.epochs == [0, 10, 20]
    assert res.meta["n"] == 30 and res.meta["effective_rank_over"] == "all 30 eigenvalues"
    Ks = {e: _brute_kernel(run, e) for e in run.epochs}
    y = run.data.y.numpy()
    Y = np.eye(3)[y]
    tr, te = run.data.train_idx.numpy(), run.data.test_idx.numpy()

    def cos(a, b):
        return float(np.sum(Ks[a] * Ks[b]) / (np.linalg.norm(Ks[a]) * np.linalg.norm(Ks[b])))

    for i, e in enumerate(run.epochs):
        row, K = res.rows[i], Ks[e]
        lam = np.linalg.eigvalsh(K)[::-1]
        np.testing.assert_allclose(row["top_eigenvalues"], lam[:12], rtol=1e-4, atol=1e-6 * lam[0])
        p = np.clip(lam, 0, None) / np.clip(lam, 0, None).sum()
        p = p[p > 0]
        assert row["effective_rank"] == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-4)
        assert row["target_alignment"] == pytest.approx(_alignment(K, Y), rel=1e-5)
        assert row["kernel_distance_final"] == pytest.approx(1 - cos(e, 20), abs=2e-6)
        if i == 0:
            assert row["kernel_distance_prev"] is None
        else:
            assert row["kernel_distance_prev"] == pytest.approx(1 - cos(run.epochs[i - 1], e), abs=2e-6)
        # pure kernel regression on the train rows, scored on the test rows, ridge 1e-6 · mean diag
        Ktr = K[np.ix_(tr, tr)]
        alpha = np.linalg.solve(Ktr + 1e-6 * np.mean(np.diag(Ktr)) * np.eye(tr.size), Y[tr])
        acc = float(np.mean((K[np.ix_(te, tr)] @ alpha).argmax(1) == y[te]))
        assert row["kernel_regression_test_accuracy"] == pytest.approx(acc, abs=1e-12)
        m = run.metrics_at(e)
        assert row["network_test_accuracy"] == pytest.approx(m["test_acc"]) and \
            row["network_train_accuracy"] == pytest.approx(m["train_acc"])
        assert list(row) == ["epoch", *FIELDS]
    # the distances move: the kernel changes during training, and most at the start
    assert 0 < res.rows[2]["kernel_distance_prev"] and res.rows[2]["kernel_distance_final"] == pytest.approx(0, abs=1e-7)
    assert res.notes == {"kernel_distance_prev": "null at the first checkpoint (epoch 0): it has no previous one"}


def test_workers_match_in_process_and_everything_is_cached(plain_run, tmp_path):
    run = Run(plain_run)
    cache = ArrayCache(tmp_path / "c")
    assert cached_dynamics(run, cache=cache) is None
    plan = dynamics_plan(run, cache=cache)
    assert plan["cached"] is False and plan["to_compute"] == 3 and plan["measured"] == 0
    assert plan["seconds_per_kernel"] > 0
    # the estimate: each of the 3 kernels in this process, at the planner's time (re-estimated: it varies a
    # little from call to call) plus a unit's overhead
    est = dynamics_seconds(run, cache=cache)
    assert est > 3 * UNIT_OVERHEAD_S
    calls = []
    a = dynamics(run, cache=cache, workers=2, progress=lambda d, t, m: calls.append((d, t, m)))
    assert a.meta["executor"] == {"executor": "local", "workers": 2} and a.meta["cache"] == "miss"
    assert calls[-1][0] == calls[-1][1] == len(run.epochs) + 2 and "distances" in calls[-1][2]
    b = dynamics(run, cache=ArrayCache(tmp_path / "c2"), workers=1)
    assert json.dumps(a.rows) == json.dumps(b.rows)  # the same numbers from the worker processes
    # a second call is one read; so is the page's question "is it cached?"
    n = cache.computed
    again = dynamics(run, cache=cache)
    assert again.meta["cache"] == "hit" and again.rows == a.rows and cache.computed == n
    assert cached_dynamics(run, cache=cache).rows == a.rows and dynamics_seconds(run, cache=cache) == 0.0
    assert dynamics_plan(run, cache=cache) == {"cached": True, "checkpoints": 3, "measured": 3, "kernels_cached": 0,
                                                "to_compute": 0, "seconds_per_kernel": None, "kernel_bytes": 30 * 30 * 4}
    # another top: the measures again, from the cached kernels (no kernel to compute)
    assert dynamics_plan(run, top=4, cache=cache)["kernels_cached"] == 3
    # the kernels are cached under analysis.kernel_matrix's key: the Spectrum page reuses them
    from entk_core.workflows import analysis
    assert analysis.kernel_key(run, 10, reduction="trace") in cache
    np.testing.assert_array_equal(analysis.kernel_matrix(run, 10, cache=cache),
                                  analysis.compute_kernel(run, 10, reduction="trace"))
    # another group and top: new measures from the cached kernels where they apply
    c = dynamics(run, "0", top=5, cache=cache, workers=1)
    assert c.meta["group"] == "0" and all(len(r["top_eigenvalues"]) == 5 for r in c.rows)
    assert a.curve("target_alignment").shape == (3,)
    with pytest.raises(ValueError, match="no scalar field 'cliffs'"):
        a.curve("cliffs")


def test_cli_dynamics_and_sweep_on_a_plugin_without_feature_families(site, tmp_path, capsys, monkeypatch):
    from entk_core import cli

    out = tmp_path / "runs" / "plain"
    train(PlainMLPFamily(), PlainMLPFamily.Config(), out)
    # a real process finds the plug-in through its entry point; its worker processes too; and
    # it reports progress in lines on stderr although stderr is not a terminal (a pipe)
    env = {"ENTK_PROGRESS": "auto", "ENTK_CACHE_DIR": str(tmp_path / "c")}
    r = _cli(site, "dynamics", out, "--json", "--workers", 2, env=env)
    assert r.returncode == 0, r.stderr
    o = json.loads(r.stdout)
    assert {"run", "group", "reduction", "checkpoints"} <= set(o) and o["reduction"] == "trace"
    assert o["executor"] == {"executor": "local", "workers": 2}
    assert [list(c) for c in o["checkpoints"]] == [["epoch", *FIELDS]] * 3
    lines = r.stderr.splitlines()
    assert lines and all(line.startswith("dynamics plain: ") for line in lines), r.stderr
    assert lines[-1] == "dynamics plain: 5/5 distances to the last checkpoint"
    # the same run in this process (the family registered here): text, and the sweep
    monkeypatch.setenv("ENTK_CACHE_DIR", str(tmp_path / "c"))
    capsys.readouterr()
    assert cli.main(["dynamics", str(out)]) == 0
    text = capsys.readouterr()
    assert text.err == "" and "eNTK dynamics of the full kernel" in text.out and "(hit," in text.out
    assert "the kernel moves fastest between epochs 0 and 10" in text.out
    assert cli.main(["sweep", str(out), "--json"]) == 0
    sw = json.loads(capsys.readouterr().out)
    assert sw["families"] == {} and sw["peak_epoch"] is None and [row["epoch"] for row in sw["table"]] == [0, 10, 20]
    assert all(all(c["overlap"] == {} for c in row["cliffs"]) for row in sw["table"])
    assert cli.main(["sweep", str(out)]) == 0
    assert "no feature families for this kernel" in capsys.readouterr().out


def test_sweep_without_feature_families_tracks_spectra_and_cliffs(plain_run, tmp_path):
    run = Run(plain_run)
    res = sweep(run, cache=ArrayCache(tmp_path / "c"), workers=1)
    assert res.families == [] and res.overlap.shape == (3, len(res.windows), 0)
    assert res.eigenvalues.shape == (3, 12) and np.isfinite(res.eigenvalues).all()
    assert res.peak_epoch is None and res.primary is None
    json.dumps(res.to_json())
    assert run.family.offers("sweep") and not run.family.offers("align")


# --------------------------------------------------------------- bad input
def _cache_files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "locks" not in p.parts and "cache.db" not in p.name}


def test_one_checkpoint_gets_null_distances_and_a_sentence(tmp_path):
    fam = PlainMLPFamily()
    run = train(fam, fam.Config(epochs=1, checkpoint_every=5), tmp_path / "one")
    assert run.epochs == [0, 1]
    m = json.loads((run.path / "manifest.json").read_text())
    m["checkpoints"] = m["checkpoints"][1:]
    (run.path / "manifest.json").write_text(json.dumps(m))
    res = dynamics(Run(run.path), cache=ArrayCache(tmp_path / "c"))
    (row,) = res.rows
    assert row["kernel_distance_prev"] is None and row["kernel_distance_final"] is None
    assert res.notes["kernel_distance_prev"] == res.notes["kernel_distance_final"] == (
        "the run has one checkpoint (epoch 1), so there is no other kernel to compare its kernel with")
    assert row["target_alignment"] is not None and row["effective_rank"] > 1


def test_family_without_labels_gets_no_alignment_and_the_reason(tmp_path):
    fam = PlainUnlabelledFamily()
    run = train(fam, fam.Config(epochs=10, checkpoint_every=5), tmp_path / "u")
    res = dynamics(run, cache=ArrayCache(tmp_path / "c"))
    assert all("target_alignment" not in r and "kernel_regression_test_accuracy" not in r for r in res.rows)
    assert res.notes["target_alignment"] == ("the plain-unlabelled family declares no targets for its inputs "
                                             "(its y has shape [30, 0]: neither class labels nor (N, 3) regression targets)")
    assert res.notes["kernel_regression_test_accuracy"] == "the plain-unlabelled family has no class labels (no accuracy to compare)"
    assert all(r["network_test_accuracy"] is None for r in res.rows)
    assert all(r["kernel_distance_final"] is not None and r["effective_rank"] > 0 for r in res.rows)


def test_checkpoints_of_different_shapes_are_refused_naming_two_epochs(plain_run, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load, save

    from entk_core import cli

    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("ENTK_CACHE_DIR", str(cache_dir))
    good = tmp_path / "good"
    shutil.copytree(plain_run, good)
    dynamics(Run(good))  # something cached already
    before = _cache_files(cache_dir)
    bad = tmp_path / "bad"
    shutil.copytree(plain_run, bad)
    m = json.loads((bad / "manifest.json").read_text())
    entry = m["checkpoints"][1]  # epoch 10: a wider hidden layer, as a resized model would save
    st = load((bad / entry["file"]).read_bytes())
    st["0.weight"], st["0.bias"] = torch.zeros(9, 3), torch.zeros(9)
    data = save(st)
    (bad / entry["file"]).write_bytes(data)
    entry["sha256"] = hashlib.sha256(data).hexdigest()
    (bad / "manifest.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert cli.main(["dynamics", str(bad)]) == 2
    err = capsys.readouterr().err
    # one line naming the two epochs, and nothing cached was lost or changed
    assert err == (f"error: {bad}: the checkpoints at epochs 0 and 10 have different parameter shapes "
                   "('0.bias' is [8] at epoch 0 and [9] at epoch 10); a run's checkpoints "
                   "must all be the same model\n")
    assert _cache_files(cache_dir) == before
    assert cli.main(["sweep", str(bad)]) == 2  # the sweep refuses the series the same way
    assert "epochs 0 and 10 have different parameter shapes" in capsys.readouterr().err
    assert _cache_files(cache_dir) == before


def test_flattened_kernel_with_few_parameters_is_kept_as_its_jacobian(tmp_path):
    """TMS (flat reduction, 15 parameters < 100 kernel rows): every measure from J, never K, and
    equal to the dense float64 kernel's; its targets are the reconstruction targets."""
    from entk_core.families.base import get_family

    fam = get_family("tms")
    run = train(fam, fam.Config(n=5, m=2, n_points=20, epochs=40, checkpoint_every=20), tmp_path / "tms")
    cache = ArrayCache(tmp_path / "c")
    res = dynamics(run, cache=cache, workers=1)
    assert res.meta["reduction"] == "flat" and res.meta["n"] == 100
    assert any(k.startswith("flat-jacobian|") for k in cache._cache.iterkeys())
    Ks = {}
    for e in run.epochs:
        J = jacobian(run.load_model(e), run.data.kernel_x).numpy()  # (N, C, P)
        Jf = J.transpose(1, 0, 2).reshape(-1, J.shape[2])  # class-major rows c·N + n
        Ks[e] = Jf @ Jf.T
    Y = run.data.y[run.data.kernel_idx, 0].double().numpy().T.reshape(-1, 1)  # class-major targets
    for i, e in enumerate(run.epochs):
        row, K = res.rows[i], Ks[e]
        lam = np.linalg.eigvalsh(K)[::-1]
        np.testing.assert_allclose(row["top_eigenvalues"][:15], lam[:15], rtol=1e-4, atol=1e-6 * lam[0])
        p = np.clip(lam, 0, None) / np.clip(lam, 0, None).sum()
        p = p[p > 1e-12]
        assert row["effective_rank"] == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-4)
        assert row["target_alignment"] == pytest.approx(_alignment(K, Y), rel=1e-5)
        last = Ks[run.epochs[-1]]
        cos = np.sum(K * last) / (np.linalg.norm(K) * np.linalg.norm(last))
        assert row["kernel_distance_final"] == pytest.approx(1 - cos, abs=2e-6)
    assert "kernel_regression_test_accuracy" in res.notes and "no class labels" in res.notes["kernel_regression_test_accuracy"]


def test_shipped_units_rebuild_the_run_from_bytes(plain_run, tmp_path):
    """With an executor given (as on Ray), each unit carries the manifest and its checkpoint's bytes."""
    from entk_core.workflows.executors import InlineExecutor

    run = Run(plain_run)
    a = dynamics(run, cache=ArrayCache(tmp_path / "a"), executor=InlineExecutor())
    b = dynamics(run, cache=ArrayCache(tmp_path / "b"), workers=1)
    assert a.rows == b.rows and a.meta["executor"] == {"executor": "inline"}


def test_landmarks_are_per_epoch_on_uneven_intervals():
    from entk_core.workflows.dynamics import landmarks

    rows = [{"epoch": 0, "kernel_distance_prev": None, "target_alignment": 0.1},
            {"epoch": 10, "kernel_distance_prev": 0.02, "target_alignment": 0.3},   # 0.002 / epoch, +0.02 / epoch
            {"epoch": 100, "kernel_distance_prev": 0.09, "target_alignment": 0.5},  # 0.001 / epoch
            {"epoch": 110, "kernel_distance_prev": 0.001, "target_alignment": 0.45}]
    lm = landmarks(rows, onset=75.5)
    assert lm["kernel_fastest"] == {"from": 0, "to": 10, "midpoint": 5.0, "per_epoch": pytest.approx(0.002)}
    assert lm["alignment_peak"] == {"epoch": 100, "value": 0.5}
    assert lm["alignment_fastest_rise"]["from"] == 0 and lm["alignment_fastest_rise"]["to"] == 10
    assert lm["grokking_onset"] == 75.5
    assert landmarks(rows[:1]) == {"kernel_fastest": None, "alignment_peak": {"epoch": 0, "value": 0.1},
                                   "alignment_fastest_rise": None, "grokking_onset": None}


def test_kernels_that_cannot_stay_in_the_cache_are_refused_first(plain_run, tmp_path):
    with pytest.raises(ValueError) as e:
        dynamics(Run(plain_run), cache=ArrayCache(tmp_path / "c", size_limit=10_000))
    assert str(e.value) == ("the 3 kernels of 30 rows (trace) need 10.8 kB in the cache, more than its limit of "
                            "10 kB; choose a smaller --reduction or --group, or raise ENTK_CACHE_SIZE_LIMIT")


def test_a_cached_spectrum_does_not_make_its_kernel_free(plain_run):
    """The Spectrum page or a sweep caches a checkpoint's spectrum, not its kernel: dynamics
    still computes that kernel, and its estimate says so (it read 0 s a kernel, 3.9 s in all
    where the p = 29 run took 12.4 s, after the Grokking page's sweep)."""
    from entk_core.store.cache import default_cache
    from entk_core.workflows import analysis
    from entk_core.workflows.dynamics_measures import DEFAULT_RIDGE, request

    run = Run(plain_run)
    req = request(run, None, None, None, DEFAULT_RIDGE)
    analysis.spectrum(run, run.epochs[-1], group=req.group, reduction=req.reduction, top=req.top, cache=default_cache())
    assert analysis.estimate_spectrum(run, run.epochs[-1], group=req.group, reduction=req.reduction,
                                      top=req.top)["cached"] is True
    plan = dynamics_plan(run)
    assert plan["to_compute"] == len(run.epochs) - 1 and plan["kernels_cached"] == 1  # that one is kept too
    assert plan["seconds_per_kernel"] > 0


def test_the_sweep_after_dynamics_reads_its_kernels_instead_of_computing_them(plain_run, tmp_path, monkeypatch):
    """Training dynamics caches every checkpoint's (N, N) kernel; the sweep that follows it on
    that page takes each spectrum from the cached kernel (an eigendecomposition) rather than
    computing the kernel again in a worker (it did: 12.6 s on the p = 29 run where reading
    them takes 9.6 s). Its spectra are those of a sweep on an empty cache, and its estimate
    prices the eigendecompositions without the planner and without computing anything."""
    from entk_core.store.cache import default_cache
    from entk_core.workflows import analysis, estimates
    from entk_core.workflows.sweep import default_spec, resolve_spec

    run = Run(plain_run)
    ref = sweep(run, cache=ArrayCache(tmp_path / "fresh"), workers=1)
    dynamics(run, cache=default_cache(), workers=1)
    spec = resolve_spec(default_spec(run), run)
    computed = default_cache().computed

    def no_planner(*a, **k):
        raise AssertionError("the planner priced a checkpoint whose kernel is cached")

    monkeypatch.setattr(estimates, "spectrum_seconds", no_planner)
    est = estimates.sweep_seconds(run, spec)
    assert est > 0 and default_cache().computed == computed  # estimating computed nothing
    assert all(analysis.spectrum_key(run, e, group=spec.group, reduction=spec.reduction, top=spec.top)
               not in default_cache() for e in run.epochs)

    def no_kernel(*a, **k):
        raise AssertionError("a kernel was computed again")

    monkeypatch.setattr(analysis, "_compute_kernel", no_kernel)
    res = sweep(run, spec, workers=1)
    np.testing.assert_allclose(res.eigenvalues, ref.eigenvalues, rtol=1e-6)
    assert [(w.start, w.end) for w in res.windows] == [(w.start, w.end) for w in ref.windows]
