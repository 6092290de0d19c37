"""The run and checkpoint picker (the sidebar), and cached access to runs, models and
what the views measure against, shared across sessions and reruns (``st.cache_resource``).

Runs are opened only inside the runs folder (a URL parameter cannot escape it:
:func:`load_run`). Every cached object is keyed by the run's folder and its manifest's
modification time or the checkpoint's sha256, so a retrained or replaced run is read again.
Cached objects are shared by every session: read-only by convention.
"""
from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from ..errors import one_line
from ..families.base import ModelFamily
from ..families.run import Run, list_runs, open_run
from ..store.runs import RunError, runs_root
from ..store.cache import default_cache
from ..workflows import analysis
from ..workflows.presets import DEMO, preset_job
from ..workflows.views import ViewInputs, view_inputs
from .errors import error_line, guarded, relative_paths
from .format import fmt_size, plain
from .mode import viewer_max_seconds, viewer_mode
from .urlstate import (begin_view, link_external, link_message, link_start, mark_bad, register, stop, url_select_slider,
                       url_selectbox)

__all__ = ["DEMO_NAME", "load_run", "load_model", "view_inputs_of", "groups_of", "kernel_size_of", "group_name",
           "runs_listing", "runs_of_family", "sidebar", "selection", "require_run", "not_available",
           "select_run_button", "train_runs"]

_PENDING_RUN = "_select_run_next"

DEMO_NAME = DEMO
"""The preset (:data:`entk_core.workflows.presets.PRESETS`) offered when the runs folder is empty."""


# ----------------------------------------------------------- cached access
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


@st.cache_resource(max_entries=16, show_spinner=False)
def _view_inputs(path: str, epoch: int, sha: str, last: int, last_sha: str, rows: int) -> ViewInputs:
    return view_inputs(open_run(path), epoch, rows=rows, model=_load_model(path, epoch, sha),
                       final_model=_load_model(path, last, last_sha))


def view_inputs_of(run: Run, epoch: int, reduction: str | None = None) -> ViewInputs:
    """What the alignment views measure against at ``epoch`` for kernels of ``reduction``
    (default: the family's): :func:`entk_core.workflows.views.view_inputs`, built once per
    checkpoint and shared across sessions and reruns (the same for every control on a page)."""
    rows = kernel_size_of(run, reduction or run.family.default_reduction)
    last = run.epochs[-1]  # the families come from the final model: a new checkpoint is a new entry
    return _view_inputs(str(run.path), epoch, run.checkpoint_sha(epoch), last, run.checkpoint_sha(last), rows)


@st.cache_resource(max_entries=64, show_spinner=False)
def _groups(path: str, mtime: float) -> list[str]:
    return analysis.kernel_groups(open_run(path))


def groups_of(run: Run) -> list[str]:
    """``["full", <layer groups>, <derived groups>]`` of the run's model (cached)."""
    return _groups(str(run.path), (run.path / "manifest.json").stat().st_mtime)


@st.cache_resource(max_entries=128, show_spinner=False)
def _ksize(path: str, mtime: float, reduction: str) -> int:
    return analysis.kernel_size(open_run(path), reduction)


def kernel_size_of(run: Run, reduction: str) -> int:
    """Rows of the run's reduced kernel (cached)."""
    return _ksize(str(run.path), (run.path / "manifest.json").stat().st_mtime, reduction)


def group_name(run: Run, group: str) -> str:
    """``"net.0 · W1, input → hidden"``: the module path with the family's human name."""
    if group == analysis.FULL:
        return "full · all parameters"
    label = run.family.group_labels(run.config).get(group)
    return f"{group} · {label}" if label else group


# ------------------------------------------------------------------ sidebar
def _url_run_fault(root: Path, want: str, runs: dict) -> str:
    if isinstance(runs.get(want), RunError):
        return one_line(runs[want])
    try:
        open_run(want, root, confine=True)
    except RunError as e:
        return one_line(e)
    return "it has no checkpoints yet"


def _cache_panel() -> None:
    if viewer_mode():  # a visitor neither sees the server's folders nor clears the cache
        return
    with st.sidebar.expander("Result cache", expanded=False):
        try:
            cache = default_cache()
            size = cache.volume()
        except (OSError, ValueError, RuntimeError) as e:
            st.caption(plain(f"cache unavailable: {error_line(e)}"))
            return
        st.caption(plain(f"{fmt_size(size)} in {relative_paths(str(cache.directory))} (limit "
                         f"{fmt_size(cache.size_limit)}; least recently stored entries go first)"))
        if st.session_state.get("_cache_confirm"):
            st.warning("Delete every cached kernel, spectrum and sweep? They are recomputed when needed.")
            c1, c2 = st.columns(2)
            if c1.button("Delete", key="cache_clear_yes", type="primary"):
                cache.clear()
                st.session_state["_cache_confirm"] = False
                st.session_state["_cache_cleared"] = True
                st.rerun()
            if c2.button("Cancel", key="cache_clear_no"):
                st.session_state["_cache_confirm"] = False
                st.rerun()
        else:
            if st.button("Clear the cache…", key="cache_clear"):
                st.session_state["_cache_confirm"] = True
                st.rerun()
            if st.session_state.pop("_cache_cleared", False):
                st.caption("Cache cleared.")


@st.cache_resource(max_entries=8, show_spinner=False)
def _list_runs_cached(root: str, mtime: float, period: int):
    return list_runs(Path(root))


def runs_listing(root: Path) -> list[tuple[str, Run | RunError]]:
    """``(name, Run or the RunError it raises)`` of every run folder in ``root`` (cached for 2 s).

    The 2 s are a key (the current 2-second period), not a ``ttl``: Streamlit 1.67's TTL cache
    checks an entry's expiry twice per read, and an entry expiring between the two checks
    raised ``KeyError`` out of the cache (seen on a busy machine)."""
    try:
        mtime = root.stat().st_mtime
    except OSError:
        mtime = 0.0
    return _list_runs_cached(str(root), mtime, int(time.monotonic() // 2))


def sidebar() -> None:
    """The run and checkpoint picker (URL ``run``, ``epoch``) and the cache panel. Starts
    the run's view (:func:`entk_core.ui.urlstate.begin_view`): call it first, from app.py."""
    begin_view()
    root = runs_root()
    runs = runs_listing(root)
    good = [name for name, r in runs if isinstance(r, Run) and r.epochs]
    broken = [(name, r) for name, r in runs if not isinstance(r, Run)]
    if viewer_mode():
        st.sidebar.info(f"**viewer mode**: read-only. Browse the runs and their cached views; a computation "
                        f"not cached runs only when estimated under {viewer_max_seconds():g} s.",
                        icon=":material/visibility:")
    else:
        st.sidebar.caption(plain(f"Runs folder: {root.name}/"))
    st.session_state["selection_error"] = None
    for bname, err in broken:  # a run that cannot be opened: one line naming the file and the fault
        st.sidebar.error(plain(f"{bname}: {error_line(err)}", limit=300), icon="⚠️")
    if not good:
        st.session_state["selection"] = (None, None)
        st.sidebar.info("No runs yet." if not broken else "No usable runs.")
        _cache_panel()
        return
    pending = st.session_state.pop(_PENDING_RUN, None)
    if pending in good:  # a run just trained from a page: open it (its last checkpoint)
        st.session_state["run"] = pending
        st.session_state.pop("epoch", None)
    want = link_start().get("run")
    if link_external() and want is not None and want not in good:
        mark_bad("run")
        shown = want if len(want) <= 60 else want[:59] + "…"
        link_message(f"run {shown} from the link: {_url_run_fault(root, want, dict(runs))}; showing {good[0]}")
    name = url_selectbox("run", "Run", good, good[0], key="run", where=st.sidebar)
    try:
        run = load_run(name)
    except RunError as e:
        st.sidebar.error(plain(error_line(e)), icon="⚠️")
        st.session_state["selection"] = (None, None)
        st.session_state["selection_error"] = error_line(e)
        return
    epochs = run.epochs

    def parse_epoch(raw: str) -> int:
        try:
            e = int(raw)
        except ValueError:
            raise ValueError("not a number") from None
        return run.resolve_epoch(e)

    if len(epochs) > 1:
        epoch = url_select_slider("epoch", "Checkpoint (epoch)", epochs, epochs[-1], key="epoch", where=st.sidebar,
                                  parse=parse_epoch)
    else:
        epoch = epochs[0]
        register("epoch", epoch, epoch, str)
        st.sidebar.write(f"Checkpoint: epoch {epoch}")
    st.sidebar.caption(plain(f"{run.family.title} · {run.status} · {len(epochs)} checkpoints"))
    st.session_state["selection"] = (run, epoch)
    _cache_panel()


def selection() -> tuple[Run | None, int | None]:
    """The run and epoch picked in the sidebar (``(None, None)`` without runs)."""
    return st.session_state.get("selection", (None, None))


def require_run() -> tuple[Run, int]:
    """The current selection, or stop the page: with the reason when the selected run
    cannot be opened, else with an offer to train the demo run."""
    run, epoch = selection()
    if run is None and st.session_state.get("selection_error"):
        st.error(plain(f"cannot open the selected run: {st.session_state['selection_error']}"), icon="⚠️")
        stop()
    if run is None and viewer_mode():
        st.info("No runs on this server yet (viewer mode: runs are trained by the server's owner).")
        stop()
    if run is None:
        st.info(
            "No runs yet. Train the paper's modular-addition MLP (p = 29, width 512, 500 epochs, seed 0) "
            "as a demo run: it takes about 10–20 seconds on 2 CPU cores."
        )
        if st.button("Train the demo run", key="train_demo", type="primary"):
            train_runs([DEMO_NAME], select=DEMO_NAME)
        st.caption("Or from a terminal: `python -m entk_core train modadd-mlp --out runs/" + DEMO_NAME + "`")
        stop()
    return run, epoch


def not_available(run: Run, what: str, hint: str = "") -> None:
    """Say that this page does not apply to the run's family, and stop the page."""
    st.info(f"**{what}** is not available for this family: " + plain(f"{run.name} is a {run.family.title} "
                                                                       f"({run.family.name}) run. {hint}"))
    stop()


def select_run_button(name: str, *, key: str, where=None) -> None:
    """A button that selects run ``name`` in the sidebar (and its last checkpoint)."""
    def pick() -> None:
        st.session_state["run"] = name
        st.session_state.pop("epoch", None)
    (where or st).button("Open " + plain(name), key=key, on_click=pick)


def train_runs(names: list[str], *, select: str | None = None) -> None:
    """Train the paper's named runs (:data:`entk_core.workflows.presets.PRESETS`) into the runs
    folder, in a worker process with a progress bar; then select ``select`` (its last
    checkpoint) and draw the page again, so it shows the new run at once. Refused in viewer mode."""
    from .jobs import run_in_worker

    if viewer_mode():
        st.error("viewer mode: training is not available here", icon="⚠️")
        return

    with guarded("training failed"):
        run_in_worker("Training", [preset_job(n) for n in names], names)
        _list_runs_cached.clear()
        if select:  # the sidebar's run picker is drawn already: it takes this at the top of the next run
            st.session_state[_PENDING_RUN] = select
        st.rerun()



def runs_of_family(family: ModelFamily | type[ModelFamily]) -> dict[str, Run]:
    """The runs with checkpoints in the runs folder whose family is ``family`` (a family or
    its class; subclasses count): what a family's own page offers to open."""
    cls = family if isinstance(family, type) else type(family)
    return {n: r for n, r in runs_listing(runs_root()) if isinstance(r, Run) and r.epochs and isinstance(r.family, cls)}
