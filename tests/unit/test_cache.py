"""The array cache: round trips, foreign/corrupt entries (a value file outside the folder, a
compressed payload, a corrupt index), the private folder, eviction, logged discards, the derived
code version, compute-once under concurrency."""
import hashlib
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

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
    _poison_row(tmp_path / "c", "small")
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


def _poison_row(folder, key: str) -> None:
    """Overwrite ``key``'s stored value in the cache database with a valid header and zeros."""
    db = sqlite3.connect(folder / "cache.db")
    db.execute("UPDATE Cache SET value = ? WHERE key = ?", (b"ENTKC001" + b"\x00" * 40, key))
    db.commit()
    db.close()


def _discards(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "entk_core.store.cache" and r.levelname == "WARNING" and "discarded the cache entry" in r.getMessage()]


def test_a_discarded_entry_is_logged_with_its_key_and_reason(tmp_path, caplog):
    caplog.set_level("WARNING", logger="entk_core.store.cache")
    c = ArrayCache(tmp_path / "c")
    c.set("spectrum|v1|epoch=3", {"v": np.arange(3.0)})
    _poison_row(tmp_path / "c", "spectrum|v1|epoch=3")
    assert c.get("spectrum|v1|epoch=3") is None
    (msg,) = _discards(caplog)
    assert "'spectrum|v1|epoch=3'" in msg and "ValueError: checksum mismatch" in msg and str(tmp_path / "c") in msg
    assert "\n" not in msg
    assert c.get("spectrum|v1|epoch=3") is None and len(_discards(caplog)) == 1  # deleted: now a plain miss
    # a foreign (pickled) value names its reason too
    raw = diskcache.Cache(str(tmp_path / "c"))
    raw.set("kernel|v1|x", {"pickled": True})
    raw.close()
    assert c.get("kernel|v1|x") is None
    msg = _discards(caplog)[-1]
    assert "'kernel|v1|x'" in msg and "ForeignEntry: value stored in mode" in msg
    # a good entry logs nothing
    c.set("ok", {"v": np.ones(2)})
    assert c.get("ok") is not None and len(_discards(caplog)) == 2


def test_code_version_is_derived_from_the_cached_code(tmp_path):
    import shutil

    from entk_core.store import cache as cache_mod

    pkg = Path(cache_mod.__file__).resolve().parents[1]  # entk_core/
    assert cache_mod.CACHED_CODE == ("engine", "families", "workflows")
    assert cache_mod.CODE_VERSION == cache_mod.source_version() == cache_mod.source_version(pkg)
    assert f"|v{cache_mod.CODE_VERSION}|" in make_key("kernel", a=1)
    copy = tmp_path / "entk_core"
    for sub in ("engine", "families", "workflows", "cli"):
        shutil.copytree(pkg / sub, copy / sub, ignore=shutil.ignore_patterns("__pycache__"))
    base = cache_mod.source_version(copy)
    assert base == cache_mod.CODE_VERSION  # the same sources, wherever they lie
    engine_file = sorted((copy / "engine").glob("*.py"))[-1]
    text = engine_file.read_text()
    engine_file.write_text(text + "\n# a change to the engine\n")
    assert cache_mod.source_version(copy) != base
    engine_file.write_text(text)
    assert cache_mod.source_version(copy) == base
    (copy / "workflows" / "new_result.py").write_text("X = 1\n")  # a new module of a cached package
    assert cache_mod.source_version(copy) != base
    (copy / "workflows" / "new_result.py").unlink()
    family_file = next((copy / "families").rglob("model*.py"))
    family_file.write_text(family_file.read_text().replace("def ", "def  ", 1))
    assert cache_mod.source_version(copy) != base
    family_file.write_text(family_file.read_text().replace("def  ", "def ", 1))
    cli_file = next((copy / "cli").glob("*.py"))  # the CLI shows results, it does not decide them
    cli_file.write_text(cli_file.read_text() + "\n# formatting only\n")
    assert cache_mod.source_version(copy) == base
    with pytest.raises(RuntimeError, match="no Python sources"):
        cache_mod.source_version(tmp_path / "empty")


def test_cache_value_file_outside_the_cache_is_neither_read_nor_deleted(tmp_path):
    """A forged index row naming a file elsewhere is treated as foreign: not read, not removed."""
    import numpy as np

    from entk_core.store.cache import ArrayCache

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    c = ArrayCache(tmp_path / "c")
    c.set("k", {"v": np.arange(100_000.0)})  # large: stored in a value file
    db = sqlite3.connect(tmp_path / "c" / "cache.db")
    db.execute("UPDATE Cache SET filename = ? WHERE key = 'k'", (str(victim),))
    db.commit()
    db.close()
    assert c.get("k") is None
    assert victim.read_text() == "keep me"
    e = c.get_or_compute("k", lambda: ({"v": np.ones(3)}, {}))
    assert e.meta["cache"] == "miss"


def test_compressed_cache_payload_is_refused(tmp_path):
    """Our values are uncompressed npz; a compressed one (a potential zip bomb) is foreign."""
    import io

    import numpy as np

    from entk_core.store.cache import MAGIC, ArrayCache

    buf = io.BytesIO()
    np.savez_compressed(buf, v=np.zeros(10**6), __meta__=np.frombuffer(b"{}", dtype=np.uint8))
    payload = buf.getvalue()
    c = ArrayCache(tmp_path / "c")
    c._cache.set("k", MAGIC + hashlib.sha256(payload).digest() + payload)
    assert c.get("k") is None and "k" not in c._cache


def test_corrupt_cache_index_is_discarded(tmp_path):
    import numpy as np

    from entk_core.store.cache import ArrayCache

    c = ArrayCache(tmp_path / "c")
    c.set("k", {"v": np.ones(3)})
    c.close()
    (tmp_path / "c" / "cache.db").write_bytes(os.urandom(4096))
    c = ArrayCache(tmp_path / "c")
    assert c.get("k") is None
    assert c.get_or_compute("k", lambda: ({"v": np.ones(3)}, {})).meta["cache"] == "miss"
    assert c.get("k") is not None


def test_cache_folder_is_private_and_foreign_owner_refused(tmp_path, monkeypatch):
    import stat

    from entk_core.store import cache as cache_mod

    d = tmp_path / "c"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    cache_mod.ArrayCache(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    me = os.getuid()
    monkeypatch.setattr(cache_mod.os, "getuid", lambda: me + 1)
    with pytest.raises(PermissionError, match="belongs to another user"):
        cache_mod.ArrayCache(d)


def test_cache_evicts_beyond_its_size_limit(tmp_path, monkeypatch):
    import numpy as np

    from entk_core.store import cache as cache_mod

    c = cache_mod.ArrayCache(tmp_path / "c", size_limit=2_000_000)
    for i in range(12):
        c.set(f"k{i}", {"v": np.full(50_000, float(i))})  # 400 kB each
    assert c.volume() < 3_000_000
    assert c.get("k0") is None and c.get("k11") is not None  # least recently stored went first
    monkeypatch.setenv("ENTK_CACHE_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("ENTK_CACHE_SIZE_LIMIT", "3MB")
    assert cache_mod.default_cache().size_limit == 3_000_000
    monkeypatch.setenv("ENTK_CACHE_SIZE_LIMIT", "lots")
    monkeypatch.setenv("ENTK_CACHE_DIR", str(tmp_path / "e"))
    with pytest.raises(ValueError, match="ENTK_CACHE_SIZE_LIMIT"):
        cache_mod.default_cache()
