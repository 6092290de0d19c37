"""Model families and their registry.

A family is a :class:`~entk_core.families.base.ModelFamily` subclass found through the
``entk_core.families`` entry-point group; the built-in ones (``modadd-mlp``, ``tms``,
``modadd-transformer``, ``causal-lm``) are declared in the project's ``pyproject.toml`` like
any plug-in's and found through the installed distribution's metadata (see
:mod:`entk_core.families.base` for the lookup rules). Nothing is imported
here eagerly: a family's package is imported when it is first asked for.

The registry functions are re-exported here; :mod:`entk_core.families.run` opens runs
with their family.
"""
from .base import (ENTRY_POINT_GROUP, family_errors, family_origin, family_ref, get_family, list_families,
                   load_family_ref, refresh_families, register, unregister)

__all__ = ["ENTRY_POINT_GROUP", "family_errors", "family_origin", "family_ref", "get_family", "list_families",
           "load_family_ref", "refresh_families", "register", "unregister"]
