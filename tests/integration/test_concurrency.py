"""Concurrency and crash safety.

* Two requests for one uncached kernel or spectrum (two threads, like two dashboard
  sessions; two processes, like a CLI sweep and a dashboard) compute it exactly once.
  In-process computations are counted by wrapping ``entk_core.engine.kernels.empirical_ntk`` and
  ``entk_core.workflows.analysis.top_eigenpairs``; across processes each wrapper appends to a
  shared marker file.
* A computation that is cancelled (an exception from its progress callback, as Streamlit
  raises when a run is stopped) or killed (SIGKILL) stores nothing and leaves the key free.
* A training process SIGKILLed at random moments leaves a run that opens, verifies and
  resumes to exactly the uninterrupted result; the manifest never references a temp file.
"""
from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from entk_core.workflows import analysis
from entk_core.store.cache import ArrayCache
from entk_core.families.run import Run

REPO = Path(__file__).resolve().parents[2]
SLOW_COMPUTE_S = 0.6  # each counted computation sleeps this long, so the requests overlap


def _counting(monkeypatch) -> dict[str, int]:
    """Count (and slow down) the kernel and eigendecomposition computations in this process."""
    import entk_core.engine.kernels as kernels

    counts = {"kernel": 0, "eig": 0}
    lock = threading.Lock()
    real_ntk, real_eig = kernels.empirical_ntk, analysis.top_eigenpairs

    def ntk(*a, **kw):
        with lock:
            counts["kernel"] += 1
        time.sleep(SLOW_COMPUTE_S)
        return real_ntk(*a, **kw)

    def eig(*a, **kw):
        with lock:
            counts["eig"] += 1
        return real_eig(*a, **kw)

    monkeypatch.setattr(kernels, "empirical_ntk", ntk)
    monkeypatch.setattr(analysis, "top_eigenpairs", eig)
    return counts


def _in_threads(n: int, fn) -> list:
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def work(i):
        try:
            barrier.wait(10)
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, errors
    return results


def test_two_threads_one_kernel_computation(tiny_run_dir, monkeypatch):
    counts = _counting(monkeypatch)
    run = Run(tiny_run_dir)
    Ks = _in_threads(2, lambda: analysis.kernel_matrix(run, 30, reduction="trace"))
    assert counts["kernel"] == 1
    np.testing.assert_array_equal(Ks[0], Ks[1])
    assert Ks[0].shape == (49, 49)


def test_two_threads_one_spectrum_computation(tiny_run_dir, monkeypatch):
    """Like two dashboard sessions opening the same view: one kernel, one eigendecomposition."""
    counts = _counting(monkeypatch)
    run = Run(tiny_run_dir)
    res = _in_threads(3, lambda: analysis.spectrum(run, 20, group="net.3", top=10))
    assert counts == {"kernel": 1, "eig": 1}
    assert sorted(r.meta["cache"] for r in res) == ["hit", "hit", "miss"]
    for r in res[1:]:
        np.testing.assert_array_equal(r.eigenvalues, res[0].eigenvalues)


# ------------------------------------------------------------- processes
WORKER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    import entk_core.engine.kernels as kernels
    from entk_core.workflows import analysis
    from entk_core.families.run import Run

    marker, barrier, slow = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    real_ntk, real_eig = kernels.empirical_ntk, analysis.top_eigenpairs

    def note(what):
        with open(marker, "a") as f:   # O_APPEND: one line per computation, from any process
            f.write(f"{what} {os.getpid()}\\n")

    def ntk(*a, **kw):
        note("kernel")
        time.sleep(slow)
        return real_ntk(*a, **kw)

    def eig(*a, **kw):
        note("eig")
        return real_eig(*a, **kw)

    kernels.empirical_ntk, analysis.top_eigenpairs = ntk, eig
    (barrier / f"ready-{os.getpid()}").touch()   # imports done: wait for the test's go
    deadline = time.time() + 120
    while not (barrier / "go").exists() and time.time() < deadline:
        time.sleep(0.002)
    what = sys.argv[4]
    if what == "cli":   # the CLI, in this process, so that its computations are counted
        from entk_core.cli import main
        sys.exit(main(sys.argv[5:]))
    run = Run(sys.argv[5])
    if what == "kernel":
        K = analysis.kernel_matrix(run, 30)
        print(json.dumps({"sum": float(K.sum())}))
    else:
        res = analysis.spectrum(run, 30, top=10)
        print(json.dumps({"eigenvalues": [float(v) for v in res.eigenvalues], "cache": res.meta["cache"]}))
""")


_PROCS: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _reap():
    """Kill and reap every subprocess a test started, even when it fails."""
    yield
    while _PROCS:
        p = _PROCS.pop()
        if p.poll() is None:
            p.kill()
        p.communicate()


def _popen(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _PROCS.append(p)
    return p


def _spawn(tmp_path: Path, *args: str, slow: float = SLOW_COMPUTE_S) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    (tmp_path / "barrier").mkdir(exist_ok=True)
    return _popen([str(script), str(tmp_path / "marker"), str(tmp_path / "barrier"), str(slow), *args])


def _go(tmp_path: Path, n: int) -> None:
    """Release the workers together once all ``n`` have imported everything."""
    deadline = time.time() + 120
    while len(list((tmp_path / "barrier").glob("ready-*"))) < n:
        assert time.time() < deadline, "workers did not start"
        failed = [p for p in _PROCS if p.poll() is not None]
        assert not failed, failed[0].communicate()[1]
        time.sleep(0.01)
    (tmp_path / "barrier" / "go").touch()


def _marker_counts(tmp_path: Path) -> dict[str, int]:
    text = (tmp_path / "marker").read_text() if (tmp_path / "marker").exists() else ""
    words = [line.split()[0] for line in text.splitlines()]
    return {"kernel": words.count("kernel"), "eig": words.count("eig")}


def test_two_processes_one_kernel_computation(tiny_run_dir, tmp_path):
    procs = [_spawn(tmp_path, "kernel", str(tiny_run_dir)) for _ in range(2)]
    _go(tmp_path, 2)
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert _marker_counts(tmp_path) == {"kernel": 1, "eig": 0}
    assert json.loads(outs[0][0]) == json.loads(outs[1][0])


def test_cli_and_session_compute_one_spectrum_once(tiny_run_dir, tmp_path, monkeypatch):
    """A CLI process and a dashboard-like thread in this process ask for the same spectrum."""
    proc = _spawn(tmp_path, "cli", "spectrum", str(tiny_run_dir), "--epoch", "30", "--top", "10", "--json")
    counts = _counting(monkeypatch)
    run = Run(tiny_run_dir)
    _go(tmp_path, 1)
    res = analysis.spectrum(run, 30, top=10)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    theirs = _marker_counts(tmp_path)
    assert counts["kernel"] + theirs["kernel"] == 1 and counts["eig"] + theirs["eig"] == 1, (counts, theirs)
    assert json.loads(out)["eigenvalues"] == pytest.approx(res.eigenvalues.tolist(), rel=1e-12)
    assert sorted([json.loads(out)["cache"], res.meta["cache"]]) == ["hit", "miss"]


# -------------------------------------------------- cancel and kill
def test_cancelled_computation_stores_nothing_and_frees_the_key(tiny_run_dir):
    """A progress callback raising (Streamlit's stop/rerun does exactly that) cancels the kernel."""
    run = Run(tiny_run_dir)
    cache = ArrayCache(Path(os.environ["ENTK_CACHE_DIR"]))
    calls = []

    def cancel(done, total, message=""):
        calls.append((done, total))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        analysis.spectrum(run, 30, top=10, cache=cache, progress=cancel)
    assert calls, "the kernel computation reported no progress"
    assert cache.computed == 0 and len(cache._cache) == 0

    done = []
    t = threading.Thread(target=lambda: done.append(analysis.spectrum(run, 30, top=10, cache=cache)))
    t.start()
    t.join(60)
    assert done and done[0].meta["cache"] == "miss", "the key stayed locked after the cancel"
    assert analysis.spectrum(run, 30, top=10, cache=cache).meta["cache"] == "hit"


def test_killed_computation_stores_nothing_and_frees_the_key(tiny_run_dir, tmp_path):
    """SIGKILL a process while it holds the key's lock and computes: the OS frees the lock and
    the next request computes a complete entry."""
    proc = _spawn(tmp_path, "kernel", str(tiny_run_dir), slow=120.0)
    _go(tmp_path, 1)
    deadline = time.time() + 60
    while _marker_counts(tmp_path)["kernel"] == 0:  # it is inside compute(), holding the lock
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    cache = ArrayCache(Path(os.environ["ENTK_CACHE_DIR"]))
    assert len(cache._cache) == 0
    t0 = time.perf_counter()
    K = analysis.kernel_matrix(Run(tiny_run_dir), 30, cache=cache)
    assert time.perf_counter() - t0 < 30 and K.shape == (49, 49) and cache.computed == 1
    assert cache.get(next(iter(cache._cache))) is not None


# ------------------------------------------------- training crash safety
TRAINER = textwrap.dedent("""
    import json, os, signal, sys, traceback
    from pathlib import Path
    import entk_core.workflows.training as training
    from entk_core.families.base import get_family


    def job(out, kill_at, epochs, every):
        fam = get_family("modadd-mlp")
        cfg = fam.Config(p=7, width=32, epochs=epochs, checkpoint_every=every, seed=0)
        if kill_at != "none":   # "W@E": die right after the W-th file written while checkpointing epoch E
            nth, at = map(int, kill_at.split("@"))
            current = {"epoch": None, "writes": 0}
            real_save, real_bytes, real_json = training.save_checkpoint, training.atomic_write_bytes, training.atomic_write_json

            def after():
                if current["epoch"] == at:
                    current["writes"] += 1
                    if current["writes"] == nth:
                        os.kill(os.getpid(), signal.SIGKILL)

            def save_checkpoint(path, state, *a, **kw):
                current["epoch"] = int(Path(path).stem.rsplit("_", 1)[1])   # checkpoints/epoch_000004.safetensors
                sha = real_save(path, state, *a, **kw)
                after()
                return sha

            def write_bytes(path, data):
                real_bytes(path, data)
                after()

            def write_json(path, obj):
                real_json(path, obj)
                after()

            training.save_checkpoint, training.atomic_write_bytes, training.atomic_write_json = (
                save_checkpoint, write_bytes, write_json)
        training.train(fam, cfg, out)


    # A fork server: the libraries are imported once; each request trains in a forked child (a
    # process of its own, killed for real), and its exit status is reported when it ends.
    print("ready", flush=True)
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                job(*json.loads(line))
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        print(json.dumps({"exit": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}), flush=True)
""")


class Trainer:
    """One training process (a child of the :class:`TrainerServer`), with the ``Popen`` calls the
    tests use: ``poll()``, ``send_signal()``, ``communicate(timeout)`` and ``returncode``."""

    def __init__(self, server: "TrainerServer", pid: int):
        self.server, self.pid, self.returncode = server, pid, None

    def poll(self, timeout: float = 0.0) -> int | None:
        if self.returncode is None and select.select([self.server.proc.stdout], [], [], timeout)[0]:
            line = self.server.proc.stdout.readline()
            assert line, f"the trainer server died:\n{self.server.log_tail()}"
            self.returncode = json.loads(line)["exit"]
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def communicate(self, timeout: float) -> tuple[None, str]:
        if self.poll(timeout) is None:
            raise subprocess.TimeoutExpired(f"trainer {self.pid}", timeout)
        return None, self.server.log_tail()


class TrainerServer:
    """:data:`TRAINER` started once: each :meth:`start` forks a trainer from a process that has
    already imported torch and the library (the killed processes cost no import each)."""

    def __init__(self, folder: Path):
        (folder / "trainer.py").write_text(TRAINER)
        self.log = folder / "trainer.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        with open(self.log, "w") as log:  # children's tracebacks; a file, so it never fills a pipe
            self.proc = subprocess.Popen([sys.executable, str(folder / "trainer.py")], cwd=REPO, env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.proc.stdout.readline().strip() == "ready", self.log_tail()
        self.current: Trainer | None = None

    def start(self, out: Path, kill_at: str = "none", epochs: int = 150, every: int = 1) -> Trainer:
        assert self.current is None or self.current.poll() is not None, "one trainer at a time"
        self.proc.stdin.write(json.dumps([str(out), kill_at, epochs, every]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the trainer server died:\n{self.log_tail()}"
        self.current = Trainer(self, json.loads(line)["pid"])
        return self.current

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def close(self) -> None:
        if self.current is not None and self.current.poll() is None:
            self.current.send_signal(signal.SIGKILL)
            self.current.poll(30)
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()


@pytest.fixture
def trainers(tmp_path):
    server = TrainerServer(tmp_path)
    yield server
    server.close()


def _check_consistent(out: Path) -> Run | None:
    """The run on disk after a crash: None (nothing committed yet) or a run whose every listed
    checkpoint exists, is no temp file and verifies (sha256, shapes, finite)."""
    if not (out / "manifest.json").exists():
        return None
    run = Run(out)  # a valid manifest: never half written
    for c in run.manifest["checkpoints"]:
        assert not Path(c["file"]).name.startswith(".") and not c["file"].endswith(".tmp"), c
        run.load_state(c["epoch"])
    return run


def _reference(trainers: TrainerServer, tmp_path: Path, epochs: int, every: int) -> Run:
    """The uninterrupted run, trained by the same server in a process like the killed ones
    (same environment, so the same torch thread count and bitwise the same arithmetic)."""
    proc = trainers.start(tmp_path / "ref", epochs=epochs, every=every)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return Run(tmp_path / "ref")


@pytest.mark.slow
def test_sigkill_during_training_at_random_moments(tmp_path, trainers):
    """Kill a training process at random moments, over and over; after each kill the run opens
    and verifies, and the run finally resumes to exactly the uninterrupted parameters."""
    epochs, every = 300, 1  # a checkpoint every epoch: most of the time is spent writing files
    # (long enough that a fast machine cannot finish before the kills below; each attempt
    # lives 0-0.4 s after its first manifest write)
    ref = _reference(trainers, tmp_path, epochs, every)
    out = tmp_path / "run"
    rng = random.Random(int(os.environ.get("ENTK_KILL_SEED", "0")))
    kills = 0
    for attempt in range(4):
        proc = trainers.start(out, epochs=epochs, every=every)
        # wait until it is writing (the manifest appears or advances), then kill at a random moment
        deadline = time.time() + 60
        mtime = (out / "manifest.json").stat().st_mtime_ns if (out / "manifest.json").exists() else 0
        while proc.poll() is None and time.time() < deadline:
            m = out / "manifest.json"
            if m.exists() and m.stat().st_mtime_ns != mtime:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), err
        run = _check_consistent(out)
        if run is not None and run.status == "complete":
            break
    assert kills >= 3, "the training finished before it could be killed enough times"
    proc = trainers.start(out, epochs=epochs, every=every)  # resume to the end
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    run = _check_consistent(out)
    assert run.status == "complete" and run.epochs == ref.epochs
    assert run.checkpoint_sha(epochs) == ref.checkpoint_sha(epochs), "the resumed run is not exact"
    assert run.metrics["epoch"] == list(range(epochs + 1))
    referenced = {c["file"] for c in run.manifest["checkpoints"]}
    assert all((out / f).is_file() for f in referenced)


@pytest.mark.slow
def test_sigkill_after_each_write_of_a_checkpoint_resumes_exactly(tmp_path, trainers):
    """Checkpointing epoch e writes several files (checkpoint, optimizer state, manifest last).
    Kill the process right after the 1st, 2nd, ... of them (whatever they are); every time the
    run must resume to exactly the uninterrupted parameters."""
    epochs, every, at = 8, 2, 4
    ref = _reference(trainers, tmp_path, epochs, every)
    failures, windows = [], 0
    for nth in range(1, 10):
        out = tmp_path / f"run-{nth}"
        proc = trainers.start(out, kill_at=f"{nth}@{at}", epochs=epochs, every=every)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            break  # fewer than nth writes per checkpoint: every window was covered
        assert proc.returncode == -signal.SIGKILL, f"window {nth}: {err}"
        windows += 1
        run = _check_consistent(out)
        assert run is not None and run.status == "training"
        proc = trainers.start(out, epochs=epochs, every=every)
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            failures.append(f"killed after write {nth}: resume failed: {err.strip().splitlines()[-1:]}")
        elif _check_consistent(out).checkpoint_sha(epochs) != ref.checkpoint_sha(epochs):
            failures.append(f"killed after write {nth}: the resumed run is not exact")
    assert windows >= 2, "the checkpoint sequence was never interrupted"
    assert not failures, failures


def test_killed_writer_leaves_the_old_file_and_a_removable_temp(tmp_path):
    """SIGKILL inside atomic_write_bytes, after the temp file is written but before the rename:
    the target keeps its old content (never half a file), and the orphan temp file, which no
    manifest references, is removed by runs.remove_stale_temp_files."""
    from entk_core.store.runs import remove_stale_temp_files

    target = tmp_path / "run" / "manifest.json"
    target.parent.mkdir()
    target.write_text('{"old": true}')
    (tmp_path / "run" / "keep.txt").write_text("not a temp file")
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent("""
        import os, signal, sys
        from entk_core.store import runs
        os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)   # die just before the rename
        runs.atomic_write_bytes(sys.argv[1], b'{"new": true}')
    """))
    proc = _popen([str(script), str(target)])
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == '{"old": true}'
    temps = list(target.parent.glob(".manifest.json.*.tmp"))
    assert len(temps) == 1 and temps[0].read_bytes() == b'{"new": true}'
    assert remove_stale_temp_files(tmp_path / "run") == temps
    assert sorted(p.name for p in target.parent.iterdir()) == ["keep.txt", "manifest.json"]
