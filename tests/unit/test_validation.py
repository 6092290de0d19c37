"""Validated configs and files (issue 21 item 7, the non-LM attack cases) and what an import
records (issue 19). Nothing is trained: run folders are written by hand from untrained models.
Each attack goes through the CLI in-process (``entk_core.cli.main``: exit status 2 and exactly
one ``error: ...`` line on stderr), and one case also through a real subprocess."""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from entk_core import cli
from entk_core.families.base import get_family
from entk_core.store.runs import save_checkpoint

REPO = Path(__file__).resolve().parents[2]
MLP = get_family("modadd-mlp")
SMALL = {"p": 7, "width": 8}


def write_run(folder: Path, config: dict | str, *, family: str = "modadd-mlp", epochs=(0, 10), state_cfg: dict = SMALL,
              summary=None, dtype=None, raw_config: str | None = None) -> Path:
    """A run folder by hand: checkpoints of the untrained model of ``state_cfg``, the manifest
    with ``config`` (``raw_config``: text spliced in as the config, e.g. with a NaN)."""
    fam = get_family(family)
    state = fam.build_model(fam.config_from_dict(state_cfg)).state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    entries = []
    for e in epochs:
        rel = f"checkpoints/epoch_{e:06d}.safetensors"
        entries.append({"epoch": e, "file": rel, "sha256": save_checkpoint(folder / rel, state)})
    m = {"format": 1, "family": family, "config": config, "status": "complete", "epochs_done": epochs[-1],
         "metrics": {"epoch": list(epochs), "test_acc": [0.1] * len(epochs)}, "checkpoints": entries,
         "summary": {} if summary is None else summary}
    text = json.dumps(m)
    if raw_config is not None:
        text = text.replace('"config": "__RAW__"', f'"config": {raw_config}')
    (folder / "manifest.json").write_text(text)
    return folder


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert cli.main([str(a) for a in argv]) == 2
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.err, out.err
    return lines[0]


# ------------------------------------------------------------- run manifests
@pytest.mark.parametrize("config,message", [
    ({"p": 100000}, "config field 'p' must be >= 3 and <= 10,000, got 100000"),
    ({"width": 10**9}, "config field 'width' must be >= 1 and <= 16,777,216, got 1000000000"),
    ({"width": 1e9}, "config field 'width' must be an integer, got 1000000000.0 (float)"),
    ({"p": 29.5}, "config field 'p' must be an integer, got 29.5 (float)"),
    ({"p": 10**30}, "config field 'p' is out of range for a 64-bit integer: 1000000000000000000000000000000"),
    ({"seed": True}, "config field 'seed' must be an integer, got True (bool)"),
    ({"lr": "0.05"}, "config field 'lr' must be a number, got '0.05' (str)"),
    ({"train_frac": 1.0}, "config field 'train_frac' must be > 0 and < 1, got 1.0"),
    ({"lr": -1}, "config field 'lr' must be > 0 and <= 1000, got -1.0"),
    ({"depth": 3}, "unknown modadd-mlp config keys: ['depth']; known: p, width, epochs, seed, lr, weight_decay, "
                   "train_frac, checkpoint_every"),
])
def test_bad_config_in_a_manifest_is_one_line_naming_the_field(tmp_path, capsys, config, message):
    run = write_run(tmp_path / "r", {**SMALL, **config})
    for argv in (["info", run], ["info", run, "--json"], ["spectrum", run], ["dynamics", run]):
        assert one_line_error(capsys, argv) == f"error: {run / 'manifest.json'}: bad config ({message})"


def test_config_that_would_not_fit_in_memory_is_refused_before_building(tmp_path, capsys):
    run = write_run(tmp_path / "r", {"p": 500, "width": 2**20})
    line = one_line_error(capsys, ["info", run])
    assert re.fullmatch(rf"error: {re.escape(str(run / 'manifest.json'))}: bad config \(the modadd-mlp model and data "
                        r"for p=500, width=1048576 need about 4\.22 TB, more than the [0-9.]+ [kMGT]B of memory "
                        r"available; choose smaller values\)", line), line
    t = get_family("modadd-transformer")
    with pytest.raises(ValueError, match=re.escape("config field 'd_model' (65) must be a multiple of 'n_heads' (4)")):
        t.config_from_dict({"d_model": 65})
    tms = get_family("tms")
    with pytest.raises(ValueError, match=re.escape("config field 'sparsity' must be >= 0 and < 1, got 1.0")):
        tms.config_from_dict({"sparsity": 1.0})
    assert MLP.memory_estimate(MLP.Config()) < 50e6  # the paper's MLP: a few MB


def test_nan_and_string_summary_in_a_manifest(tmp_path, capsys):
    nan_run = write_run(tmp_path / "nan", "__RAW__", raw_config='{"p": 7, "width": 8, "lr": NaN}')
    for argv in (["info", nan_run, "--json"], ["info", nan_run]):
        assert one_line_error(capsys, argv) == (f"error: {nan_run / 'manifest.json'}: manifest field 'config.lr' holds "
                                                "a non-finite number (NaN or infinity is not JSON)")
    s_run = write_run(tmp_path / "s", SMALL, summary="represented_features")
    assert one_line_error(capsys, ["info", s_run, "--json"]) == (
        f"error: {s_run / 'manifest.json'}: manifest field 'summary' is not a JSON object")
    inf_run = write_run(tmp_path / "inf", SMALL)
    m = json.loads((inf_run / "manifest.json").read_text())
    m["metrics"]["test_acc"][1] = float("inf")
    (inf_run / "manifest.json").write_text(json.dumps(m))
    assert one_line_error(capsys, ["info", inf_run]) == (
        f"error: {inf_run / 'manifest.json'}: manifest field 'metrics.test_acc.1' holds a non-finite number "
        "(NaN or infinity is not JSON)")


def test_bool_checkpoint_is_refused(tmp_path, capsys):
    run = write_run(tmp_path / "r", SMALL, dtype=torch.bool)
    ck = run / "checkpoints" / "epoch_000010.safetensors"
    assert one_line_error(capsys, ["spectrum", run]) == (
        f"error: {ck}: tensor 'net.0.weight' has dtype bool, the model needs floating-point values (float32)")
    state = {k: v > 0 for k, v in MLP.build_model(MLP.config_from_dict(SMALL)).state_dict().items()}
    save_file(state, str(tmp_path / "b.safetensors"))
    (tmp_path / "c.json").write_text(json.dumps(SMALL))
    assert one_line_error(capsys, ["import", "modadd-mlp", "--config", tmp_path / "c.json", "--checkpoint",
                                   f"0={tmp_path / 'b.safetensors'}", "--out", tmp_path / "x"]) == (
        f"error: {tmp_path / 'b.safetensors'}: tensor 'net.0.weight' has dtype bool, the model needs floating-point "
        "values (float32)")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------- CLI options, files
def test_train_options_are_validated_before_anything_is_built(tmp_path, capsys):
    out = tmp_path / "t"
    assert one_line_error(capsys, ["train", "modadd-mlp", "--p", "100000", "--out", out]) == (
        "error: config field 'p' must be >= 3 and <= 10,000, got 100000")
    assert one_line_error(capsys, ["train", "modadd-mlp", "--lr", "nan", "--out", out]) == (
        "error: config field 'lr' must be a finite number, got nan")
    assert one_line_error(capsys, ["train", "tms", "--importance", "0", "--out", out]) == (
        "error: config field 'importance' must be > 0 and <= 1, got 0.0")
    assert not out.exists()


def test_import_config_file_is_validated(tmp_path, capsys):
    ck = tmp_path / "e0.safetensors"
    save_file(MLP.build_model(MLP.config_from_dict(SMALL)).state_dict(), str(ck))
    for body, message in (('{"p": 29.5}', "config field 'p' must be an integer, got 29.5 (float)"),
                          ('{"p": 7, "width": 8, "lr": NaN}', "config field 'lr' must be a finite number, got nan"),
                          ('{"p": 7, "width": 8, "epochs": "many"}', "config field 'epochs' must be an integer, got 'many' (str)")):
        (tmp_path / "c.json").write_text(body)
        assert one_line_error(capsys, ["import", "modadd-mlp", "--config", tmp_path / "c.json", "--checkpoint",
                                       f"0={ck}", "--out", tmp_path / "x"]) == (
            f"error: {tmp_path / 'c.json'}: bad modadd-mlp config ({message})")
    (tmp_path / "c.json").write_text('{"p": 7, "width": 8, "epochs": 5}')
    assert one_line_error(capsys, ["import", "modadd-mlp", "--config", tmp_path / "c.json", "--checkpoint",
                                   f"0={ck}", "--checkpoint", f"9={ck}", "--out", tmp_path / "x"]) == (
        "error: the config says epochs=5, but a checkpoint is at epoch 9")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------- environment
@pytest.mark.parametrize("var,value,message", [
    ("ENTK_MEMORY_BUDGET", "1e400", "error: ENTK_MEMORY_BUDGET: byte count too large: '1e400'"),
    ("ENTK_MEMORY_BUDGET", "lots", "error: ENTK_MEMORY_BUDGET: cannot parse a byte count from 'lots' "
                                   "(examples: 4GB, 512MiB, 1e9)"),
    ("ENTK_CACHE_SIZE_LIMIT", "1e400", "error: ENTK_CACHE_SIZE_LIMIT: byte count too large: '1e400'"),
    ("ENTK_CACHE_SIZE_LIMIT", "1e19", "error: ENTK_CACHE_SIZE_LIMIT: byte count too large: '1e19'"),
])
def test_environment_byte_counts(tmp_path, capsys, monkeypatch, var, value, message):
    run = write_run(tmp_path / "r", SMALL)
    monkeypatch.setenv(var, value)
    assert one_line_error(capsys, ["spectrum", run]) == message


def test_stray_row_in_the_cache_settings_is_removed_and_the_entries_stay(tmp_path, capsys, monkeypatch):
    run = write_run(tmp_path / "r", SMALL)
    capsys.readouterr()
    assert cli.main(["spectrum", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cache"] == "miss"
    from entk_core.store import cache as cache_mod

    cache_mod.default_cache().close()
    db = sqlite3.connect(cache_mod.cache_dir() / "cache.db")
    db.executemany("INSERT OR REPLACE INTO Settings VALUES (?, ?)", [("disk_foo", 3), ("cull_limit", "x")])
    db.commit()
    db.close()
    monkeypatch.setattr(cache_mod, "_default", None)  # a new process, as the next command would be
    assert cli.main(["spectrum", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cache"] == "hit"  # nothing cached was lost


def test_a_subprocess_exits_2_with_the_same_line(tmp_path):
    run = write_run(tmp_path / "r", {**SMALL, "p": 100000})
    r = subprocess.run([sys.executable, "-m", "entk_core", "info", str(run)], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"error: {run / 'manifest.json'}: bad config (config field 'p' must be >= 3 and <= 10,000, "
                        "got 100000)\n")


# ------------------------------------------------------------- imports
def test_import_records_what_was_imported_and_marks_its_metrics(tmp_path, capsys):
    model = MLP.build_model(MLP.config_from_dict(SMALL))
    files = {}
    for e in (0, 150, 300):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.01)
        files[e] = tmp_path / f"e{e}.safetensors"
        save_file(model.state_dict(), str(files[e]))
    (tmp_path / "mine.json").write_text(json.dumps(SMALL))
    out = tmp_path / "runs" / "imp"
    argv = ["import", "modadd-mlp", "--config", tmp_path / "mine.json", "--out", out, "--json"]
    for e, f in files.items():
        argv += ["--checkpoint", f"{e}={f}"]
    capsys.readouterr()
    assert cli.main([str(a) for a in argv]) == 0
    info = json.loads(capsys.readouterr().out)
    # the epochs actually imported, not the family's default 500
    assert info["config"]["epochs"] == 300 and info["checkpoints"] == [0, 150, 300]
    assert info["import"] == {"config": SMALL, "config_file": "mine.json", "epochs": [0, 150, 300]}
    um = info["unvouched_metrics"]
    assert um["keys"] == ["train_loss", "test_loss", "train_acc", "test_acc"]
    assert um["reason"].startswith("evaluated at import on the modadd-mlp family's own data and seeded train/test split "
                                   "(seed=0, train_frac=0.7)")
    m = json.loads((out / "manifest.json").read_text())
    assert m["unvouched_metrics"] == um and m["config"] == {**asdict(MLP.Config()), **SMALL, "epochs": 300}
    assert cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "  imported: epochs 0, 150, 300 with config mine.json {\"p\": 7, \"width\": 8}" in text
    assert f"  not vouched for (train_loss, test_loss, train_acc, test_acc): {um['reason']}" in text
    # wherever the accuracies are shown, the reason is shown with them
    assert cli.main(["dynamics", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unvouched_metrics"] == um
    assert cli.main(["dynamics", str(out)]) == 0
    assert "note: the network's accuracies are not vouched for: evaluated at import" in capsys.readouterr().out
    assert cli.main(["sweep", str(out), "--json", "--workers", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["unvouched_metrics"] == um
    np.testing.assert_equal(len(m["imported"]), 3)


def test_import_from_the_library_with_a_config_object(tmp_path):
    from entk_core.workflows.importing import import_run

    ck = tmp_path / "e.safetensors"
    save_file(MLP.build_model(MLP.config_from_dict(SMALL)).state_dict(), str(ck))
    run = import_run(MLP, MLP.Config(p=7, width=8), {0: ck, 300: ck}, tmp_path / "r")
    assert run.config.epochs == 300 and run.manifest["import"]["config"] == SMALL  # not the default 500
    assert run.manifest["import"]["config_file"] is None
