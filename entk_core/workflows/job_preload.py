"""What every job worker needs, imported once in the jobs' forkserver
(:mod:`entk_core.workflows.jobs`) so that a worker forked from it starts at once.

Nothing here runs a computation or starts a thread (a forked child of a process whose torch
or OpenMP had started threads could deadlock): imports only."""
import numpy  # noqa: F401
import threadpoolctl  # noqa: F401
import torch  # noqa: F401
import torch._dynamo  # noqa: F401  (torch loads it lazily on the first kernel request: ~1 s a job otherwise)

from ..families import base as _base  # noqa: F401
from ..families import run as _run  # noqa: F401
from . import alignment as _alignment  # noqa: F401
from . import analysis as _analysis  # noqa: F401
from . import sweep as _sweep  # noqa: F401
