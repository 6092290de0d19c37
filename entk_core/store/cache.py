"""A result cache that never unpickles: numpy arrays + JSON in diskcache.

diskcache pickles values by default, so anyone able to write the cache folder could
run code on the next read (CVE-2025-69872). This module stores only ``bytes`` values
and ``str`` keys, and its :class:`SafeDisk` refuses to decode a pickled key or value
(a foreign entry is treated as a miss and deleted). Each value is::

    MAGIC (8 bytes) | sha256 of the payload (32 bytes) | payload

where the payload is an ``.npz`` archive of plain (non-object) arrays plus the JSON
metadata stored as a ``uint8`` array under ``__meta__``; it is read with
``numpy.load(allow_pickle=False)``. A corrupt, truncated or foreign entry (a pickled
value, a value file outside the cache folder, a compressed archive, a corrupt index) is
discarded and recomputed, never trusted. The folder is private to its user (0700; a
folder owned by someone else is refused). Least-recently-stored entries are evicted
beyond the size limit (8 GiB, or ``$ENTK_CACHE_SIZE_LIMIT``).

:meth:`ArrayCache.get_or_compute` computes each missing entry once across threads and
processes: it holds a lock file per key while computing
(:func:`entk_core.store.locks.file_lock`: the OS releases it if the process dies, and the
file is deleted when released, so lock files do not accumulate), and re-checks the cache
after taking the lock.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import stat
import threading
import zipfile
from pathlib import Path
from typing import Any, Callable

import diskcache
import numpy as np

from ..engine.units import parse_bytes
from .locks import file_lock

__all__ = ["ArrayCache", "CacheEntry", "SafeDisk", "default_cache", "cache_dir", "make_key", "CODE_VERSION"]

CODE_VERSION = "2"
"""Bumped whenever a cached computation changes its results; part of every key."""

MAGIC = b"ENTKC001"
DEFAULT_SIZE_LIMIT = 8 * 2**30  # kernels are large: 8 GiB with least-recently-stored eviction
SIZE_LIMIT_ENV = "ENTK_CACHE_SIZE_LIMIT"
"""Environment variable overriding :data:`DEFAULT_SIZE_LIMIT` (``"2GB"``, ``"512MiB"``...)."""


class ForeignEntry(Exception):
    """A cache row that this module did not write (pickled key or value)."""


class SafeDisk(diskcache.Disk):
    """A diskcache ``Disk`` that stores raw bytes only and never unpickles."""

    def put(self, key):
        if type(key) is not str:
            raise TypeError("cache keys must be str")
        return super().put(key)

    def get(self, key, raw):
        if not raw:
            raise ForeignEntry("pickled key")
        return super().get(key, raw)

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if type(value) is not bytes:
            raise TypeError("cache values must be bytes")
        return super().store(value, read, key=key)

    def fetch(self, mode, filename, value, read):
        if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY):
            raise ForeignEntry(f"value stored in mode {mode}")
        if mode == diskcache.core.MODE_BINARY and not self._inside(filename):
            raise ForeignEntry("value file outside the cache folder")
        return super().fetch(mode, filename, value, read)

    def remove(self, file_path):
        # a foreign row may name any file: never delete outside the cache folder
        if self._inside(file_path):
            super().remove(file_path)

    def _inside(self, filename) -> bool:
        if not isinstance(filename, str) or not filename or "\0" in filename:
            return False
        rel = Path(filename)
        if rel.is_absolute() or ".." in rel.parts:
            return False
        root = Path(self._directory).resolve()
        return (root / rel).resolve().is_relative_to(root)


def cache_dir() -> Path:
    """The configured cache folder: ``$ENTK_CACHE_DIR`` or ``./.entk_cache``."""
    return Path(os.environ.get("ENTK_CACHE_DIR", ".entk_cache")).expanduser()


def make_key(kind: str, **parts: Any) -> str:
    """A readable, deterministic key: ``kind|v<CODE_VERSION>|k1=v1|k2=v2...`` (sorted)."""
    items = "|".join(f"{k}={json.dumps(v, sort_keys=True, default=str)}" for k, v in sorted(parts.items()))
    return f"{kind}|v{CODE_VERSION}|{items}"


class CacheEntry(dict):
    """A cached result: a ``dict`` of numpy arrays with a ``meta`` dict attribute."""

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None):
        super().__init__(arrays)
        self.meta = meta or {}


def _encode(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    clean = {}
    for k, v in arrays.items():
        a = np.asarray(v)
        if a.dtype.kind == "O":
            raise TypeError(f"array '{k}' has object dtype; only plain arrays are cached")
        clean[k] = a
    clean["__meta__"] = np.frombuffer(json.dumps(meta, sort_keys=True, allow_nan=False).encode(), dtype=np.uint8)
    np.savez(buf, **clean)
    payload = buf.getvalue()
    return MAGIC + hashlib.sha256(payload).digest() + payload


def _decode(blob: bytes) -> CacheEntry:
    if type(blob) is not bytes or len(blob) < 40 or blob[:8] != MAGIC:
        raise ValueError("bad magic")
    payload = blob[40:]
    if hashlib.sha256(payload).digest() != blob[8:40]:
        raise ValueError("checksum mismatch")
    # np.savez stores members uncompressed: anything else (a zip bomb, say) is foreign
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        infos = zf.infolist()
    if not infos or any(i.compress_type != zipfile.ZIP_STORED or i.file_size > len(payload) for i in infos):
        raise ValueError("not an uncompressed npz archive")
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if any(a.dtype.kind == "O" for a in arrays.values()):
        raise ValueError("object arrays")
    meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    if not isinstance(meta, dict):
        raise ValueError("metadata is not a JSON object")
    return CacheEntry(arrays, meta)


def _ensure_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"cache folder {path} belongs to another user; refusing to use it")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)


class ArrayCache:
    """Persistent cache of numpy results keyed by strings (see the module docstring).

    Args:
      directory: the cache folder (default :func:`cache_dir`); created private (0700).
      size_limit: bytes kept before the least recently stored entries are evicted.
    """

    def __init__(self, directory: Path | str | None = None, size_limit: int = DEFAULT_SIZE_LIMIT):
        self.directory = Path(directory) if directory is not None else cache_dir()
        _ensure_private_dir(self.directory)
        (self.directory / "locks").mkdir(exist_ok=True, mode=0o700)
        self.size_limit = int(size_limit)
        try:
            self._cache = self._open()
        except sqlite3.DatabaseError:
            # the index itself is corrupt: it only ever holds recomputable results
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.unlink(self.directory / f"cache.db{suffix}")
                except FileNotFoundError:
                    pass
            self._cache = self._open()
        self.computed = 0  # number of computations this object ran (for tests and stats)

    def _open(self) -> diskcache.Cache:
        return diskcache.Cache(
            str(self.directory), disk=SafeDisk, size_limit=self.size_limit, eviction_policy="least-recently-stored"
        )

    # ------------------------------------------------------------ basic ops
    def get(self, key: str) -> CacheEntry | None:
        """The entry under ``key``, or ``None`` (also for corrupt/foreign entries, which are deleted)."""
        try:
            blob = self._cache.get(key, default=None, retry=True)
        except (ForeignEntry, OSError, sqlite3.DatabaseError):
            self._discard(key)
            return None
        if blob is None:
            return None
        try:
            return _decode(blob)
        except Exception:
            self._discard(key)
            return None

    def set(self, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> None:
        self._cache.set(key, _encode(arrays, meta or {}), retry=True)

    def _discard(self, key: str) -> None:
        try:
            self._cache.delete(key, retry=True)
        except Exception:
            pass

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def clear(self) -> None:
        self._cache.clear(retry=True)

    def volume(self) -> int:
        return self._cache.volume()

    def close(self) -> None:
        self._cache.close()

    # ------------------------------------------------------- compute once
    def _locked(self, key: str):
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return file_lock(self.directory / "locks" / f"{digest}.lock", remove=True)

    def get_or_compute(
        self, key: str, compute: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]]
    ) -> CacheEntry:
        """Return the entry under ``key``, computing and storing it once if missing.

        ``compute()`` returns ``(arrays, meta)``. Concurrent callers (threads or
        processes) for the same key wait for the first one and then read its result.
        """
        hit = self.get(key)
        if hit is not None:
            hit.meta["cache"] = "hit"
            return hit
        with self._locked(key):
            hit = self.get(key)
            if hit is not None:
                hit.meta["cache"] = "hit"
                return hit
            arrays, meta = compute()
            self.computed += 1
            self.set(key, arrays, meta)
        entry = CacheEntry({k: np.asarray(v) for k, v in arrays.items()}, dict(meta))
        entry.meta["cache"] = "miss"
        return entry


_default: ArrayCache | None = None
_default_lock = threading.Lock()


def default_size_limit() -> int:
    """``$ENTK_CACHE_SIZE_LIMIT`` (e.g. ``"2GB"``) or :data:`DEFAULT_SIZE_LIMIT`."""
    env = os.environ.get(SIZE_LIMIT_ENV, "").strip()
    if not env:
        return DEFAULT_SIZE_LIMIT
    try:
        return parse_bytes(env)
    except ValueError as e:
        raise ValueError(f"{SIZE_LIMIT_ENV}: {e}") from None


def default_cache() -> ArrayCache:
    """A process-wide :class:`ArrayCache` on :func:`cache_dir` (created on first use;
    size limit :func:`default_size_limit`). Thread-safe: every thread gets the same one."""
    global _default
    with _default_lock:
        if _default is None or _default.directory != cache_dir():
            _default = ArrayCache(size_limit=default_size_limit())
        return _default
