"""A spectrum request under a tiny memory budget is refused at once, in one line (issue 21.7).

``ENTK_MEMORY_BUDGET=100KB python -m entk_core spectrum RUN --top 20`` used to hang: the
planner's search for what would fit recursed (estimate -> _suggest -> _fits -> estimate)
through every layer group and smaller size: minutes for a p = 29 Transformer's flattened
spectrum, more than ten for p = 41. The run here is a one-epoch p = 41 Transformer (nine
layer groups, 1,681 inputs; trained in seconds); its flattened spectrum does not fit.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory) -> Path:
    from entk_core.families.base import get_family
    from entk_core.workflows.training import train

    fam = get_family("modadd-transformer")
    out = tmp_path_factory.mktemp("refusal") / "tf41"
    train(fam, fam.config_from_dict({"p": 41, "d_model": 16, "d_mlp": 32, "n_heads": 2, "epochs": 1,
                                     "checkpoint_every": 1}), out)
    return out


@pytest.mark.timeout(300)
def test_spectrum_under_a_tiny_budget_is_refused_at_once_cli(transformer_run):
    try:
        r = subprocess.run([sys.executable, "-m", "entk_core", "spectrum", str(transformer_run), "--top", "20",
                            "--reduction", "flat"], cwd=REPO, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "ENTK_MEMORY_BUDGET": "100KB"})
    except subprocess.TimeoutExpired:
        pytest.fail("the spectrum was not refused within 120 s under a 100 kB budget")
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    assert "memory budget is 100 kB" in lines[0] and "what would fit: " in lines[0]


@pytest.mark.timeout(120)
def test_spectrum_under_a_tiny_budget_is_refused_at_once_library(transformer_run, monkeypatch):
    from entk_core import MemoryBudgetError
    from entk_core.families.run import open_run
    from entk_core.workflows.analysis import spectrum

    monkeypatch.setenv("ENTK_MEMORY_BUDGET", "100KB")
    with pytest.raises(MemoryBudgetError) as ei:
        spectrum(open_run(transformer_run), top=20, reduction="flat")
    assert "\n" not in str(ei.value) and "what would fit: " in str(ei.value)
