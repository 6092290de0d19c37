"""File locks (bounded), the run folder's write lock, and durable atomic writes."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from entk_core.families.base import get_family
from entk_core.store import runs as store_runs
from entk_core.store.cache import ArrayCache
from entk_core.store.locks import LockBusy, file_lock, held_thread_locks
from entk_core.store.runs import RunError, atomic_write_bytes
from entk_core.workflows.training import run_lock, train

REPO = Path(__file__).resolve().parents[2]


def test_file_lock_excludes_threads_and_forgets_them(tmp_path):
    inside, overlap = [0], []
    path = tmp_path / "x.lock"

    def work():
        for _ in range(20):
            with file_lock(path, remove=True):
                inside[0] += 1
                overlap.append(inside[0])
                time.sleep(0.001)
                inside[0] -= 1

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert max(overlap) == 1 and len(overlap) == 80
    assert not path.exists() and held_thread_locks() == 0


def test_nonblocking_lock_is_refused_while_another_process_holds_it(tmp_path):
    path = tmp_path / "held.lock"
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from entk_core.store.locks import file_lock\n"
            "with file_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(path), str(REPO)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(LockBusy):
            with file_lock(path, blocking=False):
                pass
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    with file_lock(path, blocking=False):  # the OS released it with the process
        pass
    assert held_thread_locks() == 0


def test_cache_lock_files_and_thread_locks_stay_bounded(tmp_path):
    cache = ArrayCache(tmp_path / "c")
    for i in range(50):
        cache.get_or_compute(f"key-{i}", lambda i=i: ({"v": np.arange(i + 1)}, {}))
    assert cache.computed == 50
    assert list((tmp_path / "c" / "locks").iterdir()) == []
    assert held_thread_locks() == 0


def test_train_refuses_a_run_folder_another_writer_holds(tmp_path):
    fam = get_family("modadd-mlp")
    out = tmp_path / "r"
    with run_lock(out):
        with pytest.raises(RunError, match="another process is writing this run"):
            train(fam, fam.Config(p=5, width=4, epochs=2, checkpoint_every=1), out)
    assert not (out / "manifest.json").exists()


def test_a_train_that_fails_before_saving_leaves_no_folder(tmp_path):
    fam = get_family("modadd-mlp")
    out = tmp_path / "r"
    with pytest.raises(ValueError, match="config field 'p' must be >= 3"):
        train(fam, fam.Config(p=2, epochs=2), out)
    assert not out.exists()


def test_atomic_write_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(store_runs.os, "fsync", spy)
    atomic_write_bytes(tmp_path / "sub" / "f.bin", b"abc")
    assert (tmp_path / "sub" / "f.bin").read_bytes() == b"abc"
    assert synced == [False, True]  # the data, then the folder holding the renamed entry
