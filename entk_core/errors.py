"""The one error vocabulary of the CLI and the dashboard (the lowest layer: imports nothing).

Bad input -- a missing or corrupt file, wrong shapes, NaN weights, a request that would not
fit, a wrong path -- is a *user error*: the CLI prints it as one ``error: ...`` line and exits
with status 2, the dashboard shows it as one ``st.error`` line. Anything else is a bug: the
CLI says ``unexpected ...`` (status 1), the dashboard says so in one line and logs the
traceback; with ``ENTK_DEBUG=1`` (:func:`debug_enabled`) both show the traceback.

What counts as a user error (:func:`is_user_error`): :data:`USER_ERRORS` (``ValueError``
and its subclasses such as ``RunError`` and ``MemoryBudgetError``, missing files, denied
permissions, ``MemoryError``), and any exception that carries ``user_error = True`` (e.g. a
worker process's failure that was itself a user error,
:class:`entk_core.workflows.jobs.JobError`). ``LookupError`` and ``RuntimeError`` are not:
a ``KeyError`` or a torch ``RuntimeError`` is a bug until a layer turns it into a message.
"""
from __future__ import annotations

import os

__all__ = ["USER_ERRORS", "debug_enabled", "is_user_error", "one_line"]

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError, MemoryError)
"""Exception classes that mean bad input (their message is for the user, one line)."""


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (its class name if empty): the one error
    format of the CLI (``error: ...``) and the dashboard (``st.error``)."""
    msg = str(e).strip().splitlines()
    return msg[0] if msg else e.__class__.__name__


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` reports bad input (module docstring) rather than a bug."""
    return isinstance(e, USER_ERRORS) or getattr(e, "user_error", False) is True


def debug_enabled() -> bool:
    """Whether ``ENTK_DEBUG`` asks for tracebacks (set, and neither empty nor ``0``)."""
    return os.environ.get("ENTK_DEBUG", "") not in ("", "0")
