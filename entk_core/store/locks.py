"""Inter-process file locks with bounded bookkeeping.

:func:`file_lock` serialises a critical section across threads *and* processes: a thread
lock per lock file (kept only while some thread holds or waits for it) and an ``fcntl``
exclusive lock on the file (released by the OS if the process dies). The result cache
(one lock per key while computing) and :func:`entk_core.workflows.training.train` (one
lock per run folder while writing it) both use it.

Bounded: with ``remove=True`` the holder deletes the lock file before releasing it, so
lock files do not pile up (one per cache key ever computed, otherwise). A waiter that
then acquires the deleted inode notices (the path is gone or names another inode) and
retries on the current file, so two holders can never overlap. The per-file thread
locks are reference-counted and dropped when unused.
"""
from __future__ import annotations

import errno
import fcntl
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["file_lock", "LockBusy", "held_thread_locks"]


class LockBusy(RuntimeError):
    """``file_lock(..., blocking=False)`` found the lock held by someone else."""


_guard = threading.Lock()
_thread_locks: dict[str, list] = {}  # path -> [threading.Lock, users]


def held_thread_locks() -> int:
    """How many per-file thread locks are currently registered (held or awaited)."""
    with _guard:
        return len(_thread_locks)


@contextmanager
def _thread_lock(key: str, blocking: bool) -> Iterator[None]:
    with _guard:
        entry = _thread_locks.setdefault(key, [threading.Lock(), 0])
        entry[1] += 1
    try:
        if not entry[0].acquire(blocking):
            raise LockBusy(key)
        try:
            yield
        finally:
            entry[0].release()
    finally:
        with _guard:
            entry[1] -= 1
            if entry[1] == 0 and _thread_locks.get(key) is entry:
                del _thread_locks[key]


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev)


@contextmanager
def file_lock(path: Path | str, *, blocking: bool = True, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    Args:
      blocking: wait for the lock (default); ``False`` raises :class:`LockBusy` at once
        when another thread or process holds it.
      remove: delete the lock file before releasing it (see the module docstring); use
        it for many short-lived locks, not for a file that must stay (e.g. a run's).
    """
    path = Path(path)
    with _thread_lock(str(path.absolute()), blocking):
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except OSError as e:
                    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise LockBusy(str(path)) from None
                    raise
                if not _same_file(fd, path):
                    continue  # the previous holder removed it: lock the current file instead
                try:
                    yield
                finally:
                    if remove:
                        try:
                            os.unlink(path)
                        except FileNotFoundError:
                            pass
                    fcntl.flock(fd, fcntl.LOCK_UN)
                return
            finally:
                os.close(fd)
