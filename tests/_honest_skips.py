"""Honest skips (a pytest plug-in, loaded by ``tests/conftest.py``).

Under CI (``CI`` set to ``1``, ``true`` or ``yes``; ``.ci/run`` sets it) every skip --
``pytest.skip``, ``pytest.importorskip``, a ``skipif`` that holds, at collection, setup or
call time -- becomes a failure that names the skip's reason: a missing pinned dependency
(ray, transformers, the Gemma package, playwright or chromium) or an unusable ``/proc``
cannot pass silently. Locally a skip stays a skip, but it must name its reason (an empty one
fails). ``xfail`` is not touched.
"""
from __future__ import annotations

import os
import re

import pytest

CI_VALUES = ("1", "true", "yes")


def ci() -> bool:
    """Whether this is a CI run, where nothing may skip."""
    return os.environ.get("CI", "").strip().lower() in CI_VALUES


def skip_reason(longrepr) -> str:
    """The reason of a skipped report (``longrepr`` is ``(file, line, "Skipped: why")``)."""
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")
    return re.sub(r"^Skipped\b:?", "", text.strip()).strip()


def honest(report) -> None:
    """Turn the skipped ``report`` into a failure under CI or when it names no reason (in place)."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report.longrepr)
    if ci():
        why = f"skipped under CI={os.environ['CI']}, where nothing may skip: {reason or '(no reason given)'}"
    elif not reason:
        why = 'a skip must name its reason: pytest.skip("why") or skipif(..., reason="why")'
    else:
        return
    report.outcome = "failed"
    report.longrepr = why


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    honest(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    honest(report)
    return report
