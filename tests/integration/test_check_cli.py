"""``check`` through the cached workflows and ``--check K`` on the CLI (issue 18.3)."""
import json

import pytest
import torch

from entk_core.cli import main
from entk_core.engine import checks
from entk_core.families.run import open_run
from entk_core.workflows import analysis
from entk_core.workflows.services import Services

FIELDS = {"entries", "max_rel_error", "tolerance", "dtype", "seed", "seconds", "worst"}


def test_spectrum_records_the_check_with_the_first_computation(tiny_run_dir):
    run = open_run(tiny_run_dir)
    for reduction in ("trace", "mean", "flat"):
        res = analysis.spectrum(run, 20, reduction=reduction, top=5, check=4)
        c = res.meta["check"]
        assert res.meta["cache"] == "miss" and set(c) == FIELDS and c["entries"] == 4, reduction
        assert c["max_rel_error"] <= 1e-5 and c["dtype"] == "float64"
        again = analysis.spectrum(run, 20, reduction=reduction, top=5)      # served: the stored record
        assert again.meta["cache"] == "hit" and again.meta["check"] == c
    # a new spectrum of a cached (N, N) kernel carries the kernel's record
    res = analysis.spectrum(run, 20, reduction="trace", top=3)
    assert res.meta["cache"] == "miss" and res.meta["check"]["entries"] == 4
    # no check asked for: none recorded
    assert analysis.spectrum(run, 10, reduction="mean", top=3).meta["check"] is None
    # the services pass their own check on
    assert Services(check=2).spectrum(run, 0, reduction="mean", top=3).meta["check"]["entries"] == 2
    K = Services(check=2).kernel_matrix(run, 0, reduction="trace")
    assert K.shape == (49, 49)


def test_cli_check(tiny_run_dir, capsys):
    args = ["spectrum", str(tiny_run_dir), "--epoch", "10", "--top", "5"]
    assert main([*args, "--check", "4", "--json"]) == 0
    c = json.loads(capsys.readouterr().out)["check"]
    assert set(c) == FIELDS and c["entries"] == 4 and c["max_rel_error"] <= 1e-5
    assert main([*args, "--reduction", "flat", "--check", "3"]) == 0
    out = capsys.readouterr().out
    assert "check: 3 kernel entries against per-example autograd in float64: max relative error" in out
    with pytest.raises(SystemExit) as e:
        main([*args, "--check", "-1"])
    assert e.value.code == 2 and "--check takes a number of kernel entries" in capsys.readouterr().err


def test_cli_failed_check_is_one_line_and_caches_nothing(tiny_run_dir, capsys, monkeypatch):
    monkeypatch.setitem(checks.TOLERANCE, torch.float32, 1e-16)        # no float32 kernel meets it
    args = ["spectrum", str(tiny_run_dir), "--epoch", "20", "--top", "4", "--reduction", "mean"]
    assert main([*args, "--check", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: eNTK spot check failed: K[") and err.count("\n") == 1
    assert "per-example autograd in float64 gives" in err and "tolerance 1e-16" in err
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cache"] == "miss"      # the failed result was not stored
