"""Streamlit glue shared by app.py and the pages: run/checkpoint picker mirrored in the
URL, cached model loading, and one-line error display. Pages stay thin: they read
widgets, call :mod:`entk_core` and draw :mod:`entk_core.figures`."""
from __future__ import annotations

import os
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import streamlit as st

from entk_core.cli import one_line
from entk_core.families.run import Run, list_runs, open_run
from entk_core.store.runs import RunError, runs_root

DEMO_FAMILY = "modadd-mlp"
DEMO_NAME = "modadd-mlp-p29-seed0"


@contextmanager
def guarded(what: str = "") -> Iterator[None]:
    """Show any failure inside the block as one ``st.error`` line (never a traceback)."""
    try:
        yield
    except (RunError, ValueError, FileNotFoundError, PermissionError, MemoryError) as e:
        st.error(f"{what + ': ' if what else ''}{one_line(e)}", icon="⚠️")
    except Exception as e:  # noqa: BLE001
        if os.environ.get("ENTK_DEBUG"):
            traceback.print_exc()
        st.error(f"{what + ': ' if what else ''}unexpected {e.__class__.__name__}: {one_line(e)}", icon="⚠️")


@st.cache_resource(max_entries=64, show_spinner=False)
def _open_run(path: str, manifest_mtime: float) -> Run:
    return open_run(path)


def load_run(name: str) -> Run:
    """Open a run confined to the runs folder (URL parameters cannot escape it)."""
    root = runs_root()
    path = open_run(name, root, confine=True).path  # validates and resolves
    return _open_run(str(path), (path / "manifest.json").stat().st_mtime)


@st.cache_resource(max_entries=16, show_spinner="Loading checkpoint…")
def _load_model(path: str, epoch: int, sha: str):
    return open_run(path).load_model(epoch)


def load_model(run: Run, epoch: int):
    """The model at ``epoch``, shared across sessions (``st.cache_resource``)."""
    return _load_model(str(run.path), epoch, run.checkpoint_sha(epoch))


def _train_demo() -> None:
    from entk_core.families.base import get_family
    from entk_core.workflows.training import train

    fam = get_family(DEMO_FAMILY)
    cfg = fam.Config()
    bar = st.progress(0.0, text="Training the demo run…")

    def progress(done: int, total: int, message: str) -> None:
        bar.progress(done / total, text=message)

    with guarded("training failed"):
        train(fam, cfg, runs_root() / DEMO_NAME, progress=progress)
        st.session_state["run"] = DEMO_NAME
        st.session_state.pop("epoch", None)
        st.rerun()


def sidebar() -> None:
    """Draw the run and checkpoint picker; keep ``st.session_state`` and the URL in sync."""
    root = runs_root()
    qp = st.query_params
    runs = list_runs(root)
    good = [name for name, r in runs if isinstance(r, Run) and r.epochs]
    broken = [(name, r) for name, r in runs if not isinstance(r, Run)]

    st.sidebar.caption(f"Runs folder: `{root}`")
    st.session_state["selection_error"] = None
    st.session_state["url_messages"] = []  # messages about the link live for one script run
    for bname, err in broken:  # a run that cannot be opened: one line naming the file and the fault
        st.sidebar.error(f"{bname}: {one_line(err)}", icon="⚠️")
    if not good:
        st.session_state["selection"] = (None, None)
        st.sidebar.info("No runs yet." if not broken else "No usable runs.")
        return
    # URL -> state on a fresh session
    if "run" not in st.session_state:
        want = qp.get("run")
        if want is not None and want not in good:
            _url_message("error", _url_run_fault(root, want, dict(runs)))
            _url_message("warning", f"run '{want}' from the link is not in the runs folder; showing {good[0]}")
            want = None
        st.session_state["run"] = want or good[0]
        ep = qp.get("epoch")
        if ep is not None:
            st.session_state["epoch_from_url"] = ep
    if st.session_state.get("run") not in good:
        st.session_state["run"] = good[0]
    name = st.sidebar.selectbox("Run", good, key="run")
    try:
        run = load_run(name)
    except RunError as e:
        st.sidebar.error(one_line(e), icon="⚠️")
        st.session_state["selection"] = (None, None)
        st.session_state["selection_error"] = one_line(e)
        return
    epochs = run.epochs
    pending = st.session_state.pop("epoch_from_url", None)
    if pending is not None:
        try:
            st.session_state["epoch"] = run.resolve_epoch(int(pending))
        except ValueError as e:  # int() failed, or a RunError naming the run and the nearest checkpoint
            why = one_line(e) if isinstance(e, RunError) else "not a number"
            _url_message("error", f"epoch '{pending[:40]}' from the link: {why}; showing epoch {epochs[-1]}")
    if st.session_state.get("epoch") not in epochs:
        st.session_state["epoch"] = epochs[-1]
    if len(epochs) > 1:
        epoch = st.sidebar.select_slider("Checkpoint (epoch)", options=epochs, key="epoch")
    else:
        epoch = epochs[0]
        st.sidebar.write(f"Checkpoint: epoch {epoch}")
    st.sidebar.caption(f"{run.family.title} · {run.status} · {len(epochs)} checkpoints")
    qp["run"] = name
    qp["epoch"] = str(epoch)
    st.session_state["selection"] = (run, epoch)


def selection() -> tuple[Run | None, int | None]:
    """The run and epoch picked in the sidebar (``(None, None)`` without runs)."""
    return st.session_state.get("selection", (None, None))


def _url_message(kind: str, text: str) -> None:
    """Queue a message about the link's parameters for the page (:func:`show_link_messages`)."""
    msgs = st.session_state.setdefault("url_messages", [])
    msgs.append((kind, text))


def show_link_messages() -> None:
    """Show what was wrong with the link's ``?run=`` / ``?epoch=`` (errors, then the fallback
    used). :func:`require_run` calls it; pages that do not use require_run call it themselves."""
    for kind, msg in st.session_state.pop("url_messages", []):
        (st.error if kind == "error" else st.warning)(msg, icon="⚠️")


def _url_run_fault(root: Path, want: str, runs: dict) -> str:
    """Why the run named by a link cannot be shown (one line, from the confined resolver)."""
    if isinstance(runs.get(want), RunError):
        return f"run '{want}' from the link: {one_line(runs[want])}"
    try:
        run = open_run(want, root, confine=True)
    except RunError as e:
        return f"run from the link refused: {one_line(e)}"
    return f"run '{want}' from the link has no checkpoints yet ({run.path})"


def require_run() -> tuple[Run, int]:
    """The current selection, or stop the page: with the reason when the selected run
    cannot be opened, else with an offer to train the demo run."""
    show_link_messages()
    run, epoch = selection()
    if run is None and st.session_state.get("selection_error"):
        st.error(f"cannot open the selected run: {st.session_state['selection_error']}", icon="⚠️")
        st.stop()
    if run is None:
        st.info(
            "No runs yet. Train the paper's modular-addition MLP (p = 29, width 512, 500 epochs, seed 0) "
            "as a demo run: it takes about 10–20 seconds on 2 CPU cores."
        )
        if st.button("Train the demo run", key="train_demo", type="primary"):
            _train_demo()
        st.caption("Or from a terminal: `python -m entk_core train modadd-mlp --out runs/" + DEMO_NAME + "`")
        st.stop()
    return run, epoch


class ProgressBar:
    """A ``progress(done, total, message)`` callback for :mod:`entk_core` drawing an
    ``st.progress`` bar (created on the first update, so cache hits show nothing).

    Each update is also where Streamlit stops a run the user stopped or superseded (it
    raises its control exception from the element call), so a long computation given
    this callback is cancelled mid-way; the cache stores a result only once compute()
    has returned, so nothing partial is kept. Use as a context manager to remove the bar::

        with ProgressBar("Computing the eNTK…") as bar:
            res = analysis.spectrum(run, epoch, progress=bar)
    """

    def __init__(self, text: str):
        self.text = text
        self._slot = st.empty()

    def __call__(self, done: int, total: int, message: str = "") -> None:
        frac = min(1.0, max(0.0, done / total)) if total else 0.0
        self._slot.progress(frac, text=f"{self.text} {message}".strip())

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> bool:
        self._slot.empty()
        return False


def fmt_pct(x) -> str:
    return "–" if x is None else f"{x:.1%}"

