"""eNTK Explorer core library: empirical neural tangent kernels, their spectra, and
their alignment with ground-truth features. No Streamlit import anywhere in here.

Public API (everything else is internal):
"""
from .spectra import Cliff, detect_cliffs, top_eigenpairs
from .models import Dataset, FeatureFamily, ModelFamily, get_family, list_families, register

__all__ = [
    "Cliff",
    "Dataset",
    "FeatureFamily",
    "ModelFamily",
    "detect_cliffs",
    "get_family",
    "list_families",
    "register",
    "top_eigenpairs",
]
__version__ = "0.1.0"
