"""Errors on a page: one ``st.error`` line for bad input, the traceback for a bug under
``ENTK_DEBUG=1``, and a log record with the traceback for every exception caught.

What is bad input is decided once for the CLI and the dashboard
(:func:`entk_core.errors.is_user_error`). Messages never show absolute server paths:
the runs folder, the cache folder and the repository are shown relative
(:func:`relative_paths`), and a message is plain text, never markdown
(:func:`entk_core.ui.format.plain`: an error may quote a link's value or a file's content).
"""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import streamlit as st

from ..errors import debug_enabled, is_user_error, one_line
from ..store.runs import runs_root
from .format import plain

__all__ = ["LOG", "relative_paths", "error_line", "guarded", "is_control_flow"]

LOG = logging.getLogger("entk_core.ui")
"""Where :func:`guarded` logs what it catches: user errors at INFO, bugs at ERROR, both with
the traceback (a worker's traceback too)."""

_CONTROL_FLOW = ("RerunException", "StopException", "FragmentHandledException", "FragmentStorageKeyError")


def relative_paths(text: str) -> str:
    """``text`` with the runs folder, the cache folder and the repository shown relative
    (``runs/NAME/...``), never as absolute server paths."""
    from ..store.cache import cache_dir

    repo = Path(__file__).resolve().parents[2]
    subs = {}
    for base, shown in ((runs_root(), "runs"), (cache_dir(), "cache"), (repo, ".")):
        for p in (str(Path(base).absolute()), str(Path(base).resolve())):
            if p not in ("/", "") and p not in subs:
                subs[p] = shown  # only absolute paths: a relative root (``runs``) is already shown as it is
    for p, shown in sorted(subs.items(), key=lambda t: -len(t[0])):
        # ``/abs/runs/x`` -> ``runs/x``; ``/abs/runs`` alone -> ``runs/``; never ``runs//x``
        text = re.sub(re.escape(p) + r"(/+|(?![\w.-]))", lambda m, s=shown: s + "/", text)
    return text


def error_line(e: BaseException) -> str:
    """One line for the UI: the exception's first line, paths relative to the runs folder."""
    return relative_paths(one_line(e))


def is_control_flow(e: BaseException) -> bool:
    """Streamlit's own control flow (rerun, stop, fragment bookkeeping): never an error."""
    return type(e).__name__ in _CONTROL_FLOW


@contextmanager
def guarded(what: str = "") -> Iterator[None]:
    """Run the block; show what it raises on the page instead of a traceback.

    * bad input (:func:`entk_core.errors.is_user_error`: ``ValueError``, ``RunError``,
      ``MemoryBudgetError``, a missing file...): one ``st.error`` line;
    * any other exception is a bug: one ``st.error`` line saying so and, with
      ``ENTK_DEBUG=1``, its traceback below it (``st.exception``);
    * every exception caught is logged on :data:`LOG` with its traceback (user errors at
      INFO, bugs at ERROR).

    Streamlit's control flow (rerun, stop: ``BaseException``\\ s, and its fragment
    exceptions) passes through, so a Stop button or a superseded run still ends the run.
    """
    try:
        yield
    except Exception as e:  # noqa: BLE001 - every page error is shown, never a traceback by default
        if is_control_flow(e):
            raise
        prefix = f"{what}: " if what else ""
        worker = getattr(e, "worker_traceback", "")
        extra = f"\nworker traceback:\n{worker}" if worker else ""
        if is_user_error(e):
            LOG.info("%s%s%s", prefix, one_line(e), extra, exc_info=True)
            st.error(plain(prefix + error_line(e)), icon="⚠️")
            return
        LOG.error("%sunexpected %s: %s%s", prefix, type(e).__name__, one_line(e), extra, exc_info=True)
        hint = "" if debug_enabled() else " (a bug: the server log has the traceback; ENTK_DEBUG=1 shows it here)"
        st.error(plain(f"{prefix}unexpected {type(e).__name__}: {error_line(e)}{hint}"), icon="⚠️")
        if debug_enabled():
            st.exception(e)
            if worker:
                st.code(worker, language=None)
