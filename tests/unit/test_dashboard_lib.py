"""Unit tests of the dashboard's library side: figures, baselines, alignment measures,
exports and the worker jobs (no Streamlit, no training)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def test_no_pages_folder_next_to_the_app():
    """A ``pages/`` folder beside app.py puts Streamlit's first run in MPA-v1 mode and shows a
    'Page not found' dialog on the first deep link (streamlit#8860): the pages live in app_pages/."""
    assert not (REPO / "pages").exists()
    assert (REPO / "app_pages" / "spectrum.py").exists()


def test_app_does_nothing_when_a_worker_imports_it(tmp_path):
    """Spawned sweep workers of the server import app.py as ``__mp_main__``: it must not run."""
    import runpy
    import sys

    before = set(sys.modules)
    runpy.run_path(str(REPO / "app.py"), run_name="__mp_main__")
    assert not any(m == "streamlit" or m.startswith("app_pages") for m in set(sys.modules) - before)


def test_stagger_rows_never_overlap():
    from entk_core.figures import stagger_rows

    centres, widths = [0.0, 0.5, 1.0, 30.0, 30.2], [2.0] * 5
    rows = stagger_rows(centres, widths)
    for i in range(5):
        for j in range(i + 1, 5):
            if rows[i] == rows[j]:
                assert abs(centres[i] - centres[j]) >= widths[i], (i, j, rows)
    assert rows[3] == 0  # far away: back on the first row


def test_spectrum_figure_names_the_constant_mode_and_numbers_cliffs_after_it():
    from entk_core.engine.spectra import Cliff
    from entk_core.figures import spectrum_figure

    vals = np.r_[10.0, np.full(4, 1.0), np.full(4, 0.1), np.full(10, 1e-3)]
    cl = [Cliff(0, 1, 10.0), Cliff(1, 4, 10.0), Cliff(5, 4, 100.0)]
    fig = spectrum_figure(vals, cl, labels=["constant", "cliff 1", "cliff 2"], log=True)
    texts = [a.text for a in fig.layout.annotations]
    assert texts == ["constant mode: 1", "cliff 1: 4", "cliff 2: 4"]
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.dtick == 1 and fig.layout.yaxis.exponentformat == "power"


def test_family_colours_do_not_depend_on_the_selection():
    from entk_core.figures import family_color

    assert family_color("sum (28-dim)") == family_color("sum") == family_color("sum · PCA")
    assert family_color("a") != family_color("b")
    assert family_color("something new") == family_color("something new")


def test_accuracy_figure_uses_human_names_and_percent():
    from entk_core.figures import accuracy_figure

    fig = accuracy_figure([1, 2], {"train_acc": [0.5, 1.0], "test_acc": [0.1, None]}, current=2,
                          markers={"onset 1.5": 1.5})
    names = [t.name for t in fig.data]
    assert "train accuracy" in names and "test accuracy" in names and "epoch 2" in names and "onset 1.5" in names
    assert max(fig.data[0].y) == 100.0 and not fig.layout.annotations  # names in the legend, no labels to overlap


def test_grid_image_puts_a_sum_mode_on_the_diagonal():
    from entk_core.figures import grid_image

    p, k = 7, 2
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    v = np.cos(2 * np.pi * k * (a + b) / p).reshape(-1)
    img, power, freqs = grid_image(v, p)
    assert np.allclose(img.reshape(-1), v)
    i, j = np.unravel_index(np.argmax(power), power.shape)
    assert abs(freqs[i]) == k and freqs[i] == freqs[j]
    assert power.sum() == pytest.approx(1.0)


def test_pca_directions_are_the_left_singular_vectors_of_the_centred_activations():
    from entk_core.workflows.baselines import pca_directions, random_directions

    g = np.random.default_rng(0)
    H = g.standard_normal((50, 8)) @ np.diag([5, 4, 3, 2, 1, 0.5, 0.2, 0.1])
    P = pca_directions(H, 3)
    U = np.linalg.svd(H - H.mean(0), full_matrices=False)[0][:, :3]
    assert np.allclose(np.abs(P.T @ U), np.eye(3), atol=1e-10)
    R = random_directions(50, 4, seed=1)
    assert np.allclose(R.T @ R, np.eye(4)) and np.allclose(R, random_directions(50, 4, seed=1))


def test_principal_angles_of_rotated_subspaces():
    from entk_core.workflows.alignment import principal_angles

    e = np.eye(6)
    U = e[:, :2]
    th = np.radians(30)
    W = np.stack([e[:, 0], np.cos(th) * e[:, 1] + np.sin(th) * e[:, 2]], axis=1)
    assert np.allclose(principal_angles(U, W), [0.0, 30.0], atol=1e-8)


def test_window_table_and_baselines():
    from entk_core.families.base import FeatureFamily
    from entk_core.workflows.alignment import window_table

    n = 40
    g = np.random.default_rng(0)
    F = g.standard_normal((n, 3))
    F -= F.mean(0)
    Q = np.linalg.qr(F)[0]
    V = np.hstack([Q, np.linalg.qr(g.standard_normal((n, 5)))[0]])
    H = np.hstack([F * 10, 0.01 * g.standard_normal((n, 4))])  # the top 3 principal directions span F
    rows = window_table(V, [("cliff 1", 0, 2)], {"f": FeatureFamily("f", F)}, H=H)
    (r,) = rows
    assert r["entk"] == pytest.approx(3.0, abs=1e-3) and r["pca"] == pytest.approx(3.0, abs=1e-2)
    assert r["random"] < 1.5 and r["size"] == 3 and r["dim"] == 3


def test_exports_are_plain_files():
    from entk_core.workflows.export import array_csv, arrays_npz, table_csv

    a = np.arange(6.0).reshape(3, 2)
    z = np.load(io.BytesIO(arrays_npz({"a": a, "v": a[:, 0]})), allow_pickle=False)
    assert np.array_equal(z["a"], a)
    assert array_csv(a[:, 0]).decode().splitlines() == ["index,value", "0,0.0", "1,2.0", "2,4.0"]
    assert array_csv(a, ["x", "y"]).decode().splitlines()[0] == "x,y"
    assert table_csv([{"a": 1, "b": None}, {"a": 2, "c": "z"}]).decode().splitlines() == ["a,b,c", "1,,", "2,,z"]
    with pytest.raises(ValueError):
        array_csv(np.zeros((2, 2, 2)))


def test_probe_cache_never_computes():
    from entk_core.store.cache import ArrayCache
    from entk_core.workflows.jobs import NotCached, ProbeCache, cached

    def op(x, *, cache):
        return cache.get_or_compute(f"k{x}", lambda: ({"v": np.array([x])}, {}))["v"]

    c = ArrayCache(Path(__import__("tempfile").mkdtemp()) / "c")
    assert cached(op, 1, cache=c) is None and c.computed == 0
    op(1, cache=c)
    assert cached(op, 1, cache=c)[0] == 1
    with pytest.raises(NotCached):
        ProbeCache(c).get_or_compute("other", lambda: ({}, {}))


def test_static_export_reason_is_one_line_or_none():
    from entk_core.figures.export import static_export_reason

    why = static_export_reason()
    assert why is None or ("\n" not in why and why)


def test_url_parameter_table_lists_every_name():
    """Every URL parameter a page draws (``url_*("name", ...)``: the generic pages, the shared
    sidebar and every family's page script) is documented in docs/url-parameters.md."""
    import re

    text = (REPO / "docs" / "url-parameters.md").read_text()
    for name in ("run", "epoch", "group", "reduction", "top", "beta", "log", "windows", "window", "cliff",
                 "families", "rotation", "vector", "compare"):
        assert f"| `{name}` |" in text, name
    pages = [*(REPO / "app_pages").glob("*.py"), *(REPO / "entk_core" / "ui").glob("*.py"),
             *(REPO / "entk_core" / "families").glob("*/page.py")]
    assert len([p for p in pages if p.name == "page.py"]) >= 3  # TMS, Transformer, Language model
    names = set(re.findall(r'url_\w+\("(\w+)"', "".join(p.read_text() for p in pages))) - {"name"}  # a docstring's
    assert {"run", "epoch", "beta", "rotation", "layer"} <= names  # the scan sees the controls
    for n in names:
        assert f"| `{n}` |" in text, f"URL parameter {n} is not documented"
    from entk_core.ui.urlstate import PARAM_ORDER

    assert set(PARAM_ORDER) <= names


def _all_builders():
    from entk_core.engine.spectra import Cliff
    from entk_core.figures import (accuracy_figure, eigenvector_figures, feature_norms_figure, heatmap_figure,
                                   key_frequency_figure, overlap_figure, principal_angles_figure, spectrum_figure)
    from entk_core.figures.lm import direction_scores_figure, layer_auroc_figure, lm_spectrum_figure

    g = np.random.default_rng(0)
    ep = list(range(0, 110, 10))
    curves = {"a (4-dim)": g.random(11) * 100, "a · PCA": g.random(11) * 100}
    macro = {"pos": {"entk": {"auroc": 0.8}, "pca": {"auroc": 0.7}}, "morph": {"entk": {"auroc": 0.7}, "pca": {"auroc": 0.6}}}
    return {
        "spectrum": spectrum_figure(np.sort(g.random(200))[::-1], [Cliff(0, 1, 9.0), Cliff(1, 56, 2.0)],
                                    labels=["constant", "cliff 1"], selected=3, extra={"epoch 50": g.random(200)}),
        "angles": principal_angles_figure(g.random(5) * 90),
        "grid": eigenvector_figures("grid", g.standard_normal(49), p=7, title="v")[0],
        "features": eigenvector_figures("features", g.random(10), title="v")[0],
        "vector": eigenvector_figures("vector", g.random(10), title="v")[0],
        "heatmap": heatmap_figure(g.random((6, 4)), title="h", y_labels=[f"sum cos k={i}" for i in range(6)]),
        "accuracy": accuracy_figure(ep, {"train_acc": list(g.random(11))}, current=20, markers={"onset 15": 15}),
        "overlap": overlap_figure(ep, curves, derivatives={k: g.random(11) for k in curves}, title="o", current=20,
                                  markers={"onset 15": 15}, accuracy={"test_acc": list(g.random(11))},
                                  accuracy_epochs=ep, dashed=["a · PCA"]),
        "norms": feature_norms_figure(g.random(10), 0.5),
        "keyfreq": key_frequency_figure([1, 2, 3], [0.1, 0.5, 0.2], [2], epoch=10),
        "lm_spectrum": lm_spectrum_figure(np.sort(g.random(25))[::-1] + 0.1, selected=2),
        "layers": layer_auroc_figure([{"layer": 0, "macro": macro}, {"layer": 1, "macro": macro}]),
        "scores": direction_scores_figure(g.standard_normal(20), ["NOUN", "VERB"] * 10, title="d"),
    }


def test_every_figure_has_fixed_margins_sized_for_its_legend_and_colour_bars():
    """Plotly must never grow the margins itself (every browser draw would measure and draw
    twice); the margins leave room for what the figure holds."""
    for name, fig in _all_builders().items():
        m = fig.layout.margin
        assert m.autoexpand is False, name
        assert min(m.l, m.r, m.t, m.b) >= 20, (name, m)
        if any(t.type == "heatmap" and t.showscale is not False for t in fig.data):
            assert m.r >= 110, (name, m)
        if fig.layout.legend.orientation == "h":
            assert fig.layout.legend.yref == "container" and fig.layout.legend.y == 0, name
            assert m.b >= 50 + 22, (name, m)
    heat = _all_builders()["heatmap"]
    assert heat.layout.margin.l >= 20 + 7 * len("sum cos k=0")  # the longest category label fits


def test_a_longer_legend_gets_a_taller_bottom_margin():
    from entk_core.figures import overlap_figure

    ep = list(range(5))

    def fig(n):
        return overlap_figure(ep, {f"family number {i}": np.arange(5.0) for i in range(n)}, title="o")

    assert fig(12).layout.margin.b > fig(2).layout.margin.b


def test_marker_lines_are_drawn_in_their_own_subplot():
    from entk_core.figures import overlap_figure

    fig = overlap_figure([0, 10, 20], {"a": np.zeros(3)}, derivatives={"a": np.zeros(3)}, title="o", current=10,
                         markers={"peak 20": 20})
    refs = sorted((s.xref, s.yref, s.x0) for s in fig.layout.shapes)
    assert refs == [("x", "y domain", 10), ("x", "y domain", 20), ("x2", "y2 domain", 10), ("x2", "y2 domain", 20)]
    assert fig.layout.xaxis.matches == "x2"  # the two rows share the epoch axis
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert legend.count("epoch 10") == 1 and legend.count("peak 20") == 1


def test_a_long_spectrum_draws_no_marker_per_point_but_stays_clickable():
    from entk_core.figures import spectrum_figure

    long_ = spectrum_figure(np.linspace(2, 1, 200)).data[0]
    short = spectrum_figure(np.linspace(2, 1, 20)).data[0]
    assert "markers" in long_.mode and long_.marker.maxdisplayed == 1  # Plotly selects clicks only with markers
    assert "markers" in short.mode and not short.marker.maxdisplayed


def test_the_grid_view_is_one_figure_with_the_image_beside_its_fourier_power():
    from entk_core.figures import eigenvector_figures, grid_image

    v = np.random.default_rng(1).standard_normal(49)
    figs = eigenvector_figures("grid", v, p=7, title="eigenvector 3")
    assert len(figs) == 1
    img, power, _ = grid_image(v, 7)
    a, b = figs[0].data
    assert (a.xaxis, a.yaxis, b.xaxis, b.yaxis) == ("x", "y", "x2", "y2")
    assert np.allclose(a.z, img) and np.allclose(b.z, power)
    lay = figs[0].layout
    assert lay.xaxis.domain[1] < lay.xaxis2.domain[0]  # side by side, not overlapping
    assert lay.yaxis.scaleanchor == "x" and lay.yaxis2.scaleanchor == "x2"


def test_pca_directions_reuse_the_svd_without_sharing_the_result():
    from entk_core.workflows.baselines import pca_directions

    g = np.random.default_rng(2)
    H = g.standard_normal((40, 6))
    P5 = pca_directions(H, 5)
    P2 = pca_directions(H, 2)  # served from the memo: a slice of the same directions
    U = np.linalg.svd(H - H.mean(0), full_matrices=False)[0]
    assert np.allclose(np.abs(np.sum(P5 * U[:, :5], axis=0)), 1.0, atol=1e-12)
    assert np.array_equal(P2, P5[:, :2])
    P2[:] = 0.0  # the caller's copy; the memo is untouched
    assert np.array_equal(pca_directions(H, 2), P5[:, :2])
    H2 = H.copy()
    H2[0, 0] += 1.0  # other activations, other directions
    assert not np.allclose(pca_directions(H2, 2), P5[:, :2])


def test_the_server_config_listens_on_loopback_and_skips_the_full_gc_after_each_run():
    import tomllib
    from pathlib import Path

    cfg = tomllib.loads((Path(__file__).resolve().parents[2] / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["runner"]["postScriptGC"] is False  # ~200 ms of every warm rerun (benchmarks/bench_dashboard.py)


# ------------------------------------------------ the page menu (family pages)
def test_every_family_page_is_in_the_menu_once_and_bad_ones_say_why(tmp_path, monkeypatch):
    """Family pages follow the generic ones in ``order``; a page whose url path is taken or whose
    module cannot be found is left out with one line; no page module is imported to build the menu."""
    import sys

    from entk_core.families.base import FamilyPage, register, unregister
    from entk_core.families.modadd_mlp import ModAddMLPFamily
    from entk_core.ui.menu import family_pages

    (tmp_path / "my_page_mod.py").write_text("raise RuntimeError('a page script is never imported by the menu')\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class First(ModAddMLPFamily):
        name = "menu-test-first"
        pages = (FamilyPage("Mine", "mine", "my_page_mod", order=5),)

    class Second(ModAddMLPFamily):
        name = "menu-test-second"
        pages = (FamilyPage("Clash", "spectrum", "my_page_mod"), FamilyPage("Missing", "missing", "no_such_pkg.page"),
                 FamilyPage("Twice", "/mine/", "my_page_mod", order=50))

    register(First)
    register(Second)
    try:
        entries, problems = family_pages(["spectrum", "grokking", "alignment"])
    finally:
        unregister("menu-test-first")
        unregister("menu-test-second")
    assert [(e.page.title, e.family) for e in entries][:1] == [("Mine", "menu-test-first")]
    assert [e.page.title for e in entries][1:] == ["Transformer", "TMS", "Language model"]  # the built-ins' pages
    assert entries[0].path == tmp_path / "my_page_mod.py" and "my_page_mod" not in sys.modules
    assert all(e.path.name == "page.py" and e.path.is_file() for e in entries[1:])
    assert len(problems) == 3 and all("\n" not in p for p in problems)
    assert any("'Clash'" in p and "/spectrum is taken by a generic page" in p for p in problems)
    assert any("'Twice'" in p and "/mine is taken by family menu-test-first" in p for p in problems)
    assert any("'Missing'" in p and "no_such_pkg.page" in p for p in problems)


def test_the_builtin_families_declare_their_pages_and_capabilities():
    from entk_core.families.base import get_family

    pages = {n: [(p.title, p.url_path, p.script) for p in get_family(n).pages]
             for n in ("modadd-mlp", "tms", "modadd-transformer", "causal-lm")}
    assert pages == {
        "modadd-mlp": [],
        "tms": [("TMS", "tms", "entk_core.families.tms.page")],
        "modadd-transformer": [("Transformer", "transformer", "entk_core.families.modadd_transformer.page")],
        "causal-lm": [("Language model", "language-model", "entk_core.families.causal_lm.page")],
    }
    mlp, tms, tf = get_family("modadd-mlp"), get_family("tms"), get_family("modadd-transformer")
    assert mlp.offers("rotation") and not tms.offers("rotation") and not tf.offers("rotation")
    assert not get_family("causal-lm").offers("rotation") and mlp.rotation_help
    assert mlp.view_families == ("a", "b", "sum", "diff", "random") and tms.view_families is None
    assert tf.view_families == ("sum", "diff", "axis_sum", "axis_diff")
    assert all(f.control_families == ("random",) for f in (mlp, tms, tf))


# ------------------------------------------------------ workflows.views (pure)
def test_block_rows_put_each_block_beside_its_baselines():
    from entk_core.engine.measures import family_bases
    from entk_core.families.base import FeatureFamily
    from entk_core.workflows.alignment import baseline_overlaps
    from entk_core.workflows.views import block_rows

    g = np.random.default_rng(3)
    fams = {"sum": FeatureFamily("sum", g.standard_normal((30, 2))), "axis": FeatureFamily("axis", g.standard_normal((30, 2)))}
    bases = family_bases(fams)
    H = g.standard_normal((30, 6))
    def fam(ov):
        return {"overlap": ov, "dim": 2, "percent": 50.0 * ov}

    rep = {"blocks": [{"modes": [0, 5], "expected": "sum", "families": {"sum": fam(1.23456), "axis": fam(0.1)}},
                      {"modes": [5, 9], "expected": "axis", "families": {"sum": fam(0.2), "axis": fam(1.9)}}]}
    rows = block_rows(rep, H, bases)
    assert [(r["modes"], r["family"], r["expected"]) for r in rows] == [
        ("0:5", "sum", "✓"), ("0:5", "axis", ""), ("5:9", "sum", ""), ("5:9", "axis", "✓")]
    base = baseline_overlaps(H, [5, 4], bases)  # block j's random subspace is drawn with seed j
    assert [r["PCA"] for r in rows] == [base["pca"][0]["sum"], base["pca"][0]["axis"], base["pca"][1]["sum"],
                                        base["pca"][1]["axis"]]
    assert rows[3]["random"] == base["random"][1]["axis"] and rows[0]["eNTK"] == 1.2346 and rows[0]["eNTK %"] == 61.7
    assert all(r["PCA"] is None for r in block_rows(rep, None, bases))


def test_spectrum_blocks_name_the_constant_mode_and_open_on_cliff_1():
    from entk_core.engine.spectra import Cliff
    from entk_core.workflows.analysis import SpectrumResult
    from entk_core.workflows.views import cliff_windows, first_feature_window, spectrum_blocks

    n = 40
    vals = np.r_[10.0, np.full(4, 1.0), np.full(5, 0.1), np.geomspace(1e-3, 1e-4, 20)]
    V = np.linalg.qr(np.random.default_rng(0).standard_normal((n, vals.size)))[0]
    V[:, 0] = 1 / np.sqrt(n)  # the constant mode
    res = SpectrumResult(vals, V, [Cliff(0, 1, 10.0), Cliff(1, 4, 10.0), Cliff(5, 5, 100.0)])
    rows = spectrum_blocks(res)
    assert [(r["block"], r["start"], r["end"], r["size"]) for r in rows][:3] == [
        ("constant mode", 0, 0, 1), ("cliff 1", 1, 4, 4), ("cliff 2", 5, 9, 5)]
    assert first_feature_window(res) == 1
    assert cliff_windows(res) == [("constant", 0, 0, 10.0), ("cliff 1", 1, 4, 10.0), ("cliff 2", 5, 9, 100.0)]
    res.cliffs = res.cliffs[:1]
    assert first_feature_window(res) == 0 and spectrum_blocks(res)[0]["block"] == "constant mode"


def test_stacked_bank_takes_fourier_and_plain_families_with_named_rows():
    from entk_core.engine.measures import phase_insensitive_corr
    from entk_core.families.base import FeatureFamily
    from entk_core.workflows.views import stacked_bank

    g = np.random.default_rng(1)
    four = FeatureFamily("a", g.standard_normal((12, 3, 2)), labels=("k=1", "k=2", "k=3"))
    plain = FeatureFamily("xor", g.standard_normal((12, 1)), labels=("x0·x1",))
    bank = stacked_bank({"a": four, "xor": plain}, ["a", "xor"])
    assert bank.bank.shape == (12, 4, 2) and bank.labels == ("a k=1", "a k=2", "a k=3", "xor x0·x1")
    v = g.standard_normal((12, 2))
    H = phase_insensitive_corr(v, bank)
    cos = np.abs(plain.bank[:, 0] @ v) / (np.linalg.norm(plain.bank[:, 0]) * np.linalg.norm(v, axis=0))
    assert np.allclose(H[3], cos)  # a plain family's phase-insensitive correlation is |cos|
    with pytest.raises(ValueError):
        stacked_bank({"a": four}, [])


def test_time_and_size_formats():
    from entk_core.ui.format import cache_caption, fmt_pct, fmt_seconds, fmt_size

    assert [fmt_seconds(s) for s in (None, float("nan"), 4.2, 89.4, 90, 434, 5400)] == [
        "?", "?", "4 s", "89 s", "1.5 min", "7.2 min", "1.5 h"]
    assert fmt_pct(0.973) == "97.3%" and fmt_pct(None) == "–" and fmt_pct(float("nan")) == "–"
    assert fmt_size(512) == "512 B" and fmt_size(3.4e6) == "3.4 MB" and fmt_size(5e12) == "5000.0 GB"
    assert cache_caption({"cache": "hit", "computed_at": "2026-12-01T10:00"}, 0.009, 0.61) == \
        "from the cache in 9 ms; computed in 610 ms on 2026-12-01"
    assert cache_caption({"cache": "miss"}, 1.5, 1.5) == "computed now in 1.50 s and cached"
