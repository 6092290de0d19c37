"""`grid` option lists without training (moved from tests/integration/test_grid.py): run
names, bad options, the CLI's one-line error for a bad value."""
from pathlib import Path

import pytest

from _cli import run_cli
from entk_core.workflows.grid import grid_runs


def test_grid_names_and_bad_options():
    runs = grid_runs("modadd-mlp", {"seed": [0, 1], "p": [5, 7], "width": [16]})
    assert [n for n, _ in runs] == ["modadd-mlp-p5-width16-seed0", "modadd-mlp-p5-width16-seed1",
                                    "modadd-mlp-p7-width16-seed0", "modadd-mlp-p7-width16-seed1"]
    assert [(c.p, c.seed, c.width) for _, c in runs] == [(5, 0, 16), (5, 1, 16), (7, 0, 16), (7, 1, 16)]
    with pytest.raises(ValueError, match="unknown modadd-mlp option"):
        grid_runs("modadd-mlp", {"depth": [2]})
    with pytest.raises(ValueError, match="twice"):
        grid_runs("modadd-mlp", {"seed": [1, 1]})
    r = run_cli("grid", "modadd-mlp", "--seed", "0,x", "--out", "/nonexistent-never-written")
    assert r.returncode == 2 and r.stderr.strip() == "error: --seed: 'x' is not a int"
    assert not Path("/nonexistent-never-written").exists()
