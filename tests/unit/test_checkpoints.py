"""Checkpoint files and run paths without training (moved from
tests/integration/test_training_runs.py): safetensors round trip with sha256, truncation, NaN
and missing files; a pickle posing as a checkpoint is never executed; run paths are confined."""
import os
import pickle

import pytest
import torch

from entk_core.families.run import open_run
from entk_core.store.runs import RunError, load_checkpoint, resolve_run_path, save_checkpoint


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


def test_confined_paths(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    for bad in ["../x", "/etc", "a/../../b", ""]:
        with pytest.raises(RunError):
            resolve_run_path(bad, root, confine=True)
    assert resolve_run_path("ok", root, confine=True) == (root / "ok").resolve()
    with pytest.raises(RunError, match="no such run"):
        open_run("ok", root, confine=True)


def test_identical_weights_give_identical_checkpoint_bytes(tmp_path):
    """safetensors writes metadata in a random (HashMap) order; save_checkpoint canonicalises it,
    so equal weights always get equal sha256s and share cache entries across runs and processes."""
    from safetensors.torch import load

    from entk_core.store.runs import load_checkpoint, save_checkpoint

    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    meta = {"family": "modadd-mlp", "epoch": "10", "z": "1"}
    shas = {save_checkpoint(tmp_path / f"c{i}.safetensors", state, meta) for i in range(24)}
    assert len(shas) == 1
    torch.testing.assert_close(load_checkpoint(tmp_path / "c0.safetensors")["w"], state["w"])
    assert load((tmp_path / "c0.safetensors").read_bytes()).keys() == state.keys()
