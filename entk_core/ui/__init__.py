"""The dashboard's pages layer: what app.py, the generic pages (``app_pages/``) and every
family's own page script use. Streamlit is imported here and in the families' page scripts,
nowhere else in :mod:`entk_core`.

A page holds widgets, library calls and figures only: tables, curves and estimates come
from :mod:`entk_core.workflows` (:mod:`~entk_core.workflows.views`,
:mod:`~entk_core.workflows.estimates`), figures from :mod:`entk_core.figures`.

Modules, by concern:

* :mod:`~entk_core.ui.urlstate` -- the whole view in the URL (``url_*`` controls,
  :func:`sync_url`, :func:`stop`, the page menu's links);
* :mod:`~entk_core.ui.runs` -- the sidebar (run and checkpoint) and cached runs, models and
  view inputs;
* :mod:`~entk_core.ui.jobs` -- long computations (:func:`long_call`, :class:`ProgressBar`);
* :mod:`~entk_core.ui.views` -- the clickable spectrum, eigenvector pictures, compare, export;
* :mod:`~entk_core.ui.errors` -- :func:`guarded` and one-line messages;
* :mod:`~entk_core.ui.format` -- durations, percentages, the cache caption, and
  :func:`plain` / :func:`plain_html`: every value from the URL, a file name or a file's
  content goes through them before any markdown-rendering call (``st.error``, ``st.info``,
  ``st.caption``, labels) or a Plotly title;
* :mod:`~entk_core.ui.mode` -- viewer mode (:func:`viewer_mode`, :func:`compute_allowed`);
* :mod:`~entk_core.ui.menu` -- the page menu with every family's pages;
* :mod:`~entk_core.ui.style` -- the dashboard's own CSS (stale elements dim without a fade).

A family page (a plug-in's too) is a script that starts like a generic one::

    from entk_core.ui import guarded, require_run, url_int

    run, epoch = require_run()
    k = url_int("top", "Eigenvalues k", 1, 100, 20, key="mypage_top")
    with guarded("cannot draw the view"):
        ...
"""
from .errors import error_line, guarded, relative_paths
from .format import cache_caption, fmt_elapsed, fmt_pct, fmt_seconds, fmt_size, plain, plain_html, timed
from .jobs import ASK_ABOVE_S, Phase, ProgressBar, long_call, long_calls, phases_key, run_in_worker
from .mode import compute_allowed, viewer_max_seconds, viewer_mode
from .runs import (groups_of, group_name, kernel_size_of, load_model, load_run, not_available, require_run,
                   runs_listing, runs_of_family, select_run_button, selection, train_runs, view_inputs_of)
from .urlstate import (set_control, stop, sync_url, url_float, url_int, url_multiselect, url_select_slider,
                       url_selectbox, url_text, url_toggle)
from .views import compare_control, export_buttons, spectrum_explorer, vector_figures

__all__ = [
    "ASK_ABOVE_S",
    "Phase",
    "ProgressBar",
    "cache_caption",
    "compare_control",
    "compute_allowed",
    "error_line",
    "export_buttons",
    "fmt_elapsed",
    "fmt_pct",
    "fmt_seconds",
    "fmt_size",
    "group_name",
    "groups_of",
    "guarded",
    "kernel_size_of",
    "load_model",
    "load_run",
    "long_call",
    "long_calls",
    "phases_key",
    "not_available",
    "plain",
    "plain_html",
    "relative_paths",
    "require_run",
    "run_in_worker",
    "runs_listing",
    "runs_of_family",
    "select_run_button",
    "selection",
    "set_control",
    "spectrum_explorer",
    "stop",
    "sync_url",
    "timed",
    "train_runs",
    "url_float",
    "url_int",
    "url_multiselect",
    "url_select_slider",
    "url_selectbox",
    "url_text",
    "url_toggle",
    "vector_figures",
    "view_inputs_of",
    "viewer_max_seconds",
    "viewer_mode",
]
