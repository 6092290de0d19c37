"""The epoch animation on a page: every checkpoint's spectrum (and the tracked eigenvector's
picture where the family draws one) as one Plotly figure that the browser scrubs and plays
by itself (:func:`entk_core.figures.animation.epoch_animation_figure`).

The frames come from :func:`entk_core.workflows.dynamics_frames.epoch_frames` through
:func:`~entk_core.ui.jobs.long_call` (cached; after the page's sweep every spectrum is
cached and gathering them takes about a second). The sidebar's checkpoint slider keeps
owning the URL: the animation opens on its epoch and moving the animation's own slider
changes nothing on the server.
"""
from __future__ import annotations

import streamlit as st

from ..families.run import Run
from ..figures.animation import epoch_animation_figure
from ..workflows.dynamics_frames import epoch_frames, epoch_frames_seconds
from .jobs import long_call
from .urlstate import url_toggle

__all__ = ["epoch_animation", "PICTURE_VIEWS"]

PICTURE_VIEWS = ("grid", "vector")
"""Eigenvector views (:meth:`ModelFamily.eigenvector_view`) the animation draws beside the spectrum."""


def epoch_animation(run: Run, *, key: str, epoch: int, group: str, reduction: str | None, top: int | None,
                    vector: int | None = None, title: str = "eNTK spectrum over training",
                    default_on: bool = True) -> None:
    """Draw the epoch animation of ``run`` (one frame per checkpoint), opening on ``epoch``,
    behind a toggle mirrored as ``play=on|off`` (``default_on``): the figure holds every
    checkpoint (~1.2 MB for the 51-checkpoint demo run) and is rebuilt on each sidebar step, so
    a page whose epoch steps must stay fast (Grokking) keeps it off until asked.

    ``group``, ``reduction``, ``top``: the spectra of every checkpoint (pass the sweep's, whose
    entries are cached); ``vector``: the eigenvector to track, drawn where the family's
    eigenvector view is a picture (:data:`PICTURE_VIEWS`)."""
    if not url_toggle("play", "▶ Play through training in the browser (every checkpoint, no server round trip)",
                      default_on, key=f"{key}_on"):
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
    fig = epoch_animation_figure(frames.epochs, frames.eigenvalues, frames.cliffs, vectors=frames.vectors,
                                 vector_index=frames.vector, view=view, current=epoch, title=title)
    st.plotly_chart(fig, key=key, width="stretch")
    st.caption(f"{len(frames.epochs)} checkpoints, all in your browser: drag the slider under the chart or press "
               "▶ Play to step through training with no round trip to the server. The sidebar's checkpoint sets "
               "where it opens (and the link).")
