"""Untrusted and malformed input, table-driven, through BOTH the CLI and the dashboard.

Each case damages a copy of a tiny trained run (or asks for something impossible) and
checks that

* the CLI (``entk_core.cli.main`` in this process, and ``python -m entk_core`` in a subprocess
  for a few cases) exits 2 with exactly one stderr line ``error: ...`` naming the file and
  the fault, and no traceback;
* the dashboard (``AppTest`` on app.py with the run in ``ENTK_RUNS_DIR``, the bad value
  in the URL where there is one) shows the fault in an ``st.error`` and raises nothing;
* nothing on disk changed (every file under the runs folder hashed before and after);
* a pickle placed where a checkpoint or a cache entry is expected is never unpickled
  (its payload would create a marker file).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from _cli import run_cli, run_cli_subprocess

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")
RUN = "r"  # the damaged run's folder name under the runs folder
LAST = "checkpoints/epoch_000030.safetensors"  # tiny_run_dir: epochs 0, 10, 20, 30


# ---------------------------------------------------------------- helpers
class MarkerPayload:
    """Unpickling this creates ``path`` (proof that a pickle was executed)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file (or link target) under ``root``, and every folder, except the
    result cache (``ENTK_CACHE_DIR``, which may legitimately be written)."""
    out = {}
    cache = Path(os.environ["ENTK_CACHE_DIR"])
    for p in sorted(root.rglob("*")):
        if p == cache or cache in p.parents:
            continue
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def cli(*args, env=None) -> subprocess.CompletedProcess:
    """The CLI in this process (tests/_cli.py); :func:`run_cli_subprocess` for the real entry point."""
    return run_cli(*args, env=env)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def app_run(query: dict[str, str] | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=180)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def assert_ui_error(at, *needles: str) -> str:
    """One message naming the problem, never a traceback: an ``st.error``, or for a bad value
    in the link the ``st.warning`` that says the page shows the default instead
    (docs/url-parameters.md)."""
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error] + [w.value for w in at.warning if "from the link" in w.value]
    hits = [e for e in errors if all(n in e for n in needles)]
    assert hits, (needles, errors)
    assert all("Traceback" not in e and "\n" not in e.strip() for e in errors), errors
    return hits[0]


def rewrite_checkpoint(run: Path, rel: str, state: dict[str, torch.Tensor]) -> None:
    """Write ``state`` as a well-formed checkpoint at ``rel`` and record its true sha256 in the
    manifest, so that only the content (shape, NaN...) is wrong, not the bookkeeping."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in state.items()})
    (run / rel).write_bytes(data)
    m = json.loads((run / "manifest.json").read_text())
    for c in m["checkpoints"]:
        if c["file"] == rel:
            c["sha256"] = hashlib.sha256(data).hexdigest()
    (run / "manifest.json").write_text(json.dumps(m))


def edit_manifest(run: Path, fn: Callable[[dict], None]) -> None:
    m = json.loads((run / "manifest.json").read_text())
    fn(m)
    (run / "manifest.json").write_text(json.dumps(m))


def last_state(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load((run / LAST).read_bytes())


# ---------------------------------------------------------------- damage
def truncate(run, tmp):
    data = (run / LAST).read_bytes()
    (run / LAST).write_bytes(data[: len(data) // 2])


def flip_bytes(run, tmp):
    data = bytearray((run / LAST).read_bytes())
    for i in range(len(data) - 64, len(data) - 32):
        data[i] ^= 0xFF
    (run / LAST).write_bytes(bytes(data))


def garble_header(run, tmp):
    data = bytearray((run / LAST).read_bytes())
    data[8:40] = b"#" * 32
    (run / LAST).write_bytes(bytes(data))


def pickle_as_checkpoint(run, tmp):
    (run / LAST).write_bytes(pickle.dumps(MarkerPayload(tmp / "PWNED")))


def torch_save_as_checkpoint(run, tmp):
    import io

    buf = io.BytesIO()
    torch.save({"net.0.weight": torch.zeros(2), "evil": MarkerPayload(tmp / "PWNED")}, buf)
    (run / LAST).write_bytes(buf.getvalue())


def wrong_shape(run, tmp):
    st = last_state(run)
    st["net.0.weight"] = torch.zeros(16, 14)  # config: width 32, 2p = 14
    rewrite_checkpoint(run, LAST, st)


def nan_weights(run, tmp):
    st = last_state(run)
    st["net.3.weight"][0, 0] = float("nan")
    rewrite_checkpoint(run, LAST, st)


def inf_weights(run, tmp):
    st = last_state(run)
    st["net.0.weight"][1, 2] = float("inf")
    rewrite_checkpoint(run, LAST, st)


def delete_checkpoint(run, tmp):
    (run / LAST).unlink()


def checkpoint_path_escapes(run, tmp):
    shutil.copy(run / LAST, tmp / "outside.safetensors")
    edit_manifest(run, lambda m: m["checkpoints"][-1].update(file="../../outside.safetensors"))


def checkpoint_symlink_escapes(run, tmp):
    # same bytes, same sha256: only the location is wrong
    shutil.copy(run / LAST, tmp / "outside.safetensors")
    (run / LAST).unlink()
    (run / LAST).symlink_to(tmp / "outside.safetensors")


def manifest_not_json(run, tmp):
    (run / "manifest.json").write_text('{"format": 1, "family": ')


def manifest_wrong_family(run, tmp):
    edit_manifest(run, lambda m: m.update(family="resnet-50"))


def manifest_bad_metrics(run, tmp):
    edit_manifest(run, lambda m: m["metrics"].update(test_acc=0.5))


def nothing(run, tmp):
    pass


@dataclass
class Case:
    id: str
    damage: Callable[[Path, Path], None]
    cli: tuple[str, ...] | None  # CLI arguments ({run}: the run folder); None: no CLI variant
    needles: tuple[str, ...]  # what the one-line error must contain (CLI and UI)
    query: dict[str, str] | None = field(default_factory=dict)  # URL parameters; None: no UI variant
    ui_needles: tuple[str, ...] | None = None  # when the UI words it differently


SPECTRUM = ("spectrum", "{run}", "--top", "10")
CASES = [
    Case("truncated-checkpoint", truncate, SPECTRUM, ("epoch_000030.safetensors", "truncated")),
    Case("corrupt-checkpoint-data", flip_bytes, SPECTRUM, ("epoch_000030.safetensors", "does not match the manifest's sha256")),
    Case("corrupt-checkpoint-header", garble_header, SPECTRUM, ("epoch_000030.safetensors", "corrupt safetensors header")),
    Case("pickle-posing-as-checkpoint", pickle_as_checkpoint, SPECTRUM, ("epoch_000030.safetensors", "pickle, which is never loaded")),
    Case("torch-save-posing-as-checkpoint", torch_save_as_checkpoint, SPECTRUM, ("epoch_000030.safetensors", "zip archive")),
    Case("shape-contradicts-config", wrong_shape, SPECTRUM,
         ("epoch_000030.safetensors", "'net.0.weight' has shape [16, 14], the run's config implies [32, 14]")),
    Case("nan-weights", nan_weights, SPECTRUM, ("epoch_000030.safetensors", "'net.3.weight' contains NaN or infinite values")),
    Case("inf-weights", inf_weights, SPECTRUM, ("epoch_000030.safetensors", "'net.0.weight' contains NaN or infinite values")),
    Case("manifest-names-missing-checkpoint", delete_checkpoint, SPECTRUM, ("epoch_000030.safetensors", "checkpoint file is missing")),
    Case("checkpoint-path-outside-run", checkpoint_path_escapes, ("info", "{run}"),
         ("manifest.json", "'../../outside.safetensors' points outside the run folder")),
    Case("checkpoint-symlink-outside-run", checkpoint_symlink_escapes, SPECTRUM,
         ("epoch_000030.safetensors", "points outside the run folder")),
    Case("manifest-not-json", manifest_not_json, ("info", "{run}"), ("manifest.json", "not valid JSON")),
    Case("manifest-wrong-family", manifest_wrong_family, ("info", "{run}"), ("manifest.json", "unknown model family 'resnet-50'")),
    Case("manifest-metrics-not-lists", manifest_bad_metrics, ("info", "{run}"), ("manifest.json", "'metrics.test_acc' is not a list")),
    Case("missing-run-folder", nothing, ("info", "no-such-run"), ("no-such-run", "no such run folder"),
         query={"run": "no-such-run"}),
    Case("run-path-traversal-in-url", nothing, None, ("'../outside'", "not a run name inside the runs folder"),
         query={"run": "../outside"}),
    Case("epoch-not-checkpointed", nothing, ("spectrum", "{run}", "--epoch", "7"), (RUN, "no checkpoint at epoch 7"),
         query={"epoch": "7"}),
    Case("negative-top", nothing, ("spectrum", "{run}", "--top", "-5"), ("top must be between 1 and n = 49", "-5"), query=None),
    Case("huge-top", nothing, ("spectrum", "{run}", "--top", "1000000000"), ("top must be between 1 and n = 49", "1000000000"),
         query=None),
]


@pytest.fixture
def runs_root(tiny_run_dir, tmp_path, monkeypatch) -> Path:
    """A runs folder holding a copy of the tiny run as ``r`` (and ENTK_RUNS_DIR set to it)."""
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copytree(tiny_run_dir, root / RUN)
    monkeypatch.setenv("ENTK_RUNS_DIR", str(root))
    # a valid run next to (outside) the runs folder: the URL must not reach it
    shutil.copytree(tiny_run_dir, tmp_path / "outside")
    return root


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_cli_and_ui(case: Case, runs_root: Path, tmp_path: Path):
    run = runs_root / RUN
    case.damage(run, tmp_path)
    before = tree_hashes(tmp_path)
    cli_line = ui_line = "-"
    if case.cli is not None:
        cli_line = assert_one_line_error(cli(*[a.format(run=run) for a in case.cli]), *case.needles)
    if case.query is not None:
        ui_line = assert_ui_error(app_run(case.query), *(case.ui_needles or case.needles))
    if os.environ.get("ENTK_SHOW_ERRORS"):  # to read the messages: ENTK_SHOW_ERRORS=1 pytest -s
        print(f"\n[{case.id}]\n  CLI: {cli_line}\n  UI:  {ui_line}")
    assert tree_hashes(tmp_path) == before, "the CLI or the dashboard changed files"
    assert not (tmp_path / "PWNED").exists(), "a pickle was executed"


SUBPROCESS_CASES = ("truncated-checkpoint", "pickle-posing-as-checkpoint", "manifest-not-json")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.id in SUBPROCESS_CASES])
def test_bad_input_through_the_real_entry_point(case: Case, runs_root: Path, tmp_path: Path):
    """``python -m entk_core`` in a fresh process: the same single line, exit 2, no traceback
    (nothing else, a warning say, reaches stderr), nothing written, no pickle executed."""
    run = runs_root / RUN
    case.damage(run, tmp_path)
    before = tree_hashes(tmp_path)
    assert_one_line_error(run_cli_subprocess(*[a.format(run=run) for a in case.cli], timeout=300), *case.needles)
    assert tree_hashes(tmp_path) == before and not (tmp_path / "PWNED").exists()


def test_ui_widgets_refuse_bad_top(runs_root):
    """The dashboard cannot even ask for a negative or huge k: the widget keeps a valid value."""
    def top_input(at):  # keyed by the kernel size n, so it resets when n changes
        return next(w for w in at.number_input if w.key.startswith("spec_top"))

    at = app_run()
    w = top_input(at)
    lo, hi = w.min, w.max
    for bad in (-5, 0, 10**9):
        top_input(at).set_value(bad).run()
        assert not at.exception and not at.error
        assert lo <= top_input(at).value <= hi  # clamped into the control's range, never passed on
    assert at.get("plotly_chart")


def test_url_cannot_reach_a_symlinked_run_outside_the_root(runs_root, tmp_path):
    """A run folder symlinked into the runs folder from outside is listed as broken and never opened."""
    (runs_root / "evil").symlink_to(tmp_path / "outside")
    before = tree_hashes(tmp_path)
    at = app_run({"run": "evil"})
    assert_ui_error(at, "evil", "resolves outside the runs folder")
    assert at.session_state["run"] == RUN  # fell back to the good run
    assert "evil" not in at.selectbox(key="run").options
    assert tree_hashes(tmp_path) == before


# ------------------------------------------------------- cache integrity
def _poison_cache(cache_dir: Path, marker: Path) -> int:
    """Replace every entry: half by a diskcache-pickled payload (MODE_PICKLE), half by raw
    pickle bytes in place of our framed npz (MODE_RAW). Returns the number replaced."""
    import diskcache

    raw = diskcache.Cache(str(cache_dir))
    keys = list(raw.iterkeys())
    raw.close()
    assert keys, "nothing was cached"
    for i, key in enumerate(keys):
        if i % 2 == 0:
            raw = diskcache.Cache(str(cache_dir))
            raw.set(key, MarkerPayload(marker))  # pickled by diskcache
            raw.close()
        else:
            db = sqlite3.connect(cache_dir / "cache.db")
            db.execute("UPDATE Cache SET value = ?, mode = 1, filename = NULL WHERE key = ?",
                       (pickle.dumps(MarkerPayload(marker)), key))
            db.commit()
            db.close()
    return len(keys)


def test_poisoned_cache_entries_are_discarded_and_recomputed_cli(runs_root, tmp_path):
    run = runs_root / RUN
    marker = tmp_path / "PWNED"
    r = cli(*SPECTRUM[:1], run, "--top", "10", "--json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    n = _poison_cache(Path(os.environ["ENTK_CACHE_DIR"]), marker)
    assert n >= 2  # kernel + spectrum
    before = tree_hashes(runs_root)
    r = run_cli_subprocess(*SPECTRUM[:1], run, "--top", "10", "--json")  # a real process: its stderr
    assert r.returncode == 0, r.stderr
    warnings = r.stderr.splitlines()  # one warning per discarded entry, naming its key and reason
    assert len(warnings) == n and all(w.startswith("warning: discarded the cache entry '") for w in warnings), r.stderr
    assert any("ForeignEntry" in w for w in warnings) and "Traceback" not in r.stderr
    again = json.loads(r.stdout)
    assert again["cache"] == "miss" and again["eigenvalues"] == pytest.approx(first["eigenvalues"], rel=1e-6)
    assert not marker.exists(), "a pickled cache entry was executed"
    assert tree_hashes(runs_root) == before
    r = cli(*SPECTRUM[:1], run, "--top", "10", "--json")  # the recomputed entry is trusted again
    assert json.loads(r.stdout)["cache"] == "hit"


def test_poisoned_cache_entries_are_discarded_and_recomputed_ui(runs_root, tmp_path):
    marker = tmp_path / "PWNED"
    at = app_run()
    assert not at.exception and not at.error and at.get("plotly_chart")
    from entk_core.store import cache as cache_mod

    cache_mod.default_cache().close()
    assert _poison_cache(Path(os.environ["ENTK_CACHE_DIR"]), marker) >= 2
    before = tree_hashes(runs_root)
    at = app_run()
    assert not at.exception and not at.error and at.get("plotly_chart")
    # recomputed (here, or by a worker whose result the page then reads: "computed in X s")
    assert any("computed now" in c.value or "computed in" in c.value for c in at.caption), [c.value for c in at.caption]
    assert not marker.exists(), "a pickled cache entry was executed"
    assert tree_hashes(runs_root) == before


def test_cache_keys_cover_every_dependency(runs_root, tmp_path):
    """Checkpoint content, group, reduction, beta, k and the code version all change the key;
    the key is built from the checkpoint's actual bytes, so a replaced file never hits."""
    from entk_core.workflows import analysis
    from entk_core.store import cache as cache_mod
    from entk_core.families.run import Run

    keys = []
    orig = cache_mod.ArrayCache.get_or_compute

    def spy(self, key, compute):
        keys.append(key)
        return orig(self, key, compute)

    run = Run(runs_root / RUN)
    mp = pytest.MonkeyPatch()
    mp.setattr(cache_mod.ArrayCache, "get_or_compute", spy)
    try:
        analysis.kernel_matrix(run, 30)
        base = keys[-1]
        for kw in ({"epoch": 20}, {"group": "net.0"}, {"reduction": "mean"}, {"beta": 0.5}):
            analysis.kernel_matrix(run, kw.pop("epoch", 30), **kw)
            assert keys[-1] != base, kw
        mp.setattr(cache_mod, "CODE_VERSION", "999")
        analysis.kernel_matrix(run, 30)
        assert keys[-1] != base
    finally:
        mp.undo()
    for part in ("checkpoint", "group", "reduction", "beta", "config", f"|v{cache_mod.CODE_VERSION}|"):
        assert part in base, part
    # a checkpoint replaced behind the manifest's back is refused, never served from the cache
    flip_bytes(runs_root / RUN, tmp_path)
    with pytest.raises(ValueError, match="does not match the manifest's sha256"):
        analysis.kernel_matrix(Run(runs_root / RUN), 30)


# ------------------------------------------------------- resource limits
def test_memory_budget_refusal_reaches_cli_and_ui(runs_root, monkeypatch):
    """A request over ENTK_MEMORY_BUDGET is refused before any work, with what would fit."""
    env = {"ENTK_MEMORY_BUDGET": "12kB"}
    r = cli("spectrum", runs_root / RUN, "--reduction", "trace", env=env)
    line = assert_one_line_error(r, "memory budget is 12 kB", "what would fit: at most")
    monkeypatch.setenv("ENTK_MEMORY_BUDGET", "12kB")
    at = app_run()
    assert_ui_error(at, "memory budget is 12 kB", "what would fit")
    assert line.split("what would fit")[1] in [e.value for e in at.error][0]


@pytest.mark.slow
@pytest.mark.timeout(120)  # a planner that loops instead of refusing fails here, not at the tier's limit
def test_memory_budget_refuses_flat_spectrum_with_suggestion(mlp29_run_dir, tmp_path, monkeypatch):
    """The p = 29 MLP's flattened kernel is 24,389²; under a 20 MB budget the planner must refuse
    (CLI exit 2, UI st.error) and suggest a smaller request."""
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copytree(mlp29_run_dir, root / mlp29_run_dir.name)
    monkeypatch.setenv("ENTK_RUNS_DIR", str(root))
    r = run_cli("spectrum", root / mlp29_run_dir.name, "--reduction", "flat", "--top", "50",
                env={"ENTK_MEMORY_BUDGET": "20MB"})
    assert_one_line_error(r, "memory budget is 20 MB", "what would fit")
    monkeypatch.setenv("ENTK_MEMORY_BUDGET", "20MB")
    at = app_run()
    at.selectbox(key="spec_reduction").set_value("flat").run()
    assert_ui_error(at, "memory budget is 20 MB", "what would fit")
