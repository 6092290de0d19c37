"""`grid`: the product of option lists, one training run per unit; finished runs are skipped and an
interrupted grid resumes (locally and with --ray)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from entk_core.families.run import open_run
from entk_core.workflows.grid import grid

REPO = Path(__file__).resolve().parents[2]


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "entk_core", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=600)


def test_grid_skips_finished_runs_and_reports_failures(tmp_path):
    opts = {"seed": [0, 1], "p": [5], "width": [16], "epochs": [20]}
    res = grid("modadd-mlp", opts, tmp_path, workers=1)
    assert [r["ok"] for r in res.rows] == [True, True] and not any(r["skipped"] for r in res.rows)
    for r in res.rows:
        assert open_run(tmp_path / r["name"]).status == "complete"
    # a folder that holds something else fails that unit only (after one retry); the others are skipped
    bad = tmp_path / "modadd-mlp-p5-width16-epochs20-seed2"
    bad.mkdir()
    (bad / "notes.txt").write_text("not a run")
    res = grid("modadd-mlp", {**opts, "seed": [0, 1, 2]}, tmp_path, workers=1)
    by = {r["name"]: r for r in res.rows}
    assert by["modadd-mlp-p5-width16-epochs20-seed0"]["skipped"] and by["modadd-mlp-p5-width16-epochs20-seed1"]["skipped"]
    fail = by[bad.name]
    assert not fail["ok"] and fail["attempts"] == 2 and "not a run" in fail["error"]
    assert (bad / "notes.txt").read_text() == "not a run"


@pytest.mark.slow
@pytest.mark.parametrize("ray", [False, pytest.param(True, marks=pytest.mark.xdist_group("ray"))],
                         ids=["local", "ray"])  # the Ray case runs beside the other users of the session's Ray
def test_grid_resumes_after_an_interrupt(tmp_path, ray, request):
    """2 seeds x 2 primes of the MLP; Ctrl-C once the first run is done; the second call completes the
    grid, skipping finished runs and resuming the interrupted ones from their checkpoints. With
    ``--ray`` both calls (real processes, one interrupted) use the session's local Ray instance
    through ``ENTK_RAY_ADDRESS``."""
    out = tmp_path / "runs"
    args = ["grid", "modadd-mlp", "--seed", "0,1", "--p", "5,7", "--width", "64", "--epochs", "600",
            "--checkpoint-every", "100", "--out", str(out), "--workers", "2", "--json"] + (["--ray"] if ray else [])
    env = {**os.environ, "ENTK_PROGRESS": "off", "OMP_NUM_THREADS": "1"}
    if ray:
        env["ENTK_RAY_ADDRESS"] = request.getfixturevalue("ray_cluster").address
    # Ctrl-C as a terminal sends it, even where the suite itself ignores SIGINT (a shell's
    # background job does, and a child inherits that: the grid would run to its end)
    proc = subprocess.Popen([sys.executable, "-m", "entk_core", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # wait until some run has checkpoints beyond epoch 0
            ms = [json.loads(m.read_text()) for m in out.glob("*/manifest.json")] if out.exists() else []
            if any(m.get("epochs_done", 0) >= 200 for m in ms):
                break
            if proc.poll() is not None:
                pytest.fail(f"grid ended before the interrupt: {proc.stderr.read()}")
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    states = {m.parent.name: json.loads(m.read_text()) for m in out.glob("*/manifest.json")}
    assert states and not all(s["status"] == "complete" for s in states.values())
    done_before = {n for n, s in states.items() if s["status"] == "complete"}
    partial = {n: s["epochs_done"] for n, s in states.items() if s["status"] != "complete" and s["epochs_done"] > 0}

    r = _cli(*args, env=env)
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert obj["n_runs"] == 4 and obj["n_failed"] == 0
    assert obj["executor"]["executor"] == ("ray" if ray else "local")
    for row in obj["runs"]:
        assert open_run(out / row["name"]).status == "complete"
        assert row["skipped"] == (row["name"] in done_before)
        if row["name"] in partial:
            assert row["resumed_from"] == partial[row["name"]]
