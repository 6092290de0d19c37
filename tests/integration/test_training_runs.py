"""Runs, checkpoints and the training loop."""
import json
import os
import pickle

import pytest
import torch

from entk_core.families.base import get_family
from entk_core.families.run import Run, open_run
from entk_core.store.runs import RunError, load_checkpoint, resolve_run_path, save_checkpoint
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


def test_checkpoint_roundtrip_and_validation(tmp_path):
    state = {"w": torch.randn(3, 4)}
    sha = save_checkpoint(tmp_path / "c.safetensors", state)
    torch.testing.assert_close(load_checkpoint(tmp_path / "c.safetensors", sha256=sha)["w"], state["w"])
    with pytest.raises(RunError, match="sha256"):
        load_checkpoint(tmp_path / "c.safetensors", sha256="0" * 64)
    data = (tmp_path / "c.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match="t.safetensors"):
        load_checkpoint(tmp_path / "t.safetensors")
    save_checkpoint(tmp_path / "n.safetensors", {"w": torch.tensor([1.0, float("nan")])})
    with pytest.raises(RunError, match="NaN"):
        load_checkpoint(tmp_path / "n.safetensors")
    with pytest.raises(RunError, match="missing"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_pickle_checkpoint_is_never_executed(tmp_path):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(RunError, match="pickle"):
        load_checkpoint(tmp_path / "evil.safetensors")
    assert not marker.exists()


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


def test_confined_paths(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    for bad in ["../x", "/etc", "a/../../b", ""]:
        with pytest.raises(RunError):
            resolve_run_path(bad, root, confine=True)
    assert resolve_run_path("ok", root, confine=True) == (root / "ok").resolve()
    with pytest.raises(RunError, match="no such run"):
        open_run("ok", root, confine=True)
