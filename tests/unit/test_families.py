"""The family contract: registry and entry points, hooks and capabilities, the store's
family-agnostic run record under the family-aware Run, presets (no training here)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from entk_core.engine.spectra import CONSTANT_LABEL, Cliff, label_cliffs, labelled_cliffs
from entk_core.families import base
from entk_core.families.base import (FULL, ModelFamily, SweepSpec, check_beta, family_errors, family_origin, family_ref,
                                     get_family, list_families, register, unregister)
from entk_core.families.run import Run
from entk_core.store.runs import RunError, RunRecord, save_checkpoint
from entk_core.workflows.presets import PRESETS, presets_for

BUILTIN = ("modadd-mlp", "modadd-transformer", "tms")


def test_builtins_come_from_the_installed_entry_points():
    """The built-ins are found like any plug-in: the entry points of the installed
    ``entk-explorer`` distribution (``-e .`` in requirements.txt), never a pyproject.toml."""
    import importlib.metadata

    assert set(BUILTIN) <= set(list_families()) and not family_errors()
    dist = importlib.metadata.distribution("entk-explorer")
    declared = {ep.name: ep.value for ep in dist.entry_points if ep.group == base.ENTRY_POINT_GROUP}
    assert declared == {"modadd-mlp": "entk_core.families.modadd_mlp:ModAddMLPFamily",
                        "tms": "entk_core.families.tms:TMSFamily",
                        "modadd-transformer": "entk_core.families.modadd_transformer:ModAddTransformerFamily",
                        "causal-lm": "entk_core.families.causal_lm:CausalLMFamily"}
    for name in BUILTIN:
        assert family_origin(name) == f"entk-explorer {dist.version}"
        assert family_ref(get_family(name)) == declared[name]


def test_the_registry_reads_entry_points_only(monkeypatch):
    """With no distribution declaring families nothing is known (a checkout's pyproject.toml is
    not read); a plug-in distribution's entry points are; two targets for one name are an error."""
    import importlib.metadata as md

    class Dist:
        def __init__(self, name, eps):
            self.metadata, self.version = {"Name": name}, "1.0"
            self.entry_points = [md.EntryPoint(n, v, base.ENTRY_POINT_GROUP) for n, v in eps.items()]

    def table_with(*dists):
        monkeypatch.setattr(base.importlib.metadata, "distributions", lambda: list(dists))
        base.refresh_families()
        return base._entry_point_table()

    try:
        assert table_with() == {}
        assert table_with(Dist("my-plugin", {"toy": "my_plugin:Toy"})) == {"toy": ("my_plugin:Toy", "my-plugin 1.0")}
        table = table_with(Dist("a", {"toy": "a:Toy"}), Dist("b", {"toy": "b:Toy"}), Dist("a", {"toy": "a:Toy"}))
        assert table == {"toy": ("a:Toy", "a 1.0")}
        assert base._ERRORS["toy"] == "family 'toy' is declared twice: a:Toy (a 1.0) and b:Toy (b 1.0); uninstall one of them"
    finally:
        monkeypatch.undo()
        base._ERRORS.pop("toy", None)
        base.refresh_families()
    assert set(BUILTIN) <= set(list_families())


def test_unknown_family_is_one_line_listing_the_known():
    with pytest.raises(ValueError, match=r"unknown model family 'resnet'; known: causal-lm, modadd-mlp, modadd-transformer"):
        get_family("resnet")


def test_runtime_registration_and_refs():
    class Local(ModelFamily):
        name = "local-test-family"

    try:
        register(Local)
        assert get_family("local-test-family").__class__ is Local
        assert family_origin("local-test-family") == "registered at run time"
        assert family_ref(get_family("local-test-family")) is None  # defined in a function: not importable
    finally:
        unregister("local-test-family")
    with pytest.raises(ValueError, match="already declared by entk_core.families.tms:TMSFamily"):
        register(type("Impostor", (ModelFamily,), {"name": "tms"}))
    with pytest.raises(ValueError, match="not a ModelFamily subclass"):
        register(int)


def test_load_family_ref_reports_bad_references():
    with pytest.raises(ValueError, match="module:Class"):
        base.load_family_ref("no-colon")
    with pytest.raises(ValueError, match="cannot import nope_module:X: ModuleNotFoundError"):
        base.load_family_ref("nope_module:X")
    with pytest.raises(ValueError, match="not a ModelFamily subclass"):
        base.load_family_ref("entk_core.families.base:Dataset")
    with pytest.raises(ValueError, match="is called 'tms', but its entry point is named 'other'"):
        base.load_family_ref("entk_core.families.tms:TMSFamily", name="other")


def test_capabilities_are_declared_not_probed():
    mlp, tms, tf = (get_family(n) for n in ("modadd-mlp", "tms", "modadd-transformer"))
    assert mlp.offers("grokking") and mlp.offers("align") and not mlp.offers("beta")
    assert tms.offers("beta") and not tms.offers("accuracy") and not tms.offers("grokking")
    assert tf.default_align_group == "unembed" and mlp.default_align_group is None
    assert mlp.eigenvector_view(mlp.Config()) == "grid" and tms.eigenvector_view(tms.Config()) == "features"
    assert mlp.group_labels(mlp.Config())["net.0"].startswith("W1")

    class Bare(ModelFamily):
        name = "bare"

    fam = Bare()
    assert [w for w in fam.CAPABILITIES if fam.offers(w)] == ["accuracy"]  # has_accuracy defaults to True
    assert fam.sweep_spec(None, FULL) is None and fam.hidden_activations(None, None) is None
    with pytest.raises(ValueError, match="not available for the bare family"):
        fam.align_report(None, 0, services=None)
    with pytest.raises(ValueError, match="unknown capability 'fly'"):
        fam.offers("fly")


def test_beta_range_is_checked_in_one_place():
    assert check_beta(0.3) == 0.3 and check_beta(10) == 10.0
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 10\], got -1"):
        check_beta(-1)


def test_sweep_spec_defaults():
    s = SweepSpec()
    assert s.group == FULL and s.reduction is None and s.max_cliffs == 4


def test_cliff_labels_name_the_constant_mode():
    N = 16
    V = np.zeros((N, 3))
    V[:, 0] = 1 / np.sqrt(N)
    V[0, 1] = V[1, 2] = 1.0
    cl = [Cliff(0, 1, 3.0), Cliff(1, 2, 2.0)]
    assert label_cliffs(cl, V) == [CONSTANT_LABEL, "cliff 1"]
    assert label_cliffs(cl, None) == ["cliff 1", "cliff 2"]
    V[:, 0] = 0
    V[0, 0] = 1.0
    assert label_cliffs(cl, V) == ["cliff 1", "cliff 2"]
    assert labelled_cliffs(cl[1:], V) == [{"label": "cliff 1", "start": 1, "size": 2, "ratio": 2.0, "end": 2}]


def _manifest(tmp_path, family: str, config: dict) -> None:
    fam = get_family("modadd-mlp")
    cfg = fam.config_from_dict({"p": 5, "width": 4})
    sha = save_checkpoint(tmp_path / "checkpoints" / "epoch_000000.safetensors", fam.build_model(cfg).state_dict())
    (tmp_path / "manifest.json").write_text(json.dumps({
        "format": 1, "family": family, "config": config, "status": "complete", "metrics": {"epoch": [0]},
        "checkpoints": [{"epoch": 0, "file": "checkpoints/epoch_000000.safetensors", "sha256": sha}]}))


def test_the_store_reads_a_run_without_knowing_its_family(tmp_path):
    _manifest(tmp_path, "someone-elses-family", {"p": 5, "width": 4})
    rec = RunRecord(tmp_path)
    assert rec.family_name == "someone-elses-family" and rec.epochs == [0]
    assert set(rec.load_tensors(0)) == {"net.0.weight", "net.3.weight"}
    with pytest.raises(RunError, match="manifest.json: unknown model family 'someone-elses-family'"):
        Run(tmp_path)


def test_run_adds_family_config_groups(tmp_path):
    _manifest(tmp_path, "modadd-mlp", {"p": 5, "width": 4})
    run = Run(tmp_path)
    assert run.config.p == 5 and run.groups() == ["full", "net.0", "net.3"]
    assert run.group_members("full") is None and run.group_members("net.3") == ["net.3"]
    with pytest.raises(ValueError, match="unknown layer group 'net.9' for modadd-mlp; choose one of: full, net.0"):
        run.group_members("net.9")
    assert isinstance(run.load_model(0), torch.nn.Module)


def test_presets_are_valid_configs():
    assert {p.family for p in PRESETS.values()} == set(BUILTIN)
    for p in PRESETS.values():
        cfg = p.config()
        assert all(getattr(cfg, k) == v for k, v in p.overrides.items())
    assert [p.name for p in presets_for("tms")] == ["tms-m10-s0.3-seed0", "tms-m10-s0.9-seed0", "tms-m40-s0.9-seed0"]
