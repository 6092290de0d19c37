"""Plotly figures (no Streamlit): the last step of run → … → figure.

Each builder takes plain arrays/results and returns a ``plotly.graph_objects.Figure``
with a title, so the same figures serve the dashboard, notebooks, the ``export`` command
and tests. One module per topic:

* :mod:`.style` -- fixed colours per family, human metric names, log axes with exponent
  ticks, marker lines named in the legend (labels never overlap);
* :mod:`.spectra` -- spectra with named cliffs (the constant mode is a named block, the
  first block after it is *cliff 1*), comparison overlays, principal angles;
* :mod:`.vectors` -- one eigenvector in its family's form (grid image + Fourier power,
  per-feature bars, plain vector);
* :mod:`.heatmaps` -- the one heatmap builder (eigenvectors x features, directions x modes);
* :mod:`.training` -- accuracy and overlap curves over training, with baselines;
* :mod:`.bars` -- TMS feature norms, the Transformer's embedding Fourier power;
* :mod:`.export` -- PNG/SVG through kaleido, offline.
"""
from __future__ import annotations

from .bars import feature_norms_figure, key_frequency_figure
from .heatmaps import heatmap_figure
from .spectra import principal_angles_figure, spectrum_figure, stagger_rows
from .style import CLIFF_COLORS, FAMILY_COLORS, block_label, family_color, human_name, log_axis, marker_line
from .training import accuracy_figure, overlap_figure
from .vectors import eigenvector_figures, fold_per_class, grid_image

__all__ = [
    "spectrum_figure", "principal_angles_figure", "stagger_rows", "eigenvector_figures", "grid_image",
    "fold_per_class", "heatmap_figure", "accuracy_figure", "overlap_figure", "feature_norms_figure",
    "key_frequency_figure", "CLIFF_COLORS", "FAMILY_COLORS", "family_color", "human_name", "block_label",
    "log_axis", "marker_line",
]
