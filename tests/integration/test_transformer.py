"""The modular-addition 1-layer Transformer family (spec §5) on trained runs: exact resume,
the derived OV group, the alignment analysis, the CLI and the page. Tiny shapes. The family
without training (model, data, batch order, key frequencies, the mean reduction):
tests/unit/test_modadd_transformer_family.py."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from entk_core.workflows import analysis
from entk_core.families.base import get_family
from entk_core.families.run import Run
from entk_core.workflows.training import train
from entk_core.workflows.services import Services

FAM = get_family("modadd-transformer")
REPO = Path(__file__).resolve().parents[2]
GROUPS = ["embed", "pos_embed", "attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "mlp.W_in", "mlp.W_out", "unembed"]


def tiny_cfg(**kw):
    base = dict(p=7, d_model=8, n_heads=2, d_mlp=16, epochs=6, checkpoint_every=2, batch_size=8, seed=2)
    return FAM.Config(**{**base, **kw})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Run:
    return train(FAM, tiny_cfg(), tmp_path_factory.mktemp("tt") / "tiny-transformer")


# -------------------------------------------------------------------------- resume
def test_interrupted_run_resumes_exactly(tmp_path, tiny_run):
    class Stop(Exception):
        pass

    def stop_at_3(done, total, msg):
        if done == 3:
            raise Stop

    with pytest.raises(Stop):
        train(FAM, tiny_cfg(), tmp_path / "r", progress=stop_at_3)
    assert Run(tmp_path / "r").epochs == [0, 2]
    resumed = train(FAM, tiny_cfg(), tmp_path / "r")
    assert resumed.status == "complete" and resumed.epochs == [0, 2, 4, 6]
    for e in resumed.epochs:  # (compare tensors: safetensors metadata order makes file bytes vary)
        a, b = resumed.load_state(e), tiny_run.load_state(e)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["test_loss"] == tiny_run.metrics["test_loss"]
    assert resumed.metrics["epoch"] == list(range(7))


def test_derived_ov_group_is_sum_of_w_o_and_w_v(tiny_run):
    K_ov = analysis.kernel_matrix(tiny_run, group="attn.OV")
    K_o = analysis.kernel_matrix(tiny_run, group="attn.W_O")
    K_v = analysis.kernel_matrix(tiny_run, group="attn.W_V")
    np.testing.assert_allclose(K_ov, K_o + K_v, rtol=1e-4, atol=1e-6 * np.abs(K_ov).max())
    assert analysis.kernel_groups(tiny_run) == ["full", *GROUPS, "attn.OV"]


def test_align_report_and_overlap_over_training(tiny_run):
    from entk_core.families.modadd_transformer import analysis as T

    kf = tiny_run.summary["key_frequencies"]
    assert kf and all(1 <= k <= 3 for k in kf)
    rep = FAM.align_report(tiny_run, 6, services=Services(), group=None)
    assert rep["group"] == "unembed" and rep["key_frequencies"] == kf
    (s0, e0), (s1, e1) = T.mode_blocks(len(kf))
    assert [b["modes"] for b in rep["blocks"]] == [[s0, e0], [s1, e1]]
    assert [b["expected"] for b in rep["blocks"]] == ["sum", "axis_sum"]
    for b in rep["blocks"]:
        for name in ("sum", "diff", "axis_sum", "axis_diff"):
            f = b["families"][name]
            assert 0.0 <= f["overlap"] <= f["dim"] + 1e-9 and f["dim"] == 2 * len(kf)
            assert math.isclose(f["overlap"], sum(s**2 for s in f["singular_values"]), rel_tol=1e-4, abs_tol=1e-5)
    json.dumps(rep)
    tab = T.overlap_over_training(tiny_run, services=Services())
    assert tab["epoch"] == [0, 2, 4, 6] and len(tab["d_percent"]) == 4
    assert tab["test_acc"] == [tiny_run.metrics_at(e)["test_acc"] for e in tab["epoch"]]
    y = np.array(tab["percent"])
    np.testing.assert_allclose(tab["d_percent"], np.gradient(y), atol=1e-9)  # fwd/central/bwd differences
    ends = [(tab["epoch"][0] + tab["epoch"][1]) / 2, (tab["epoch"][-2] + tab["epoch"][-1]) / 2]
    assert tab["derivative_peak_epoch"] in tab["epoch"][1:-1] + ends  # one-sided ends: the interval's midpoint
    assert set(tab["accuracy_milestones"]) == {"10%", "50%", "90%", "100%"}
    with pytest.raises(ValueError, match="unknown feature family"):
        T.overlap_over_training(tiny_run, services=Services(), family="nope")


def test_non_transformer_run_is_refused(tiny_run_dir):
    from entk_core.families.modadd_transformer import analysis as T

    with pytest.raises(ValueError, match="needs a modadd-transformer run"):
        T.run_key_frequencies(Run(tiny_run_dir))


@pytest.mark.slow
def test_cli_train_info_align(tmp_path):
    from _cli import run_cli as cli  # in this process (tests/README.md)

    out = tmp_path / "t"
    r = cli("train", "modadd-transformer", "--p", 7, "--d-model", 8, "--n-heads", 2, "--d-mlp", 16,
            "--epochs", 4, "--checkpoint-every", 2, "--batch-size", 8, "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(cli("info", out, "--json").stdout)
    assert info["key_frequencies"] and "attn.OV" in info["groups"]
    r = cli("spectrum", out, "--group", "unembed", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["reduction"] == "mean" and s["top"] <= 40
    r = cli("align", out, "--epoch", 4, "--group", "unembed", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["epoch"] == 4 and rep["blocks"][0]["expected"] == "sum"


@pytest.mark.slow
def test_dashboard_page(tmp_path, tiny_run, tiny_run_dir):
    import shutil

    from streamlit.testing.v1 import AppTest

    from entk_core.store.runs import runs_root

    root = runs_root()  # tmp, from conftest; copies of the session's and the module's runs
    shutil.copytree(tiny_run_dir, root / "a-mlp")
    shutil.copytree(tiny_run.path, root / "b-transformer")

    def page(run_name):
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
        at.session_state["run"] = run_name
        at.run()
        at.switch_page(str(REPO / "entk_core" / "families" / "modadd_transformer" / "page.py"))
        at.run()
        assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
        return at

    at = page("a-mlp")  # not a Transformer: explained, with an offer to train one / open the existing one
    assert "modadd-transformer" in at.info[0].value
    labels = [b.label for b in at.button]
    assert "Train modadd-transformer (seed 2)" in labels and "Open b-transformer" in labels

    at = page("b-transformer")
    assert [m.label for m in at.metric][:4] == ["Epoch", "Train accuracy", "Test accuracy", "Key frequencies"]
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    titles = [json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "") for c in at.get("plotly_chart")]
    assert any(t.startswith("Modes 0:") for t in titles), titles  # a short run: computed at once
    at.selectbox(key="tf_group").select("attn.OV")
    at.run()
    assert not at.exception and not at.error
