"""Streamlit glue shared by app.py and the pages: the whole view in the URL, the run and
checkpoint picker, cached run access, long computations with an estimate, progress and
Stop, honest cache captions, exports, and one-line errors. Pages stay thin: they read
widgets (through the ``url_*`` helpers below), call :mod:`entk_core` and draw
:mod:`entk_core.figures`.

The view in the URL
-------------------
Every control that changes what is shown is drawn with a ``url_*`` helper
(:func:`url_selectbox`, :func:`url_multiselect`, :func:`url_toggle`, :func:`url_int`,
:func:`url_float`, :func:`url_select_slider`, :func:`url_text`) under a short URL name
(the table in ``docs/url-parameters.md``). The rules:

* The query string *is* the view: a missing parameter means the page's default for it.
  Parameters are shared across pages (``group`` on Spectrum is ``group`` on Grokking),
  so switching pages keeps the query string unchanged (one history entry, the page's).
* A run starts by comparing the query string with the one this session last wrote
  (:func:`begin_view`). If it differs, the browser changed it -- a first load, Back or
  Forward, an edited link -- and every control is set from it; a value that does not
  parse or is out of range gets **one** visible message and the control's default.
* At the end of a run (:func:`sync_url`, called by app.py and by fragments; pages stop
  with :func:`stop`, never ``st.stop``), the view is written back in **one** update:
  ``run`` and ``epoch`` always, other parameters only where they differ from the default,
  an all-default view as a bare URL. Streamlit's frontend turns that one update into one
  ``history.pushState``: one history entry per user action, none when nothing changed,
  and none on a Back/Forward run (which it replaces). Runs that only read the URL (first
  load, Back/Forward) write nothing unless a value from the link was invalid.
* Parameters of other pages that are not drawn in a run are carried as they are, except
  after the run changed (they described the other run's view).

For a new page: ``value = url_selectbox("name", "Label", options, default, key="page_name")``
for each control, then draw; stop early with :func:`stop`. Long work: :func:`long_call`.
"""
from __future__ import annotations

import hashlib
import os
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import streamlit as st

from entk_core.cli import one_line
from entk_core.families.run import Run, list_runs, open_run
from entk_core.store.runs import RunError, runs_root

DEMO_FAMILY = "modadd-mlp"
DEMO_NAME = "modadd-mlp-p29-seed0"
ASK_ABOVE_S = 10.0
"""Requests estimated above this many seconds ask before starting (:func:`long_call`)."""

#: Order of the parameters in a written URL (others follow, sorted).
PARAM_ORDER = ("run", "epoch", "group", "reduction", "top", "beta", "log", "windows", "window", "cliff",
               "families", "rotation", "vector", "compare")

_LAST, _START, _EXT, _REG, _BAD, _RUN0 = ("_url_last", "_url_start", "_url_external", "_url_registry",
                                         "_url_bad", "_url_run_at_start")


# ------------------------------------------------------------------- errors
def relative_paths(text: str) -> str:
    """``text`` with the runs folder, the cache folder and the repository shown relative
    (``runs/NAME/...``), never as absolute server paths."""
    from entk_core.store.cache import cache_dir

    repo = Path(__file__).resolve().parents[1]
    subs = []
    for base, shown in ((runs_root(), "runs"), (cache_dir(), "cache"), (repo, ".")):
        for p in {str(base), str(Path(base).resolve())}:
            if p and p not in ("/", "."):
                subs.append((p, shown))
    for p, shown in sorted(subs, key=lambda t: -len(t[0])):
        text = text.replace(p + "/", shown + "/").replace(p, shown + "/")
    return text


def error_line(e: BaseException) -> str:
    """One line for the UI: the exception's first line, paths relative to the runs folder."""
    return relative_paths(one_line(e))


@contextmanager
def guarded(what: str = "") -> Iterator[None]:
    """Show any failure inside the block as one ``st.error`` line (never a traceback).
    Streamlit's own control flow (rerun, stop) passes through."""
    try:
        yield
    except (RunError, ValueError, FileNotFoundError, PermissionError, MemoryError, LookupError, RuntimeError) as e:
        if _is_control_flow(e):
            raise
        st.error(f"{what + ': ' if what else ''}{error_line(e)}", icon="⚠️")
    except Exception as e:  # noqa: BLE001
        if _is_control_flow(e):
            raise
        if os.environ.get("ENTK_DEBUG"):
            traceback.print_exc()
        st.error(f"{what + ': ' if what else ''}unexpected {e.__class__.__name__}: {error_line(e)}", icon="⚠️")


def _is_control_flow(e: BaseException) -> bool:
    return type(e).__name__ in ("RerunException", "StopException", "FragmentHandledException",
                                "FragmentStorageKeyError")


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
def _alignment_inputs(path: str, epoch: int, sha: str) -> dict[str, Any]:
    from entk_core.engine.measures import family_bases
    from entk_core.workflows import alignment

    run = open_run(path)
    model = _load_model(path, epoch, sha)
    families = alignment.feature_families_for(run, epoch, model=model)
    return {"families": families, "bases": family_bases(families),
            "activations": alignment.pca_for(run, epoch, model=model)}


def alignment_inputs(run: Run, epoch: int) -> dict[str, Any]:
    """What the alignment views measure against at ``epoch``, shared across sessions and
    reruns (``st.cache_resource``; the same for every control on the page): the feature
    ``families``, their orthonormal ``bases`` and the hidden ``activations`` of the PCA
    baseline (``None`` when the family declares none). Read-only by convention."""
    return _alignment_inputs(str(run.path), epoch, run.checkpoint_sha(epoch))


@st.cache_resource(max_entries=64, show_spinner=False)
def _groups(path: str, mtime: float) -> list[str]:
    from entk_core.workflows import analysis

    return analysis.kernel_groups(open_run(path))


def groups_of(run: Run) -> list[str]:
    """``["full", <layer groups>, <derived groups>]`` of the run's model (cached)."""
    return _groups(str(run.path), (run.path / "manifest.json").stat().st_mtime)


@st.cache_resource(max_entries=128, show_spinner=False)
def _ksize(path: str, mtime: float, reduction: str) -> int:
    from entk_core.workflows import analysis

    return analysis.kernel_size(open_run(path), reduction)


def kernel_size_of(run: Run, reduction: str) -> int:
    """Rows of the run's reduced kernel (cached)."""
    return _ksize(str(run.path), (run.path / "manifest.json").stat().st_mtime, reduction)


def group_name(run: Run, group: str) -> str:
    """``"net.0 · W1, input → hidden"``: the module path with the family's human name."""
    from entk_core.workflows import analysis

    if group == analysis.FULL:
        return "full · all parameters"
    label = run.family.group_labels(run.config).get(group)
    return f"{group} · {label}" if label else group


# --------------------------------------------------------------- URL state
def begin_view() -> None:
    """Start of a full script run (app.py): note whether the browser changed the URL."""
    qp = st.query_params.to_dict()
    st.session_state[_START] = qp
    st.session_state[_EXT] = st.session_state.get(_LAST) != qp
    st.session_state[_REG] = {}
    st.session_state[_BAD] = set()
    st.session_state[_RUN0] = qp.get("run")
    st.session_state["_in_full_run"] = True


def link_external() -> bool:
    """Whether this run shows a view the browser asked for (first load, Back/Forward, an edited link)."""
    return bool(st.session_state.get(_EXT))


def _message(text: str) -> None:
    box = st.session_state.get("_url_box")
    (box or st).warning(relative_paths(text), icon="🔗")


def _seed(name: str, key: str, default: Any, parse: Callable[[str], Any], valid: Callable[[Any], bool],
          fmt: Callable[[Any], str]) -> None:
    start = st.session_state.get(_START, {})
    first = _LAST not in st.session_state  # the session's first run: a value set before it (tests) stays
    if (link_external() and not (first and name not in start and key in st.session_state and valid(st.session_state[key]))) \
            or key not in st.session_state:
        raw = start.get(name)
        value = default
        if raw is not None:
            try:
                value = parse(raw)
                if not valid(value):
                    raise ValueError("not available here")
            except (ValueError, TypeError, KeyError, LookupError) as e:
                value = default
                reported = name in st.session_state[_BAD]
                st.session_state[_BAD].add(name)
                if link_external() and not reported:
                    _message(f"`{name}={raw[:60]}` from the link: {one_line(e)}; showing {name} = {fmt(default)}")
        st.session_state[key] = value
    elif not valid(st.session_state[key]):  # the options changed (another run): back to the default
        st.session_state[key] = default


def _register(name: str, value: Any, default: Any, fmt: Callable[[Any], str]) -> None:
    st.session_state.setdefault(_REG, {})[name] = (fmt(value), fmt(default))


def _control(name, key, default, parse, valid, fmt, draw):
    _seed(name, key, default, parse, valid, fmt)
    value = draw()
    _register(name, value, default, fmt)
    return value


def _choice_parser(options: Sequence, fmt: Callable[[Any], str]):
    table = {fmt(o): o for o in options}

    def parse(raw: str):
        if raw in table:
            return table[raw]
        shown = ", ".join(list(table)[:12]) + (", …" if len(table) > 12 else "")
        raise ValueError(f"not one of {shown}")
    return parse


def url_selectbox(name: str, label: str, options: Sequence, default: Any, *, key: str, where=None,
                  url_format: Callable[[Any], str] = str, **kw) -> Any:
    """A selectbox mirrored in the URL as ``name=<url_format(option)>``."""
    options = list(options)
    default = default if default in options else options[0]
    return _control(name, key, default, _choice_parser(options, url_format), lambda v: v in options, url_format,
                    lambda: (where or st).selectbox(label, options, key=key, **kw))


def url_select_slider(name: str, label: str, options: Sequence, default: Any, *, key: str, where=None,
                      parse: Callable[[str], Any] | None = None, url_format: Callable[[Any], str] = str, **kw) -> Any:
    """A select_slider mirrored in the URL (``parse`` may give a better message than "not one of")."""
    options = list(options)
    default = default if default in options else options[-1]
    return _control(name, key, default, parse or _choice_parser(options, url_format), lambda v: v in options,
                    url_format, lambda: (where or st).select_slider(label, options=options, key=key, **kw))


def url_multiselect(name: str, label: str, options: Sequence[str], default: Sequence[str], *, key: str,
                    where=None, **kw) -> list[str]:
    """A multiselect mirrored as ``name=a,b,c`` (``name=`` for none)."""
    options = list(options)
    default = [d for d in default if d in options]

    def parse(raw: str) -> list[str]:
        vals = [v for v in raw.split(",") if v]
        bad = [v for v in vals if v not in options]
        if bad:
            raise ValueError(f"unknown {', '.join(bad)} (choose from {', '.join(options)})")
        return vals

    return _control(name, key, default, parse, lambda v: all(x in options for x in v), lambda v: ",".join(v),
                    lambda: (where or st).multiselect(label, options, key=key, **kw))


def url_toggle(name: str, label: str, default: bool, *, key: str, where=None, **kw) -> bool:
    """A toggle mirrored as ``name=on|off``."""
    def parse(raw: str) -> bool:
        r = raw.lower()
        if r in ("on", "1", "true", "yes"):
            return True
        if r in ("off", "0", "false", "no"):
            return False
        raise ValueError("not on or off")

    return _control(name, key, bool(default), parse, lambda v: isinstance(v, bool), lambda v: "on" if v else "off",
                    lambda: (where or st).toggle(label, key=key, **kw))


def url_int(name: str, label: str, lo: int, hi: int, default: int, *, key: str, where=None, step: int = 1,
            **kw) -> int:
    """An integer input on ``[lo, hi]`` mirrored in the URL; the range is in the label's help."""
    default = int(min(max(default, lo), hi))

    def parse(raw: str) -> int:
        v = int(raw)
        if not lo <= v <= hi:
            raise ValueError(f"out of range: must be between {lo} and {hi}")
        return v

    kw.setdefault("help", f"between {lo} and {hi}")
    return int(_control(name, key, default, parse, lambda v: isinstance(v, int) and lo <= v <= hi, str,
                        lambda: (where or st).number_input(label, min_value=lo, max_value=hi, step=step, key=key,
                                                           **kw)))


def url_float(name: str, label: str, lo: float, hi: float, default: float, *, key: str, step: float,
              where=None, **kw) -> float:
    """A float slider on ``[lo, hi]`` (``step``) mirrored in the URL."""
    def parse(raw: str) -> float:
        v = float(raw)
        if not np.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"out of range: must be between {lo:g} and {hi:g}")
        return round(round(v / step) * step, 10)

    return float(_control(name, key, float(default), parse, lambda v: isinstance(v, float) and lo <= v <= hi,
                          lambda v: f"{v:g}",
                          lambda: (where or st).slider(label, float(lo), float(hi), step=float(step), key=key, **kw)))


def url_text(name: str, label: str, default: str, *, key: str, where=None, validate: Callable[[str], Any],
             **kw) -> str:
    """A text input mirrored in the URL; ``validate(value)`` raises ``ValueError`` for bad text."""
    def parse(raw: str) -> str:
        validate(raw)
        return raw

    def ok(v) -> bool:
        try:
            validate(v)
            return True
        except ValueError:
            return False

    return _control(name, key, default, parse, ok, str, lambda: (where or st).text_input(label, key=key, **kw))


def set_control(key: str, value: Any) -> None:
    """Set a control's value from code before it is drawn (e.g. a click on a chart)."""
    st.session_state[key] = value


def _canonical(reg: dict[str, tuple[str, str]], start: dict[str, str]) -> dict[str, str]:
    run_changed = reg.get("run", (None,))[0] != st.session_state.get(_RUN0) and st.session_state.get(_RUN0) is not None
    carried = {} if run_changed else {k: v for k, v in start.items() if k not in reg}
    if not carried and not start and all(v == d for v, d in reg.values()):
        return {}
    # explicit values stay explicit (a page whose default differs must not rewrite the link)
    out = {k: v for k, (v, d) in reg.items() if v != d or k in ("run", "epoch") or start.get(k) == v}
    out.update(carried)
    order = {k: i for i, k in enumerate(PARAM_ORDER)}
    return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def nav_menu(pages: list) -> None:
    """Reserve the sidebar's page menu (filled by :func:`sync_url` with links carrying the view)."""
    st.session_state["_nav"] = (pages, st.sidebar.container())


def _fill_nav(query: dict[str, str]) -> None:
    pages, box = st.session_state.get("_nav", (None, None))
    if box is None:
        return
    with box:
        for pg in pages:
            st.page_link(pg, label=pg.title, icon=pg.icon, query_params=query or None)
        st.divider()
    st.session_state["_nav"] = (pages, None)


def sync_url(final: bool = False) -> None:
    """Write the view to the URL in one update (module docstring); call at the end of
    every run (app.py does, with ``final=True``: it also draws the page menu, whose links
    carry the view) and at the end of every fragment (a no-op when the fragment runs as part
    of a full run: app.py writes once at its end)."""
    if not final and st.session_state.get("_in_full_run"):
        return
    reg = st.session_state.get(_REG, {})
    current = st.query_params.to_dict()
    if link_external():
        bad = st.session_state.get(_BAD, set())
        new = {k: v for k, v in current.items() if k not in bad}
        st.session_state[_EXT] = False
    else:
        new = _canonical(reg, st.session_state.get(_START, current))
    if new != current:
        st.query_params.from_dict(new)
    st.session_state[_LAST] = new
    st.session_state[_START] = new
    if final:
        st.session_state["_in_full_run"] = False
        _fill_nav(new)


def stop() -> None:
    """End the page here (``st.stop``) after writing the view to the URL."""
    sync_url(final=True)
    st.stop()


def url_box() -> None:
    """Create the place (top of the main area) where messages about the link appear."""
    st.session_state["_url_box"] = st.container()


# ------------------------------------------------------------------ sidebar
def _url_run_fault(root: Path, want: str, runs: dict) -> str:
    if isinstance(runs.get(want), RunError):
        return one_line(runs[want])
    try:
        open_run(want, root, confine=True)
    except RunError as e:
        return one_line(e)
    return "it has no checkpoints yet"


def _human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _cache_panel() -> None:
    from entk_core.store.cache import default_cache

    with st.sidebar.expander("Result cache", expanded=False):
        try:
            cache = default_cache()
            size = cache.volume()
        except (OSError, ValueError, RuntimeError) as e:
            st.caption(f"cache unavailable: {error_line(e)}")
            return
        st.caption(f"{_human_size(size)} in `{relative_paths(str(cache.directory))}` (limit "
                   f"{_human_size(cache.size_limit)}; least recently stored entries go first)")
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


@st.cache_resource(ttl=2, show_spinner=False)
def _list_runs_cached(root: str, mtime: float):
    return list_runs(Path(root))


def runs_listing(root: Path):
    try:
        mtime = root.stat().st_mtime
    except OSError:
        mtime = 0.0
    return _list_runs_cached(str(root), mtime)


def sidebar() -> None:
    """The run and checkpoint picker (URL ``run``, ``epoch``) and the cache panel."""
    begin_view()
    root = runs_root()
    runs = runs_listing(root)
    good = [name for name, r in runs if isinstance(r, Run) and r.epochs]
    broken = [(name, r) for name, r in runs if not isinstance(r, Run)]
    st.sidebar.caption("Runs folder: `runs/`" if root.name == "runs" else f"Runs folder: `{root.name}/`")
    st.session_state["selection_error"] = None
    for bname, err in broken:  # a run that cannot be opened: one line naming the file and the fault
        st.sidebar.error(f"{bname}: {error_line(err)}", icon="⚠️")
    if not good:
        st.session_state["selection"] = (None, None)
        st.sidebar.info("No runs yet." if not broken else "No usable runs.")
        _cache_panel()
        return
    start = st.session_state.get(_START, {})
    want = start.get("run")
    if link_external() and want is not None and want not in good:
        st.session_state[_BAD].add("run")
        _message(f"run `{want[:60]}` from the link: {_url_run_fault(root, want, dict(runs))}; showing {good[0]}")
    name = url_selectbox("run", "Run", good, good[0], key="run", where=st.sidebar)
    try:
        run = load_run(name)
    except RunError as e:
        st.sidebar.error(error_line(e), icon="⚠️")
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
        _register("epoch", epoch, epoch, str)
        st.sidebar.write(f"Checkpoint: epoch {epoch}")
    st.sidebar.caption(f"{run.family.title} · {run.status} · {len(epochs)} checkpoints")
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
        st.error(f"cannot open the selected run: {st.session_state['selection_error']}", icon="⚠️")
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
    st.info(f"**{what}** is not available for this family: `{run.name}` is a {run.family.title} "
            f"(`{run.family.name}`) run. {hint}".strip())
    stop()


def select_run_button(name: str, *, key: str, where=None) -> None:
    """A button that selects run ``name`` in the sidebar (and its last checkpoint)."""
    def pick() -> None:
        st.session_state["run"] = name
        st.session_state.pop("epoch", None)
    (where or st).button(f"Open {name}", key=key, on_click=pick)


def train_runs(names: list[str], *, select: str | None = None) -> None:
    """Train the paper's named runs (:data:`entk_core.workflows.presets.PRESETS`) into the runs
    folder with a progress bar; select ``select`` afterwards."""
    from entk_core.workflows.presets import train_preset

    bar = st.progress(0.0, text="Training…")
    with guarded("training failed"):
        for i, name in enumerate(names):
            def progress(done: int, total: int, message: str, i=i, name=name) -> None:
                bar.progress(min(1.0, (i + done / max(total, 1)) / len(names)),
                             text=f"{name} ({i + 1}/{len(names)}): {message}")

            train_preset(name, progress=progress)
        bar.progress(1.0, text="done")
        _list_runs_cached.clear()
        if select:
            st.session_state["run"] = select
            st.session_state.pop("epoch", None)
        st.rerun()


# ------------------------------------------------------------- long work
def estimate_seconds(run: Run, *, reduction: str, group: str, top: int) -> float:
    """Seconds a spectrum request would take on this machine: the engine's calibrated
    estimate (:func:`entk_core.workflows.analysis.estimate_spectrum`; 0 when cached). A request
    that is invalid or cannot fit costs nothing to start (it is refused before any work, with
    its one-line message), so it is 0 too: nothing to ask about."""
    from entk_core.workflows import analysis

    try:
        e = analysis.estimate_spectrum(run, group=group, reduction=reduction, top=top)
    except ValueError:
        return 0.0
    return float(e["seconds"]) if e["fits"] else 0.0


def long_call(key: str, label: str, fn: Callable, run: Run, *, target: str, kwargs: dict[str, Any],
              estimate_s: float | None) -> Any:
    """Return ``fn(run, **kwargs)`` (a cached operation taking ``cache=`` and ``progress=``).

    A cached result comes back at once. Otherwise, below :data:`ASK_ABOVE_S` (or when no
    estimate is known) it is computed here with a progress bar; above, the estimate is shown
    with a Start button, and once started the work runs in a worker process
    (:class:`entk_core.workflows.jobs.Job`) with progress and a **Stop** button. Stop,
    leaving the page or changing any control interrupts this script run, which kills the
    worker at once. Returns ``None`` (after drawing the offer) when nothing was computed.
    ``key`` identifies the request (include every argument)."""
    from entk_core.workflows.jobs import Job, cached

    hit = cached(fn, run, **kwargs)
    if hit is not None:
        return hit
    state = st.session_state.setdefault("_long", {})
    small = estimate_s is None or estimate_s <= ASK_ABOVE_S
    if small:
        with ProgressBar(label) as bar:
            return fn(run, **kwargs, progress=bar)
    wkey = "long_" + hashlib.sha256(key.encode()).hexdigest()[:10]
    if st.session_state.get(wkey + "_stop"):
        state.pop(key, None)
        st.warning("Stopped. Nothing was cached; start again when you like.")
    if state.get(key) != "started":
        st.info(f"{label} is estimated at about **{_fmt_s(estimate_s)}** on this machine.")
        if st.button(f"Start ({_fmt_s(estimate_s)})", key=wkey + "_go", type="primary"):
            state[key] = "started"
            st.rerun()
        return None
    st.button("Stop", key=wkey + "_stop", type="secondary", help="kills the worker; nothing partial is cached")
    bar = st.progress(0.0, text=f"{label}: starting a worker…")
    t0 = time.perf_counter()

    def show(done: int, total: int, message: str) -> None:
        frac = min(1.0, done / total) if total else min(0.95, (time.perf_counter() - t0) / max(estimate_s, 1))
        bar.progress(frac, text=f"{label}: {message or 'working'} · {time.perf_counter() - t0:.0f} s of "
                                f"~{_fmt_s(estimate_s)}")

    job = Job(target=target, run=str(run.path), kwargs=kwargs).start()
    try:
        job.wait(show)
    finally:
        job.kill()
        state.pop(key, None)
    bar.empty()
    return cached(fn, run, **kwargs)


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    if s < 90:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min"


class ProgressBar:
    """A ``progress(done, total, message)`` callback drawing an ``st.progress`` bar
    (created on the first update, so cache hits show nothing).

    Each update is also where Streamlit stops a run the user stopped or superseded (it
    raises its control exception from the element call), so a computation given this
    callback is cancelled mid-way; the cache stores a result only once compute() has
    returned, so nothing partial is kept."""

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


# ---------------------------------------------------------------- captions
def timed(fn: Callable, *args, **kwargs) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds)``."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def cache_caption(meta: dict[str, Any], elapsed_s: float, computed_s: float | None) -> str:
    """"from the cache in 9 ms; computed in 0.61 s on 2026-12-01" or "computed now in 0.61 s"."""
    when = meta.get("computed_at")
    on = f" on {str(when)[:10]}" if when else ""
    comp = "" if computed_s is None else f"; computed in {_fmt_time(computed_s)}{on}"
    if meta.get("cache") == "hit":
        return f"from the cache in {_fmt_time(elapsed_s)}{comp}"
    return f"computed now in {_fmt_time(elapsed_s)} and cached"


def _fmt_time(s: float) -> str:
    return f"{1000 * s:.0f} ms" if s < 1 else f"{s:.2f} s"


def fmt_pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.1%}"


# ------------------------------------------------------------------ exports
def export_buttons(name: str, *, arrays: dict[str, np.ndarray] | None = None,
                   tables: dict[str, list[dict]] | None = None, figures: dict[str, Any] | None = None,
                   key: str) -> None:
    """Download buttons for a view: its arrays as one NPZ, each table (and each 1-D/2-D array)
    as CSV, and each figure as PNG and SVG (rendered on click, offline; see
    :mod:`entk_core.figures.export`)."""
    from entk_core.figures.export import figure_bytes, static_export_reason
    from entk_core.workflows.export import arrays_npz, table_csv, array_csv

    with st.expander("Export this view (CSV, NPZ, PNG, SVG)"):
        cols = st.columns(4)
        i = 0
        if arrays:
            cols[i % 4].download_button("NPZ (all arrays)", data=lambda: arrays_npz(arrays), file_name=f"{name}.npz",
                                        mime="application/octet-stream", key=f"{key}_npz", on_click="ignore")
            i += 1
            for aname, arr in arrays.items():
                if np.ndim(arr) in (1, 2):
                    cols[i % 4].download_button(f"CSV: {aname}", data=lambda a=arr: array_csv(a),
                                                file_name=f"{name}_{aname}.csv", mime="text/csv",
                                                key=f"{key}_csv_{aname}", on_click="ignore")
                    i += 1
        for tname, rows in (tables or {}).items():
            cols[i % 4].download_button(f"CSV: {tname}", data=lambda r=rows: table_csv(r), file_name=f"{name}_{tname}.csv",
                                        mime="text/csv", key=f"{key}_tab_{tname}", on_click="ignore")
            i += 1
        why = static_export_reason()
        for fname, fig in (figures or {}).items():
            for fmt in ("png", "svg"):
                if why:
                    continue
                cols[i % 4].download_button(
                    f"{fmt.upper()}: {fname}", data=lambda f=fig, x=fmt: figure_bytes(f, x),
                    file_name=f"{name}_{fname}.{fmt}", mime="image/png" if fmt == "png" else "image/svg+xml",
                    key=f"{key}_{fname}_{fmt}", on_click="ignore")
                i += 1
        if why and figures:
            st.caption(why)



# ------------------------------------------------------ spectra and vectors
def vector_figures(run: Run, vec: np.ndarray, *, title: str, feature_values: np.ndarray | None = None,
                   value_name: str = "share of the squared norm") -> list:
    """The figures of one eigenvector in the form its family declares
    (:meth:`~entk_core.families.base.ModelFamily.eigenvector_view`): the p × p image and its
    Fourier power for pair-indexed kernels, a bar per feature (class-major flattened rows
    folded per class) for ``"features"``, else the plain vector."""
    from entk_core.figures import eigenvector_figures, fold_per_class

    view = run.family.eigenvector_view(run.config)
    n_in = len(run.data.kernel_idx)
    p = getattr(run.config, "p", None)
    v = None if vec is None else np.asarray(vec).reshape(-1)
    if feature_values is not None:
        return eigenvector_figures("features", feature_values, title=title, value_name=value_name)
    if view == "grid" and p is not None and v.size == p * p:
        return eigenvector_figures("grid", v, p=p, title=title)
    if v.size > n_in and v.size % n_in == 0:  # class-major flattened rows: fold per class (output)
        share = fold_per_class(v, v.size // n_in)
        figs = eigenvector_figures("features", share, title=title + " (share per output)", value_name=value_name)
        figs[0].update_xaxes(title_text="output / class" if view != "features" else "feature (importance order)")
        return figs
    return eigenvector_figures("vector", v, title=title)


def _clicked_index(chart_key: str) -> int | None:
    sel = st.session_state.get(chart_key)
    try:
        pts = sel["selection"]["points"] if sel else []
    except (KeyError, TypeError):
        return None
    for pt in pts:
        x = pt.get("x")
        if x is not None:
            return int(round(float(x)))
    return None


def spectrum_explorer(run: Run, *, key: str, eigenvalues: np.ndarray, cliffs, labels, title: str, log: bool,
                      vector_of: Callable[[int], list], n_vectors: int, default_vector: int = 0,
                      extra: dict[str, np.ndarray] | None = None, reference_lines: dict[str, float] | None = None,
                      height: int = 460, side: Callable[[int], None] | None = None) -> tuple[int, Any, list]:
    """A spectrum chart whose eigenvalues can be clicked (or typed, URL ``vector``) to show
    that eigenvector below in its family's form. Returns ``(index, spectrum figure, vector figures)``.
    ``vector_of(i)`` gives the figures of eigenvector ``i``; ``side(i)`` draws extra facts
    beside the index input."""
    from entk_core.figures import spectrum_figure

    chart_key, vkey = f"{key}_chart", f"{key}_vector"
    n_vectors = max(1, int(n_vectors))
    clicked = _clicked_index(chart_key)
    if clicked is not None and st.session_state.get(f"{key}_lastclick") != clicked:
        st.session_state[f"{key}_lastclick"] = clicked
        if 0 <= clicked < n_vectors:
            set_control(vkey, clicked)
    left, right = st.columns([3, 1])
    idx = url_int("vector", "Eigenvector index", 0, n_vectors - 1, min(default_vector, n_vectors - 1), key=vkey,
                  where=right, help=f"0 to {n_vectors - 1}; or click an eigenvalue on the spectrum")
    right.metric("eigenvalue", f"{eigenvalues[idx]:.3e}" if idx < len(eigenvalues) else "–")
    if side is not None:
        with right:
            side(idx)
    fig = spectrum_figure(eigenvalues, cliffs, labels=labels, title=title, log=log, extra=extra,
                          reference_lines=reference_lines, selected=idx, height=height)
    left.plotly_chart(fig, key=chart_key, on_select="rerun", selection_mode="points", width="stretch")
    vfigs = vector_of(idx)
    cols = st.columns(len(vfigs)) if len(vfigs) > 1 else [st]
    for j, (c, f) in enumerate(zip(cols, vfigs)):
        c.plotly_chart(f, key=f"{key}_vec{j}", width="stretch")
    return idx, fig, vfigs


def compare_options(run: Run, epoch: int) -> list[str]:
    """What a "compare with" control offers: ``""`` (nothing), the other checkpoints of
    this run (``"200"``) and the checkpoints of other runs of the same family
    (``"RUN@EPOCH"``)."""
    opts = [""] + [str(e) for e in run.epochs if e != epoch]
    for name, r in runs_listing(runs_root()):
        if isinstance(r, Run) and name != run.name and r.epochs and r.family.name == run.family.name:
            opts += [f"{name}@{e}" for e in r.epochs]
    return opts


def compare_control(run: Run, epoch: int, *, key: str, where=None) -> tuple[Run, int, str] | None:
    """The URL-mirrored "compare with" control (``compare=200`` or ``compare=RUN@200``):
    ``(run, epoch, label)`` of the other checkpoint, or ``None``."""
    opts = compare_options(run, epoch)
    fmt = (lambda o: "nothing" if o == "" else (f"epoch {o} of this run" if "@" not in o
                                              else f"{o.split('@')[0]}, epoch {o.split('@')[1]}"))
    val = url_selectbox("compare", "Compare with", opts, "", key=key, where=where, format_func=fmt,
                        help="another checkpoint of this run, or a checkpoint of another run of the same family")
    if not val:
        return None
    if "@" in val:
        name, e = val.rsplit("@", 1)
        return load_run(name), int(e), f"{name} @ {e}"
    return run, int(val), f"epoch {val}"
