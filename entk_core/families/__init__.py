"""Built-in model families. Importing this package registers them.

To add a family, write a module here that defines a :class:`entk_core.families.base.ModelFamily`
subclass decorated with :func:`entk_core.families.base.register`, and import it below.
"""
from . import modadd_mlp  # noqa: F401
from . import modadd_transformer  # noqa: F401
from . import tms  # noqa: F401
from . import causal_lm  # noqa: F401
