"""View helpers of the pages: a clickable spectrum with the chosen eigenvector drawn in its
family's form, the "compare with" control, and the export panel. They draw
:mod:`entk_core.figures` and read URL-mirrored controls (:mod:`entk_core.ui.urlstate`).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import streamlit as st

from ..families.run import Run
from ..figures import eigenvector_figures, fold_per_class, spectrum_figure
from ..figures.export import figure_bytes, static_export_reason
from ..store.runs import runs_root
from ..workflows.export import array_csv, arrays_npz, table_csv
from .mode import viewer_mode
from .runs import load_run, runs_listing
from .urlstate import set_control, url_int, url_selectbox

__all__ = ["export_buttons", "vector_figures", "spectrum_explorer", "compare_options", "compare_control"]


def export_buttons(name: str, *, arrays: dict[str, np.ndarray] | None = None,
                   tables: dict[str, list[dict]] | None = None, figures: dict[str, Any] | None = None,
                   key: str) -> None:
    """Download buttons for a view: its arrays as one NPZ, each table (and each 1-D/2-D array)
    as CSV, and each figure as PNG and SVG (rendered on click, offline; see
    :mod:`entk_core.figures.export`). In viewer mode the figures are not rendered on the
    server (each rendering starts a browser there); the chart's own camera button saves a PNG."""
    with st.expander("Export this view (CSV, NPZ)" if viewer_mode() else "Export this view (CSV, NPZ, PNG, SVG)"):
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
        why = ("viewer mode: figures are not rendered on this server; each chart's camera button saves a PNG"
               if viewer_mode() else static_export_reason())
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



def vector_figures(run: Run, vec: np.ndarray | None, *, title: str, feature_values: np.ndarray | None = None,
                   value_name: str = "share of the squared norm") -> list:
    """The figures of one eigenvector in the form its family declares
    (:meth:`~entk_core.families.base.ModelFamily.eigenvector_view`): the p × p image and its
    Fourier power for pair-indexed kernels (``"grid"``: one row per input, p² inputs), a bar per
    feature (class-major flattened rows folded per class) for ``"features"``, else the plain
    vector. ``feature_values``: draw these values per feature instead of ``vec``."""
    view = run.family.eigenvector_view(run.config)
    n_in = len(run.data.kernel_idx)
    if feature_values is not None:
        return eigenvector_figures("features", feature_values, title=title, value_name=value_name)
    v = np.asarray(vec).reshape(-1)
    p = math.isqrt(v.size)
    if view == "grid" and v.size == n_in and p * p == v.size:  # one row per input: the p² pairs
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
    chart_key, vkey = f"{key}_chart", f"{key}_vector"
    n_vectors = max(1, int(n_vectors))

    def take_click() -> None:  # called by Streamlit when a click changes the selection, before the rerun
        clicked = _clicked_index(chart_key)
        if clicked is not None and 0 <= clicked < n_vectors:
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
    # a new figure (another index or epoch) is a new chart with no selection, so the same
    # eigenvalue clicked again is a new selection: the callback sees every click
    left.plotly_chart(fig, key=chart_key, on_select=take_click, selection_mode="points", width="stretch")
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
