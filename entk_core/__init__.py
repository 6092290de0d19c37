"""eNTK Explorer core library: empirical neural tangent kernels, their spectra, and
their alignment with ground-truth features. No Streamlit import anywhere in here.

The public API is re-exported below; everything else is internal. Shapes and axis
conventions are documented on each function and in docs/ARCHITECTURE.md.
"""
from .engine.kernels import MemoryBudgetError, empirical_ntk, empirical_ntk_by_layer, layer_groups, param_group
from .families.base import Dataset, FeatureFamily, ModelFamily, get_family, list_families, register
from .engine.operators import KernelOperator, flat_jacobian, flat_top_eigenpairs, gram_eigenpairs
from .store.runs import Run, RunError, open_run
from .engine.spectra import Cliff, detect_cliffs, top_eigenpairs
from .workflows.training import train

__all__ = [
    "Cliff",
    "Dataset",
    "FeatureFamily",
    "KernelOperator",
    "MemoryBudgetError",
    "ModelFamily",
    "Run",
    "RunError",
    "detect_cliffs",
    "empirical_ntk",
    "empirical_ntk_by_layer",
    "flat_jacobian",
    "flat_top_eigenpairs",
    "get_family",
    "gram_eigenpairs",
    "layer_groups",
    "list_families",
    "open_run",
    "param_group",
    "register",
    "top_eigenpairs",
    "train",
]
__version__ = "0.1.0"
