"""The array cache: round trips, foreign/corrupt entries, compute-once under concurrency."""
import os
import sqlite3
import stat
import threading
import time

import diskcache
import numpy as np
import pytest

from entk_core.store.cache import ArrayCache, make_key


def test_roundtrip_and_private_folder(tmp_path):
    c = ArrayCache(tmp_path / "c")
    c.set("k", {"a": np.arange(10.0), "b": np.eye(3, dtype=np.float32)}, {"x": 1})
    e = c.get("k")
    np.testing.assert_array_equal(e["a"], np.arange(10.0))
    assert e["b"].dtype == np.float32 and e.meta == {"x": 1}
    assert stat.S_IMODE(os.stat(tmp_path / "c").st_mode) == 0o700
    with pytest.raises(TypeError):
        c.set("o", {"a": np.array([object()])})


def test_keys_are_deterministic_and_cover_parts():
    assert make_key("s", a=1, b={"x": 2}) == make_key("s", b={"x": 2}, a=1)
    assert make_key("s", a=1, beta=0.3) != make_key("s", a=1, beta=0.31)


def test_foreign_pickled_value_is_never_unpickled(tmp_path):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    raw = diskcache.Cache(str(tmp_path / "c"))
    raw.set("k", Payload())  # diskcache pickles it
    raw.close()
    c = ArrayCache(tmp_path / "c")
    assert c.get("k") is None
    assert not marker.exists()
    # the foreign entry was discarded, and the key can be recomputed
    e = c.get_or_compute("k", lambda: ({"v": np.ones(2)}, {}))
    assert e.meta["cache"] == "miss" and c.get("k") is not None


def test_corrupt_entry_is_recomputed(tmp_path):
    c = ArrayCache(tmp_path / "c")
    c.set("k", {"v": np.arange(100000.0)})  # large: stored in a file
    files = [p for p in (tmp_path / "c").rglob("*.val")]
    assert files
    data = files[0].read_bytes()
    files[0].write_bytes(data[:100] + b"\x00" * 50 + data[150:])
    assert c.get("k") is None
    c.set("small", {"v": np.arange(3.0)})
    db = sqlite3.connect(tmp_path / "c" / "cache.db")
    db.execute("UPDATE Cache SET value = ? WHERE key = ?", (b"ENTKC001" + b"\x00" * 40, "small"))
    db.commit()
    db.close()
    assert c.get("small") is None


def test_concurrent_threads_compute_once(tmp_path):
    c = ArrayCache(tmp_path / "c")
    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.3)
        return {"v": np.ones(3)}, {}

    ts = [threading.Thread(target=c.get_or_compute, args=("k", compute)) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(calls) == 1 and c.computed == 1
