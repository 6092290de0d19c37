"""Runs and the training loop: manifests, checkpoints, determinism, exact resume (checkpoint
files and run paths without training: tests/unit/test_checkpoints.py)."""
import json

import pytest
import torch

from entk_core.families.base import get_family
from entk_core.families.run import Run
from entk_core.store.runs import RunError
from entk_core.workflows.training import train

FAM = get_family("modadd-mlp")


def small_cfg(**kw):
    return FAM.Config(**{"p": 7, "width": 16, "epochs": 20, "checkpoint_every": 5, **kw})


def test_train_writes_manifest_and_checkpoints(tmp_path):
    run = train(FAM, small_cfg(), tmp_path / "r")
    assert run.status == "complete"
    assert run.epochs == [0, 5, 10, 15, 20]
    m = run.metrics
    assert m["epoch"] == list(range(21))
    assert all(len(m[k]) == 21 for k in ("train_loss", "test_loss", "train_acc", "test_acc"))
    model = run.load_model(20)
    assert not model.training
    # the checkpoint at epoch 0 is the seeded initialisation
    init = FAM.build_model(small_cfg())
    torch.testing.assert_close(run.load_state(0)["net.0.weight"], init.state_dict()["net.0.weight"])
    assert run.info()["config"]["p"] == 7


def test_training_is_deterministic(tmp_path):
    a = train(FAM, small_cfg(), tmp_path / "a")
    b = train(FAM, small_cfg(), tmp_path / "b")
    assert a.metrics["train_loss"] == b.metrics["train_loss"]
    assert a.checkpoint_sha(20) == b.checkpoint_sha(20)
    c = train(FAM, small_cfg(seed=1), tmp_path / "c")
    assert c.checkpoint_sha(20) != a.checkpoint_sha(20)


def test_interrupted_run_resumes_exactly(tmp_path):
    ref = train(FAM, small_cfg(), tmp_path / "ref")

    class Stop(Exception):
        pass

    def stop_at_12(done, total, msg):
        if done == 12:
            raise Stop

    with pytest.raises(Stop):
        train(FAM, small_cfg(), tmp_path / "r", progress=stop_at_12)
    half = Run(tmp_path / "r")
    assert half.status == "training" and half.epochs == [0, 5, 10]
    resumed = train(FAM, small_cfg(), tmp_path / "r")
    assert resumed.status == "complete"
    assert resumed.checkpoint_sha(20) == ref.checkpoint_sha(20)
    assert resumed.metrics["epoch"] == list(range(21))
    assert resumed.metrics["test_acc"] == ref.metrics["test_acc"]


def test_train_refuses_other_config_and_foreign_folder(tmp_path):
    train(FAM, small_cfg(), tmp_path / "r")
    before = (tmp_path / "r" / "manifest.json").read_bytes()
    with pytest.raises(RunError, match="different config"):
        train(FAM, small_cfg(lr=0.01), tmp_path / "r")
    assert (tmp_path / "r" / "manifest.json").read_bytes() == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not a run"):
        train(FAM, small_cfg(), tmp_path / "junk")


def test_a_run_killed_during_its_first_save_starts_again(tmp_path):
    """A run killed before its first manifest (a grid's Ray task cancelled by Ctrl-C left the lock
    and an empty ``checkpoints/``; a save killed before its rename leaves a temporary file in it)
    is trained from the start by the next call, as if the folder were empty. Anything else in the
    folder still makes it "not a run", untouched."""
    ref = train(FAM, small_cfg(epochs=5), tmp_path / "ref")
    for name, leftovers in (("empty", []), ("temp", [".epoch_000000.safetensors.abc123.tmp"])):
        out = tmp_path / name
        (out / "checkpoints").mkdir(parents=True)
        (out / ".lock").write_text("")
        for f in leftovers:
            (out / "checkpoints" / f).write_bytes(b"partial")
        run = train(FAM, small_cfg(epochs=5), out)
        assert run.status == "complete" and run.checkpoint_sha(5) == ref.checkpoint_sha(5)
        assert not list(out.rglob("*.tmp"))
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not a run"):
        train(FAM, small_cfg(epochs=5), out)
    assert (out / "checkpoints" / "notes.txt").read_text() == "mine"


def test_manifest_errors_are_one_line(tmp_path):
    run = train(FAM, small_cfg(epochs=5), tmp_path / "r")
    mpath = run.path / "manifest.json"
    m = json.loads(mpath.read_text())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON") as e:
        Run(tmp_path / "bad")
    assert "\n" not in str(e.value)
    m2 = dict(m, config={**m["config"], "width": 999})
    mpath.write_text(json.dumps(m2))
    with pytest.raises(RunError, match="shape"):
        Run(run.path).load_model(5)
    mpath.write_text(json.dumps(dict(m, checkpoints=m["checkpoints"] + [{"epoch": 9, "file": "checkpoints/nope.safetensors"}])))
    with pytest.raises(RunError, match="missing"):
        Run(run.path).load_state(9)
    with pytest.raises(RunError, match="no checkpoint at epoch 7"):
        Run(run.path).load_state(7)


