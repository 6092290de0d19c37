"""The command line end to end: a subprocess smoke test as a user runs it (``python -m
entk_core``: separate processes sharing the on-disk cache, the one-line error of the real entry
point), the rest in this process (tests/_cli.py)."""
import json

import pytest

from _cli import run_cli, run_cli_subprocess as cli


def test_train_info_spectrum_json(tmp_path):
    out = tmp_path / "r"
    r = run_cli("train", "modadd-mlp", "--p", 7, "--width", 32, "--epochs", 20, "--checkpoint-every", 10, "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["checkpoints"] == [0, 10, 20] and info["config"]["p"] == 7
    r = run_cli("info", out, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["status"] == "complete" and "net.0" in info["groups"]
    r = cli("spectrum", out, "--epoch", 10, "--top", 20, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["epoch"] == 10 and len(s["eigenvalues"]) == 20 and isinstance(s["cliffs"], list)
    assert s["eigenvalues"] == sorted(s["eigenvalues"], reverse=True)
    assert s["cache"] == "miss"
    r2 = cli("spectrum", out, "--epoch", 10, "--top", 20, "--json")
    s2 = json.loads(r2.stdout)
    assert s2["cache"] == "hit" and s2["eigenvalues"] == s["eigenvalues"]
    r = run_cli("spectrum", out, "--group", "net.3", "--reduction", "mean", "--top", 5, "--json")
    assert r.returncode == 0, r.stderr
    r = cli("spectrum", out, "--group", "net.9")  # the real entry point's one-line error
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "unknown layer group" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, needle", [
    (["info", "/nonexistent/run"], "no such run folder"),
    (["spectrum", "{run}", "--epoch", "7"], "no checkpoint at epoch 7"),
    (["spectrum", "{run}", "--group", "net.9"], "unknown layer group"),
    (["spectrum", "{run}", "--top", "0"], "top must be between 1 and n = 49"),
    (["train", "modadd-mlp", "--p", "7", "--epochs", "0", "--out", "{tmp}/x"], "epochs"),
])
def test_bad_input_is_one_line_error(tiny_run_dir, tmp_path, args, needle):
    args = [a.format(run=tiny_run_dir, tmp=tmp_path) for a in args]
    r = run_cli(*args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_spectrum_prints_the_estimate_on_stderr_before_a_long_request(tiny_run_dir, tmp_path, monkeypatch, capsys):
    """Above ESTIMATE_ABOVE_S the planner's estimate is one stderr line before the work (and
    none when served from the cache); small requests print nothing extra."""
    from entk_core.cli import analysis as cli_analysis
    from entk_core.cli import main

    monkeypatch.setenv("ENTK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ENTK_PROGRESS", "off")
    args = ["spectrum", str(tiny_run_dir), "--reduction", "flat", "--top", "10", "--json"]
    assert main(args) == 0
    assert "estimate" not in capsys.readouterr().err  # ~0 s: below the threshold
    monkeypatch.setattr(cli_analysis, "ESTIMATE_ABOVE_S", 0.0)
    assert main([*args[:-2], "12", "--json"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("estimate: about ") and "top_eigenpairs(" in err and "method=" in err
    assert main([*args[:-2], "12", "--json"]) == 0  # now cached: no estimate
    assert "estimate" not in capsys.readouterr().err
