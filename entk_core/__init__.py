"""eNTK Explorer core library: empirical neural tangent kernels, their spectra, and
their alignment with ground-truth features. No Streamlit import anywhere in here.

The public API is re-exported below (``__all__``); everything else is internal. Shapes and
axis conventions are documented on each function and in docs/ARCHITECTURE.md:

* kernels: :func:`empirical_ntk`, :func:`empirical_ntk_by_layer` (with ``return_info=True``
  also a :class:`KernelInfo`), :func:`layer_groups`, :func:`param_group`;
* without forming the kernel: :func:`flat_jacobian`, :class:`KernelOperator`;
* spectra: :func:`top_eigenpairs` (the one top-k entry point: a kernel matrix, a factor
  ``J``, a model with its inputs, or an operator), :func:`detect_cliffs`,
  :func:`label_cliffs`, :class:`Cliff`;
* runs and families: :func:`train`, :func:`open_run`, :func:`list_runs`, :class:`Run`,
  :func:`get_family`, :func:`list_families`, :func:`register`.

A plug-in family needs only :class:`ModelFamily`, :class:`Dataset`, :class:`FeatureFamily`
(and :class:`SweepSpec` / :class:`AnalysisServices` for its optional hooks).
"""
from .engine.eigenpairs import top_eigenpairs
from .engine.info import KernelInfo, TrainModeWarning
from .engine.kernels import MemoryBudgetError, empirical_ntk, empirical_ntk_by_layer, layer_groups, param_group
from .engine.operators import KernelOperator, flat_jacobian
from .engine.spectra import Cliff, detect_cliffs, label_cliffs
from .families.base import (AnalysisServices, Dataset, FeatureFamily, ModelFamily, SweepSpec, get_family,
                            list_families, register)
from .families.run import Run, list_runs, open_run
from .store.runs import RunError
from .workflows.training import train

__all__ = [
    "AnalysisServices",
    "Cliff",
    "Dataset",
    "FeatureFamily",
    "KernelInfo",
    "KernelOperator",
    "MemoryBudgetError",
    "ModelFamily",
    "Run",
    "RunError",
    "SweepSpec",
    "TrainModeWarning",
    "detect_cliffs",
    "empirical_ntk",
    "empirical_ntk_by_layer",
    "flat_jacobian",
    "get_family",
    "label_cliffs",
    "layer_groups",
    "list_families",
    "list_runs",
    "open_run",
    "param_group",
    "register",
    "top_eigenpairs",
    "train",
]
__version__ = "0.1.0"
