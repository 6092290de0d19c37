"""Errors on a page (:func:`entk_core.ui.guarded`): bad input is one ``st.error`` line, a bug
is one line plus its traceback under ``ENTK_DEBUG=1``, and every exception caught is logged
with its traceback. The scripts run under Streamlit's AppTest (no server, no browser)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from entk_core.errors import is_user_error, one_line


def _script():
    """Raise what the query string names inside ``guarded`` (AppTest runs this as a page)."""
    import os
    from pathlib import Path

    import streamlit as st

    from entk_core.engine.planner import MemoryBudgetError
    from entk_core.store.runs import RunError
    from entk_core.ui import guarded
    from entk_core.workflows.jobs import JobError

    runs = Path(os.environ["ENTK_RUNS_DIR"]).resolve()
    errors = {
        "value": lambda: ValueError("top must be between 1 and 841, got 5000\nsecond line"),
        "run": lambda: RunError(f"{runs}/broken/manifest.json: not valid JSON"),
        "memory": lambda: MemoryBudgetError("the kernel needs 80 GB; the budget is 12 GB"),
        "missing": lambda: FileNotFoundError("no such file: stories.txt"),
        "job-user": lambda: JobError("unknown reduction 'x'", user_error=True, worker_traceback="Traceback: ..."),
        "job-bug": lambda: JobError("'K'", user_error=False, worker_traceback="Traceback (worker): KeyError"),
        "key": lambda: KeyError("eigenvalues"),
        "runtime": lambda: RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
        "lookup": lambda: LookupError("no codec"),
        "zero": lambda: ZeroDivisionError("division by zero"),
    }
    kind = st.query_params.get("raise", "")
    with guarded("cannot draw"):
        st.write("before")
        if kind == "stop":
            st.stop()
        if kind:
            raise errors[kind]()
    st.write("after the guard")


def _run(kind: str, monkeypatch, tmp_path, debug: str | None = None) -> AppTest:
    monkeypatch.setenv("ENTK_RUNS_DIR", str(tmp_path / "runs"))
    if debug is None:
        monkeypatch.delenv("ENTK_DEBUG", raising=False)
    else:
        monkeypatch.setenv("ENTK_DEBUG", debug)
    at = AppTest.from_function(_script, default_timeout=60)
    at.query_params["raise"] = kind
    return at.run()


USER = ["value", "run", "memory", "missing", "job-user"]
BUGS = ["key", "runtime", "lookup", "zero", "job-bug"]


@pytest.mark.parametrize("debug", [None, "1"])
@pytest.mark.parametrize("kind", USER)
def test_bad_input_is_one_line_even_when_debugging(kind, debug, monkeypatch, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="entk_core.ui"):
        at = _run(kind, monkeypatch, tmp_path, debug)
    assert not at.exception, "bad input never shows a traceback"
    (err,) = at.error
    assert err.value.startswith("cannot draw: ") and "\n" not in err.value and "unexpected" not in err.value
    assert str(tmp_path) not in err.value  # server paths are shown relative to the runs folder
    if kind == "run":
        assert err.value == "cannot draw: runs/broken/manifest.json: not valid JSON"
    assert [m.value for m in at.markdown][-1] == "after the guard"  # the page goes on below the guard
    (rec,) = [r for r in caplog.records if r.name == "entk_core.ui"]
    assert rec.levelno == logging.INFO and rec.exc_info is not None  # logged, with its traceback


@pytest.mark.parametrize("kind", BUGS)
def test_a_bug_is_one_line_and_logged_with_its_traceback(kind, monkeypatch, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="entk_core.ui"):
        at = _run(kind, monkeypatch, tmp_path)
    assert not at.exception  # no traceback on the page without ENTK_DEBUG
    (err,) = at.error
    expected = "JobError" if kind.startswith("job") else {"key": "KeyError", "runtime": "RuntimeError",
                                                          "lookup": "LookupError", "zero": "ZeroDivisionError"}[kind]
    assert err.value.startswith(f"cannot draw: unexpected {expected}: ") and "ENTK_DEBUG=1" in err.value
    (rec,) = [r for r in caplog.records if r.name == "entk_core.ui"]
    assert rec.levelno == logging.ERROR and rec.exc_info is not None and rec.exc_info[0].__name__ == expected
    if kind == "job-bug":
        assert "Traceback (worker): KeyError" in rec.getMessage()  # the worker's traceback is logged too


@pytest.mark.parametrize("kind", BUGS)
def test_a_bug_shows_its_traceback_under_entk_debug(kind, monkeypatch, tmp_path):
    at = _run(kind, monkeypatch, tmp_path, debug="1")
    (err,) = at.error
    assert "unexpected" in err.value and "ENTK_DEBUG=1" not in err.value
    (exc,) = at.exception
    assert exc.stack_trace and any("_script" in line for line in exc.stack_trace)  # where it was raised
    if kind == "job-bug":
        assert any("Traceback (worker)" in c.value for c in at.code)


def test_entk_debug_0_is_off(monkeypatch, tmp_path):
    at = _run("key", monkeypatch, tmp_path, debug="0")
    assert not at.exception and "ENTK_DEBUG=1" in at.error[0].value


def test_streamlit_control_flow_passes_through(monkeypatch, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="entk_core.ui"):
        at = _run("stop", monkeypatch, tmp_path)
    assert not at.error and not at.exception
    assert [m.value for m in at.markdown] == ["before"]  # st.stop ended the page inside the guard
    assert not [r for r in caplog.records if r.name == "entk_core.ui"]


def test_one_classification_for_the_cli_and_the_pages():
    from entk_core.engine.planner import MemoryBudgetError
    from entk_core.store.runs import RunError
    from entk_core.workflows.jobs import JobError

    for e in (ValueError("x"), RunError("x"), MemoryBudgetError("x"), FileNotFoundError("x"), PermissionError("x"),
              MemoryError(), JobError("x", user_error=True)):
        assert is_user_error(e), e
    for e in (KeyError("x"), RuntimeError("x"), LookupError("x"), IndexError("x"), TypeError("x"),
              JobError("x"), AttributeError("x")):
        assert not is_user_error(e), e
    assert one_line(ValueError("first\nsecond")) == "first" and one_line(KeyError()) == "KeyError"


@pytest.mark.parametrize("target, user", [("entk_core.workflows.analysis:spectrum", True),
                                          ("no_such_module_anywhere:f", False)])
def test_a_worker_says_whether_its_failure_was_bad_input(target, user, tmp_path):
    """A worker that fails on bad input (a run folder that is not a run) reports it as such;
    one that fails on a bug (a target that cannot be imported) does not. Both send their traceback."""
    from entk_core.workflows.jobs import Job, JobError

    job = Job(target=target, run=str(tmp_path / "not-a-run")).start()
    with pytest.raises(JobError) as info:
        job.wait(interval=0.05)
    assert info.value.user_error is user
    assert "Traceback (most recent call last)" in info.value.worker_traceback
    assert ("not-a-run" in str(info.value)) if user else ("No module named" in str(info.value))
    assert Path(tmp_path).exists()
