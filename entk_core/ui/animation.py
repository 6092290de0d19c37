"""The epoch animation on a page: every checkpoint's spectrum (and the tracked eigenvector's
picture where the family draws one) as one Plotly figure that the browser scrubs and plays
by itself (:func:`entk_core.figures.animation.epoch_animation_figure`).

The frames come from :func:`entk_core.workflows.dynamics_frames.epoch_frames` through
:func:`~entk_core.ui.jobs.long_call` (cached; after the page's sweep every spectrum is
cached and gathering them takes about a second). The sidebar's checkpoint slider keeps
owning the URL: the animation opens on its epoch when it is turned on, and moving the
animation's own slider changes nothing on the server.

A later step of the sidebar's slider leaves the animation as it is (where the visitor left
it): the figure is the same object, so it is neither built nor drawn again. Building it takes
0.2–0.4 s (its 102 pictures encoded as PNG) and drawing a changed one ~0.17 s of the browser's
CPU (measured with trace frames; standalone, Plotly draws the image frames in the same time),
on every step of the sidebar (the 51-checkpoint demo run; ``benchmarks/bench_animation.py``
times a sidebar step).
"""
from __future__ import annotations

import hashlib

import numpy as np
import streamlit as st

from ..families.run import Run
from ..figures.animation import epoch_animation_figure
from ..workflows.dynamics_frames import PICTURE_VIEWS, epoch_frames, epoch_frames_seconds
from .jobs import long_call
from .urlstate import url_toggle

__all__ = ["epoch_animation", "PICTURE_VIEWS"]


def _content_key(frames, view: str, title: str) -> tuple:
    """What the figure shows apart from where it opens: the frames' values, the view, the title."""
    h = hashlib.sha1()
    for a in (frames.epochs, frames.eigenvalues, frames.vectors):
        if a is not None:
            a = np.ascontiguousarray(a)
            h.update(str((a.dtype, a.shape)).encode())
            h.update(a.tobytes())
    h.update(repr((frames.cliffs, frames.vector)).encode())
    return (h.hexdigest(), view, title)


@st.cache_resource(max_entries=8, show_spinner=False)
def _figure(content: tuple, opens_at: int, _frames, _view: str, _title: str):
    """The animation figure of ``_frames`` opening on ``opens_at``: built once per content
    (:func:`_content_key`, which covers the view and title) and epoch, shared by every session
    (~1.2 MB each for the demo run)."""
    return epoch_animation_figure(_frames.epochs, _frames.eigenvalues, _frames.cliffs, vectors=_frames.vectors,
                                  vector_index=_frames.vector, view=_view, current=opens_at, title=_title)


def epoch_animation(run: Run, *, key: str, epoch: int, group: str, reduction: str | None, top: int | None,
                    vector: int | None = None, title: str = "eNTK spectrum over training",
                    default_on: bool = True) -> None:
    """Draw the epoch animation of ``run`` (one frame per checkpoint) behind a toggle mirrored
    as ``play=on|off`` (``default_on``). It opens on ``epoch`` when it is turned on, or when what
    it shows changes (another run, group or tracked eigenvector); a later ``epoch`` (a step of
    the sidebar) leaves it as it is. The figure holds every checkpoint (~1.2 MB for the
    51-checkpoint demo run), so a page that opens with it off (Grokking) loads faster.

    ``group``, ``reduction``, ``top``: the spectra of every checkpoint (pass the sweep's, whose
    entries are cached); ``vector``: the eigenvector to track, drawn where the family's
    eigenvector view is a picture (:data:`PICTURE_VIEWS`)."""
    opened = f"{key}_opened"  # (what it shows, the epoch it opened on) in this session
    if not url_toggle("play", "▶ Play through training in the browser (every checkpoint, no server round trip)",
                      default_on, key=f"{key}_on"):
        st.session_state.pop(opened, None)
        return
    view = run.family.eigenvector_view(run.config)
    track = vector if view in PICTURE_VIEWS else None
    if track is not None and top is not None and not 0 <= int(track) < int(top):
        track = None
    kw = {"group": group, "reduction": reduction, "top": top, "vector": None if track is None else int(track)}
    frames = long_call(f"frames|{run.path}|{sorted(kw.items())}", "the epoch animation's frames", epoch_frames, run,
                       target="entk_core.workflows.dynamics_frames:epoch_frames", kwargs=kw,
                       estimate_s=lambda: epoch_frames_seconds(run, **kw))
    if frames is None:
        return
    content = _content_key(frames, view, title)
    was = st.session_state.get(opened)
    opens_at = was[1] if was is not None and was[0] == content else int(epoch)
    st.session_state[opened] = (content, opens_at)
    st.plotly_chart(_figure(content, opens_at, frames, view, title), key=key, width="stretch")
    st.caption(f"{len(frames.epochs)} checkpoints, all in your browser: drag the slider under the chart or press "
               "▶ Play to step through training with no round trip to the server. It opens on the sidebar's "
               "checkpoint (the link's); a later step of the sidebar leaves it where you left it.")
