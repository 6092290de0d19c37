"""The command line for tests: in this process (:func:`run_cli`, fast) or as a user runs it
(:func:`run_cli_subprocess`, a fresh interpreter: ~2 s of CPU for the imports, 5-10 s on a
loaded machine). Both return a :class:`subprocess.CompletedProcess` (``returncode``,
``stdout``, ``stderr``), so a test can switch between them.

In-process is the default for tests of what a command does; keep a few subprocess smoke
tests of the real entry point (``python -m entk_core``: the ``error:`` line, exit codes, what
needs a fresh process such as a plug-in on ``PYTHONPATH`` or a signal)."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``entk_core.cli.main(args)`` in this process with stdout and stderr captured (and
    ``env`` added to ``os.environ`` meanwhile). argparse's exits (bad options, ``--help``) are
    exit codes, as in a subprocess. Log records are not in ``stderr`` (pytest's logging
    capture holds them: use ``caplog``)."""
    from entk_core.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env or {}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return subprocess.CompletedProcess(["entk_core", *argv], rc, out.getvalue(), err.getvalue())


def run_cli_subprocess(*args, env: dict[str, str] | None = None, timeout: float = 600,
                       cwd: Path | str = REPO) -> subprocess.CompletedProcess:
    """``python -m entk_core ARGS`` in a fresh interpreter (``env`` added to this process's)."""
    return subprocess.run([sys.executable, "-m", "entk_core", *map(str, args)], cwd=cwd,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)
