"""The epoch animation's data: every checkpoint's spectrum, its cliffs and one tracked
eigenvector, gathered once per run and cached as one small entry (what
:func:`entk_core.figures.animation.epoch_animation_figure` draws, one frame per checkpoint).

:func:`epoch_frames` reads each checkpoint's top-``top`` spectrum of one kernel
(:func:`entk_core.workflows.analysis.spectrum`, the entries the sweep and the Spectrum page
cache; a missing one is computed) and keeps, per checkpoint, the eigenvalues, the detected
cliffs (start, size, label: the labelling used everywhere) and eigenvector ``vector``. An
eigenvector's sign is arbitrary, so each is flipped to agree with the previous checkpoint's
(the first: its largest entry positive) and the picture does not flicker between frames.
Everything is stored as float32: the figure sends 4-significant-digit values anyway.

:func:`training_frames` is :func:`epoch_frames` as the Training dynamics page asks for it (the
family's sweep spec and the eigenvector :func:`tracked_vector` picks), with JSON-able arguments
only, so that page's first visit runs it as its last phase in a worker.

:func:`training_sweep` is the family's sweep (:func:`entk_core.workflows.sweep.sweep`) for
one group and reduction with JSON-able arguments only, so a page can run it in a worker
(:class:`~entk_core.workflows.jobs.Job`); the Training dynamics page uses its overlaps and
its cached spectra.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from ..engine.spectra import CONSTANT_LABEL
from ..families.base import FULL
from ..families.run import Run
from ..store.cache import ArrayCache, default_cache, make_key
from . import analysis
from .checkpoint_units import checkpoints_digest

__all__ = ["EpochFrames", "epoch_frames", "epoch_frames_key", "epoch_frames_seconds", "training_sweep",
           "training_frames", "training_frames_seconds", "tracked_vector", "PICTURE_VIEWS", "READ_SPECTRUM_S",
           "FRAMES_FORMAT", "MAX_CLIFFS"]

FRAMES_FORMAT = 1
"""Version of the cached layout (part of its key)."""

MAX_CLIFFS = 12
"""Cliffs kept per checkpoint (the largest spectra have a handful)."""

PICTURE_VIEWS = ("grid", "vector")
"""Eigenvector views (:meth:`ModelFamily.eigenvector_view`) the animation draws beside the
spectrum; for the others it tracks no eigenvector."""

Progress = Callable[[int, int, str], None]


@dataclass
class EpochFrames:
    """One frame per checkpoint (:func:`epoch_frames`).

    Attributes:
      epochs: ``(E,)``; eigenvalues: ``(E, k)`` float32, descending (NaN past a short spectrum).
      cliffs: per checkpoint, ``[(start, end, label)]`` of its detected cliffs.
      vector: the tracked eigenvector's index (``None``: no vector was asked for).
      vectors: ``(E, n)`` float32, eigenvector ``vector`` at each checkpoint, signs aligned
        across checkpoints; ``None`` without ``vector``.
      meta: group, reduction, top, n, cache state.
    """

    epochs: np.ndarray
    eigenvalues: np.ndarray
    cliffs: list[list[tuple[int, int, str]]]
    vector: int | None = None
    vectors: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def index(self, epoch: int) -> int:
        """Position of ``epoch`` among the frames (the last frame when it is not one)."""
        hits = np.flatnonzero(self.epochs == epoch)
        return int(hits[0]) if hits.size else len(self.epochs) - 1


def _request(run: Run, group: str, reduction: str | None, top: int | None, vector: int | None):
    reduction = analysis.check_reduction(run, reduction)
    run.group_members(group)
    n = analysis.kernel_size(run, reduction)
    top = min(run.family.default_top, n) if top is None else int(top)
    if not 1 <= top <= n:
        raise ValueError(f"top must be between 1 and n = {n} (the kernel's size), got {top}")
    if vector is not None and not 0 <= int(vector) < top:
        raise ValueError(f"the tracked eigenvector must be between 0 and {top - 1}, got {vector}")
    return reduction, top, (None if vector is None else int(vector))


def epoch_frames_key(run: Run, *, group: str = FULL, reduction: str | None = None, top: int | None = None,
                     vector: int | None = None) -> str:
    """Cache key of :func:`epoch_frames` for these options."""
    reduction, top, vector = _request(run, group, reduction, top, vector)
    return make_key("epoch_frames", format=FRAMES_FORMAT, family=run.family.name, config=asdict(run.config),
                    checkpoints=checkpoints_digest(run), group=group, reduction=reduction, top=top, vector=vector)


def epoch_frames(run: Run, group: str = FULL, reduction: str | None = None, top: int | None = None,
                 vector: int | None = None, *, cache: ArrayCache | None = None,
                 progress: Progress | None = None) -> EpochFrames:
    """The animation's frames of ``run`` (module docstring), cached as one entry.

    Args:
      group, reduction, top: the spectrum of every checkpoint (defaults as
        :func:`entk_core.workflows.analysis.spectrum`; pass the sweep's to reuse its cache).
      vector: the eigenvector index to track (``None``: spectra and cliffs only).
      progress: ``progress(done, total, message)`` after each checkpoint.

    Raises ``ValueError`` for a bad group, reduction, top or vector index.
    """
    reduction, top, vector = _request(run, group, reduction, top, vector)
    cache = cache or default_cache()
    epochs = run.epochs
    if not epochs:
        raise ValueError(f"{run.name}: the run has no checkpoints yet")
    key = epoch_frames_key(run, group=group, reduction=reduction, top=top, vector=vector)

    def compute():
        E = len(epochs)
        eig = np.full((E, top), np.nan, dtype=np.float32)
        starts = np.full((E, MAX_CLIFFS), -1, dtype=np.int64)
        sizes = np.full((E, MAX_CLIFFS), -1, dtype=np.int64)
        labels: list[list[str]] = []
        vecs, prev = None, None
        for i, e in enumerate(epochs):
            res = analysis.spectrum(run, e, group=group, reduction=reduction, top=top, cache=cache)
            ev = np.asarray(res.eigenvalues, dtype=np.float64)
            eig[i, :ev.size] = ev
            cl = list(zip(res.cliffs, res.labels))[:MAX_CLIFFS]
            for m, (c, _) in enumerate(cl):
                starts[i, m], sizes[i, m] = c.start, c.size
            labels.append([lab for _, lab in cl])
            if vector is not None:
                V = res.eigenvectors
                v = np.asarray(V[:, vector], dtype=np.float64) if V is not None and vector < V.shape[1] else None
                if vecs is None:
                    vecs = np.full((E, V.shape[0]), np.nan, dtype=np.float32)
                if v is not None:
                    ref = prev if prev is not None else np.sign(v[np.argmax(np.abs(v))]) * np.abs(v)
                    if float(v @ ref) < 0:
                        v = -v
                    vecs[i] = v
                    prev = v
            if progress:
                progress(i + 1, E, f"epoch {e}")
        arrays = {"epochs": np.asarray(epochs, dtype=np.int64), "eigenvalues": eig, "cliff_start": starts,
                  "cliff_size": sizes}
        if vecs is not None:
            arrays["vectors"] = vecs
        return arrays, {"labels": labels}

    entry = cache.get_or_compute(key, compute)
    starts, sizes, labels = entry["cliff_start"], entry["cliff_size"], entry.meta["labels"]
    cliffs = [[(int(s), int(s + n - 1), str(lab)) for s, n, lab in zip(starts[i], sizes[i], labels[i]) if n > 0]
              for i in range(len(labels))]
    vecs = entry["vectors"] if "vectors" in entry else None
    n = int(vecs.shape[1]) if vecs is not None else analysis.kernel_size(run, reduction)
    return EpochFrames(epochs=np.asarray(entry["epochs"]), eigenvalues=np.asarray(entry["eigenvalues"]), cliffs=cliffs,
                       vector=vector, vectors=None if vecs is None else np.asarray(vecs),
                       meta={"group": group, "reduction": reduction, "top": top, "n": n,
                             "cache": entry.meta.get("cache")})


def training_sweep(run: Run, group: str = FULL, reduction: str | None = None, *, cache: ArrayCache | None = None,
                   progress: Progress | None = None):
    """:func:`entk_core.workflows.sweep.sweep` with the family's spec for ``group`` and
    ``reduction`` (default: the family's), JSON-able arguments only (a Job target)."""
    from .sweep import default_spec, sweep

    return sweep(run, default_spec(run, group, reduction=reduction), cache=cache, progress=progress)


def tracked_vector(run: Run, group: str = FULL, reduction: str | None = None, top: int | None = None, *,
                   cache: ArrayCache | None = None) -> int | None:
    """The eigenvector an animation of ``run`` tracks unless told otherwise: the first of the
    last checkpoint's first cliff that is not the constant mode (0 when there is none), from
    that checkpoint's spectrum (:func:`entk_core.workflows.analysis.spectrum`, cached);
    ``None`` where the family's eigenvector view is not a picture (:data:`PICTURE_VIEWS`)."""
    if run.family.eigenvector_view(run.config) not in PICTURE_VIEWS:
        return None
    res = analysis.spectrum(run, run.epochs[-1], group=group, reduction=reduction, top=top,
                            cache=cache if cache is not None else default_cache())
    return next((c.start for c, lab in zip(res.cliffs, res.labels) if lab != CONSTANT_LABEL), 0)


def training_frames(run: Run, group: str = FULL, reduction: str | None = None, *, cache: ArrayCache | None = None,
                    progress: Progress | None = None) -> EpochFrames:
    """:func:`epoch_frames` with the family's sweep spec for ``group`` and ``reduction`` and the
    eigenvector :func:`tracked_vector` picks: the Training dynamics page's animation, cached
    under :func:`epoch_frames`'s own key (a Job target)."""
    from .sweep import default_spec, resolve_spec

    spec = resolve_spec(default_spec(run, group, reduction=reduction), run)
    vec = tracked_vector(run, spec.group, spec.reduction, spec.top, cache=cache)
    return epoch_frames(run, spec.group, spec.reduction, spec.top, vec, cache=cache, progress=progress)


READ_SPECTRUM_S = 0.01
"""Seconds to read one cached spectrum back and take its frame (measured in a page's worker:
0.3-0.5 s for the 51 checkpoints of the demo run)."""


def training_frames_seconds(run: Run) -> float:
    """Seconds :func:`training_frames` takes after the sweep of the same spec (the Training
    dynamics page's phase before it), which caches every spectrum it reads."""
    return READ_SPECTRUM_S * len(run.epochs)


def epoch_frames_seconds(run: Run, group: str = FULL, reduction: str | None = None, top: int | None = None,
                         vector: int | None = None) -> float | None:
    """Seconds :func:`epoch_frames` would take now: 0 when cached; else, per checkpoint, reading
    its cached spectrum back (:data:`READ_SPECTRUM_S`), or the eigendecomposition of its cached
    kernel (after :func:`entk_core.workflows.dynamics.dynamics`), or the planner's estimate of
    the whole spectrum. ``None`` for an invalid request (refused at once)."""
    from .estimates import spectrum_seconds

    try:
        key = epoch_frames_key(run, group=group, reduction=reduction, top=top, vector=vector)
        reduction, top, _ = _request(run, group, reduction, top, vector)
    except ValueError:
        return None
    cache = default_cache()
    if key in cache:
        return 0.0
    n = analysis.kernel_size(run, reduction)
    total, one = 0.0, None
    for e in run.epochs:
        if analysis.spectrum_key(run, e, group=group, reduction=reduction, top=top) in cache:
            total += READ_SPECTRUM_S
        elif analysis.kernel_cached(run, e, group=group, reduction=reduction, cache=cache):
            total += 0.05 + 2e-9 * n ** 3 / 8  # a dense eigh, as the planner counts it
        else:
            one = spectrum_seconds(run, e, group=group, reduction=reduction, top=top) if one is None else one
            if one is None:
                return None
            total += one
    return total
