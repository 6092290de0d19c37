"""A model family from outside the repository (examples/entk-toy-family), installed with pip
into a temporary folder, works from the CLI (families, train, info, spectrum, sweep with
worker processes, align, import) and in the dashboard, with no edit to entk_core.

The CLI runs in this process with the plug-in's folder put on ``sys.path`` (as ``PYTHONPATH``
would), the registry refreshed, and both undone afterwards (:func:`plugin_path`); scripts
that must be their own ``__main__`` and the installed-distribution check run as subprocesses."""
from __future__ import annotations

import contextlib
import json
import os
import runpy
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _cli import run_cli

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "entk-toy-family"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example plug-in installed by pip (offline, no dependencies) into a private folder."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("src") / "entk-toy-family"
    # build from a copy: keeps the checkout free of build files, and stale ones out of the build
    shutil.copytree(EXAMPLE, build, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(target), str(build)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (target / "entk_toy_family").is_dir() and list(target.glob("entk_toy_family-*.dist-info"))
    return target


@contextlib.contextmanager
def plugin_path(folder: Path):
    """``folder`` (holding installed distributions) first on ``sys.path`` and the registry
    refreshed, as a process started with ``PYTHONPATH=folder`` sees it; undone on exit (the
    families it declared are forgotten)."""
    import importlib

    from entk_core.families import base

    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    base.refresh_families()
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        importlib.invalidate_caches()
        for name in ("toy-xor", "broken"):
            base.unregister(name)
        base.refresh_families()


def cli(site: Path, *args, env=None):
    """The CLI in this process with the plug-in folder ``site`` on the path."""
    with plugin_path(site):
        return run_cli(*args, env=env)


def ok(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_plugin_family_end_to_end_from_the_cli(site, tmp_path):
    fams = ok(cli(site, "families", "--json"))
    by = {f["name"]: f for f in fams["families"]}
    assert {"modadd-mlp", "tms", "modadd-transformer", "toy-xor"} <= set(by) and not fams["errors"]
    assert by["toy-xor"]["origin"].startswith("entk-toy-family 0.1.0")
    assert by["modadd-mlp"]["origin"].startswith("entk-explorer")
    assert {"train", "sweep", "align", "pca"} <= set(by["toy-xor"]["offers"])

    out = tmp_path / "runs" / "toy"
    info = ok(cli(site, "train", "toy-xor", "--epochs", 40, "--out", out, "--json"))
    assert info["family"] == "toy-xor" and info["checkpoints"] == [0, 10, 20, 30, 40]
    assert info["final_metrics"]["train_acc"] > 0.9  # it learns XOR
    info = ok(cli(site, "info", out, "--json"))
    assert info["groups"] == ["full", "net.0", "net.2"]

    spec = ok(cli(site, "spectrum", out, "--json"))
    assert spec["family"] == "toy-xor" and spec["n"] == 96 and len(spec["eigenvalues"]) == 24
    assert all("label" in c for c in spec["cliffs"])

    sw = ok(cli(site, "sweep", out, "--workers", 2, "--json"))
    assert sw["executor"] == {"executor": "local", "workers": 2} and [row["epoch"] for row in sw["table"]] == [0, 10, 20, 30, 40]
    assert set(sw["families"]) == {"linear", "xor", "random"}
    # the worker processes wrote every checkpoint's spectrum: the same numbers as one process computes
    one = ok(cli(site, "spectrum", out, "--epoch", 20, "--json"))
    assert one["cache"] == "hit"
    fresh = ok(cli(site, "spectrum", out, "--epoch", 20, "--json", env={"ENTK_CACHE_DIR": str(tmp_path / "c2")}))
    assert fresh["cache"] == "miss" and fresh["eigenvalues"] == pytest.approx(one["eigenvalues"], rel=1e-6)

    rep = ok(cli(site, "align", out, "--json"))
    assert rep["family"] == "toy-xor" and [r["top"] for r in rep["overlap_of_top_k"]] == [1, 2, 4, 8]
    assert all(0 <= r["linear"] <= 4 + 1e-9 and 0 <= r["xor"] <= 1 + 1e-9 for r in rep["overlap_of_top_k"])

    # without the plug-in on the path the run is refused with one line naming the family
    r = run_cli("info", out)
    assert r.returncode == 2 and "unknown model family 'toy-xor'" in r.stderr and r.stderr.count("\n") == 1


def test_import_checkpoints_trained_elsewhere(site, tmp_path):
    """A researcher's own script saves safetensors; `import` makes them a normal run."""
    script = tmp_path / "own_training.py"
    script.write_text(textwrap.dedent("""
        import json, sys, torch
        from safetensors.torch import save_file
        from entk_core import get_family
        fam = get_family("toy-xor")
        cfg = fam.Config(width=16)
        model, data = fam.build_model(cfg), fam.make_data(cfg)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for epoch in range(31):
            if epoch % 15 == 0:
                save_file(model.state_dict(), f"{sys.argv[1]}/e{epoch}.safetensors")
            opt.zero_grad(); fam.loss(model(data.x[data.train_idx]), data.y[data.train_idx]).backward(); opt.step()
        with open(f"{sys.argv[1]}/config.json", "w") as f:
            json.dump({"width": 16}, f)
    """))
    with plugin_path(site), pytest.MonkeyPatch.context() as mp:  # the user's script, run as __main__
        mp.setattr(sys, "argv", [str(script), str(tmp_path)])
        runpy.run_path(str(script), run_name="__main__")
    out = tmp_path / "runs" / "imported"
    info = ok(cli(site, "import", "toy-xor", "--config", tmp_path / "config.json",
                  *[a for e in (0, 15, 30) for a in ("--checkpoint", f"{e}={tmp_path / f'e{e}.safetensors'}")],
                  "--out", out, "--json"))
    assert info["checkpoints"] == [0, 15, 30] and info["config"]["width"] == 16 and info["status"] == "complete"
    assert info["final_metrics"]["train_acc"] is not None
    spec = ok(cli(site, "spectrum", out, "--epoch", 15, "--json"))
    assert spec["epoch"] == 15 and len(spec["eigenvalues"]) == 24
    # a state dict for another width: one line naming the file and the tensor; nothing written
    bad = cli(site, "import", "toy-xor", "--checkpoint", f"0={tmp_path / 'e0.safetensors'}", "--out", tmp_path / "x")
    assert bad.returncode == 2 and "e0.safetensors" in bad.stderr and "shape" in bad.stderr
    assert bad.stderr.count("\n") == 1 and not (tmp_path / "x").exists()
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name.startswith(".")]


def _titles(at) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def test_plugin_run_opens_in_the_dashboard_and_its_page_is_in_the_menu(site, tmp_path, monkeypatch):
    """The plug-in's run opens in the generic pages; the page it declares (FamilyPage) is in
    the menu after the built-in families' pages and renders, with no edit to entk_core or app.py."""
    from streamlit.testing.v1 import AppTest

    from entk_core.families import base

    out = tmp_path / "runs" / "toy-xor-seed0"
    ok(cli(site, "train", "toy-xor", "--epochs", 20, "--out", out, "--json"))
    monkeypatch.setenv("ENTK_RUNS_DIR", str(tmp_path / "runs"))
    with plugin_path(site):
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
        assert not at.exception and not at.error
        assert at.session_state["run"] == "toy-xor-seed0"
        title = _titles(at)[0]
        assert "Toy XOR MLP" in title and "epoch 20" in title
        menu = [(p.proto.label, p.proto.page) for p in at.get("page_link")]
        assert [label for label, _ in menu] == ["Spectrum", "Grokking", "Alignment", "Training dynamics", "Transformer",
                                                "TMS", "Language model", "Toy XOR"], menu
        # the generic Alignment page over the plug-in's families (linear, xor; random is the control)
        at.switch_page("app_pages/alignment.py").run()
        assert not at.exception and not at.error
        assert at.multiselect(key="align_fams").value == ["linear", "xor"]
        assert not at.toggle  # the family declares no rotation inside a window: no rotation control
        # the generic Training dynamics page: the kernel over training, the animation, the overlaps
        at.switch_page("app_pages/dynamics.py").run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        titles = _titles(at)
        assert any("spectrum over training (trace, top 24 of 96)" in t for t in titles), titles
        assert any(t.startswith("Overlap of") and "feature families" in t for t in titles), titles
        # the plug-in's own page, run from the installed package
        page = site / "entk_toy_family" / "page.py"
        at.switch_page(str(page)).run()
        assert not at.exception and not at.error
        assert any(t.startswith("Eigenvector 1 over the inputs (x0, x1), epoch 20") for t in _titles(at)), _titles(at)
        rows = at.dataframe[0].value
        assert list(rows["top"]) == [1, 2, 4, 8] and set(rows.columns) >= {"linear", "xor", "random"}
        at.number_input(key="toy_vector").set_value(2).run()
        assert not at.exception and at.query_params["vector"] == "2"
        assert any(t.startswith("Eigenvector 2 over the inputs") for t in _titles(at))
    assert "toy-xor" not in base.list_families()


def test_runtime_registered_family_reaches_the_workers(tmp_path):
    """A family registered with register() in an importable module (no entry point) is
    imported by the sweep's worker processes; one defined in __main__ is swept in-process."""
    (tmp_path / "myfam.py").write_text(textwrap.dedent("""
        from entk_core.families.modadd_mlp import ModAddMLPFamily
        from entk_core import register

        @register
        class MyMLP(ModAddMLPFamily):
            name = "my-mlp"
    """))
    body = textwrap.dedent("""
        import json, sys
        from entk_core import register, train
        from entk_core.workflows.sweep import sweep
        def main():
            if sys.argv[2] == "module":
                from myfam import MyMLP as Fam
            else:
                from entk_core.families.modadd_mlp import ModAddMLPFamily
                @register
                class Fam(ModAddMLPFamily):
                    name = "main-mlp"
            fam = Fam()
            run = train(fam, fam.Config(p=5, width=8, epochs=20, checkpoint_every=5), sys.argv[1])
            res = sweep(run, workers=2)
            print(json.dumps({"executor": res.meta["executor"], "epochs": [int(e) for e in res.epochs]}))
    """)
    # the usual guard for a script that starts worker processes; a family defined in
    # __main__ cannot reach them, so that sweep runs in-process (and needs no guard)
    (tmp_path / "module.py").write_text(body + 'if __name__ == "__main__":\n    main()\n')
    (tmp_path / "main.py").write_text(body + "main()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    for how, executor in (("module", {"executor": "local", "workers": 2}), ("main", {"executor": "inline"})):
        r = subprocess.run([sys.executable, str(tmp_path / f"{how}.py"), str(tmp_path / how), how], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout.strip().splitlines()[-1]) == {"executor": executor, "epochs": [0, 5, 10, 15, 20]}


def test_installed_distribution_declares_the_builtin_families(tmp_path):
    """Installed (not run from a checkout), the built-ins come from the distribution's
    entry-point metadata: the same mechanism as a plug-in's."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "tests", "runs", ".entk_cache", "build",
                                                             "*.egg-info", "__pycache__", "docs", "examples",
                                                             "models", "probes"))
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(target), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (target / "pyproject.toml").exists()
    code = ("import entk_core, json; from entk_core.families import list_families, family_origin; "
            "print(json.dumps([entk_core.__file__, {n: family_origin(n) for n in list_families()}]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(target)})
    assert r.returncode == 0, r.stderr[-2000:]
    where, origins = json.loads(r.stdout)
    assert where.startswith(str(target))
    assert origins == {n: "entk-explorer 0.1.0" for n in ("causal-lm", "modadd-mlp", "modadd-transformer", "tms")}


def test_a_broken_plugin_is_reported_and_does_not_break_the_others(tmp_path):
    """Entry-point metadata naming a module that fails to import (written by hand, as any
    installer would): listed with its reason; every other family and command still works."""
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[entk_core.families]\nbroken = broken_plugin_mod:Family\n")
    (tmp_path / "broken_plugin_mod.py").write_text("raise RuntimeError('this plug-in is broken')\n")
    fams = ok(cli(tmp_path, "families", "--json"))
    assert {"modadd-mlp", "tms", "modadd-transformer"} <= {f["name"] for f in fams["families"]}
    assert fams["errors"] == {"broken": "cannot import broken_plugin_mod:Family: RuntimeError: this plug-in is broken"}
    r = cli(tmp_path, "train", "broken", "--out", tmp_path / "x")
    assert r.returncode == 2 and "invalid choice: 'broken'" in r.stderr
    assert cli(tmp_path, "train", "modadd-mlp", "--help").returncode == 0
