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

from entk_core.runs import Run, RunError, list_runs, open_run, runs_root

DEMO_FAMILY = "modadd-mlp"
DEMO_NAME = "modadd-mlp-p29-seed0"


def one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else e.__class__.__name__


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
    from entk_core.models import get_family
    from entk_core.training import train

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
    if not good:
        st.session_state["selection"] = (None, None)
        st.sidebar.info("No runs yet.")
        return
    # URL -> state on a fresh session
    if "run" not in st.session_state:
        want = qp.get("run")
        if want is not None and want not in good:
            st.session_state["url_error"] = f"run '{want}' from the link is not in the runs folder; showing {good[0]}"
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
        st.sidebar.error(one_line(e))
        st.session_state["selection"] = (None, None)
        return
    epochs = run.epochs
    pending = st.session_state.pop("epoch_from_url", None)
    if pending is not None:
        try:
            e = int(pending)
            if e not in epochs:
                raise ValueError
            st.session_state["epoch"] = e
        except ValueError:
            st.session_state["url_error"] = f"epoch '{pending}' from the link is not a checkpoint of {name}; showing the last"
    if st.session_state.get("epoch") not in epochs:
        st.session_state["epoch"] = epochs[-1]
    if len(epochs) > 1:
        epoch = st.sidebar.select_slider("Checkpoint (epoch)", options=epochs, key="epoch")
    else:
        epoch = epochs[0]
        st.sidebar.write(f"Checkpoint: epoch {epoch}")
    st.sidebar.caption(f"{run.family.title} · {run.status} · {len(epochs)} checkpoints")
    for bname, err in broken:
        st.sidebar.warning(f"{bname}: {one_line(err)}")
    qp["run"] = name
    qp["epoch"] = str(epoch)
    st.session_state["selection"] = (run, epoch)


def selection() -> tuple[Run | None, int | None]:
    """The run and epoch picked in the sidebar (``(None, None)`` without runs)."""
    return st.session_state.get("selection", (None, None))


def require_run() -> tuple[Run, int]:
    """The current selection, or stop the page with an offer to train the demo run."""
    msg = st.session_state.pop("url_error", None)
    if msg:
        st.warning(msg)
    run, epoch = selection()
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


def fmt_pct(x) -> str:
    return "–" if x is None else f"{x:.1%}"


ROOT = Path(__file__).resolve().parent.parent
