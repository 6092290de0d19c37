"""The whole view in the URL: the page controls mirrored in the query string, written back
in one update per script run, and the sidebar's page menu whose links carry it.

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
for each control, then draw; stop early with :func:`stop`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import streamlit as st

from ..errors import one_line
from .errors import relative_paths
from .format import plain

__all__ = ["PARAM_ORDER", "begin_view", "link_external", "mark_bad", "link_message", "register", "url_selectbox",
           "url_select_slider", "url_multiselect", "url_toggle", "url_int", "url_float", "url_text", "set_control",
           "nav_menu", "sync_url", "stop", "url_box", "link_start"]

#: Order of the parameters in a written URL (others follow, sorted).
PARAM_ORDER = ("run", "epoch", "group", "reduction", "top", "beta", "log", "windows", "window", "cliff",
               "families", "rotation", "vector", "compare")

_LAST, _START, _EXT, _REG, _BAD, _RUN0 = ("_url_last", "_url_start", "_url_external", "_url_registry",
                                         "_url_bad", "_url_run_at_start")


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


def link_message(text: str) -> None:
    """Show one message about the link (above the page, in :func:`url_box`), as plain text:
    it quotes the link's values (:func:`entk_core.ui.format.plain`)."""
    box = st.session_state.get("_url_box")
    (box or st).warning(plain(relative_paths(text)), icon="🔗")


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
                    link_message(f"{name}={_cut(raw)} from the link: {_cut(one_line(e), 200)}; showing {name} = {fmt(default)}")
        st.session_state[key] = value
    elif not valid(st.session_state[key]):  # the options changed (another run): back to the default
        st.session_state[key] = default


def _cut(raw: str, n: int = 60) -> str:
    return raw if len(raw) <= n else raw[:n - 1] + "…"


def register(name: str, value: Any, default: Any, fmt: Callable[[Any], str]) -> None:
    """Record a parameter shown in this run without a ``url_*`` control (e.g. the only epoch)."""
    st.session_state.setdefault(_REG, {})[name] = (fmt(value), fmt(default))


def _control(name, key, default, parse, valid, fmt, draw):
    _seed(name, key, default, parse, valid, fmt)
    value = draw()
    register(name, value, default, fmt)
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


def link_start() -> dict[str, str]:
    """The query string this run started from."""
    return st.session_state.get(_START, {})


def mark_bad(name: str) -> None:
    """Note that the link's ``name`` was invalid (it is dropped when the URL is written)."""
    st.session_state.setdefault(_BAD, set()).add(name)

