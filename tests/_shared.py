"""Session folders built once per test session, also when pytest-xdist runs the suite in
several worker processes (``tests/conftest.py``, ``tests/acceptance/conftest.py``)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def shared_once(tmp_path_factory, name: str, build) -> Path:
    """A folder built once per test session by ``build(folder)``, also under pytest-xdist: there
    the first worker to ask builds it in the session's common temp folder under a file lock,
    and the others wait and reuse it (a trained run, a result cache: read-only for the tests).
    A build that fails is not marked done: the next worker to ask starts it again from an empty folder."""
    from filelock import FileLock  # a dependency of torch

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        out = tmp_path_factory.mktemp(name)
        build(out)
        return out
    out = tmp_path_factory.getbasetemp().parent / "shared" / name
    out.parent.mkdir(exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not (out.parent / f"{name}.done").exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            build(out)
            (out.parent / f"{name}.done").touch()
    return out
