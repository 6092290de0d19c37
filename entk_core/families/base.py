"""Model families: the plug-in point of eNTK Explorer.

A *model family* bundles everything the rest of the library needs to know about one
kind of model: its ``nn.Module``, its data, its training defaults, how its eNTK is
usually reduced, and the ground-truth feature families to align against. Adding a
family means writing one module in :mod:`entk_core.families` that subclasses
:class:`ModelFamily` and calls :func:`register`; nothing else changes.

Conventions
-----------
* A model maps a batch of inputs ``(N, ...)`` to outputs ``(N, C)``. Examples never
  interact (no batch norm), so the eNTK is well defined per pair of inputs.
* Layer groups are named by :func:`entk_core.engine.kernels.param_group`: the dotted path of
  the module that owns a parameter (``net.0.weight`` -> ``net.0``); a parameter owned
  by the root module keeps its own name (``W``). A family may declare *derived* groups
  (sums of groups, e.g. ``attn.OV`` = ``attn.W_O`` + ``attn.W_V``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import numpy as np
import torch
from torch import nn

__all__ = [
    "Dataset",
    "FeatureFamily",
    "ModelFamily",
    "register",
    "get_family",
    "list_families",
]


@dataclass
class Dataset:
    """All data of a run, built deterministically from the run's config.

    Attributes:
      x: every input, shape ``(N, ...)`` (float one-hots, token ids, feature vectors).
      y: targets, shape ``(N,)`` (class ids) or ``(N, C)`` (regression targets).
      train_idx, test_idx: ``int64`` index tensors into ``x`` (disjoint).
      kernel_idx: indices of the inputs on which the eNTK is evaluated, in the order
        that defines the kernel's rows (for modular arithmetic all ``p**2`` pairs in
        row order ``a*p + b``; for TMS the training set).
      meta: small JSON-able facts (``p``, ``n_features``...).
    """

    x: torch.Tensor
    y: torch.Tensor
    train_idx: torch.Tensor
    test_idx: torch.Tensor
    kernel_idx: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kernel_x(self) -> torch.Tensor:
        """The eNTK inputs ``x[kernel_idx]``."""
        return self.x[self.kernel_idx]


@dataclass(frozen=True)
class FeatureFamily:
    """A ground-truth feature family evaluated on the kernel inputs.

    ``bank`` has shape ``(N, K, 2)`` for Fourier-type families (K frequencies, cos and
    sin) or ``(N, K)`` for plain families (K feature vectors). ``N`` matches the rows of
    the eNTK the family is compared with. For flattened (class-major) kernels the
    vectors have length ``N * C``.
    """

    name: str
    bank: np.ndarray
    description: str = ""
    labels: tuple[str, ...] = ()

    @property
    def matrix(self) -> np.ndarray:
        """The family as an ``(N, D)`` matrix (``D = 2K`` for Fourier banks)."""
        b = self.bank
        return b.reshape(b.shape[0], -1) if b.ndim == 3 else b


class ModelFamily:
    """Base class of a model family. Subclasses set the class attributes and methods.

    Class attributes:
      name: the CLI/registry name, e.g. ``"modadd-mlp"``.
      title: a human title for the dashboard.
      Config: a dataclass of hyperparameters, every field with a default. Must contain
        ``seed``, ``epochs`` and ``checkpoint_every``.
      default_reduction: the eNTK reduction the paper uses for this family.
      default_top: how many eigenpairs are shown by default.
      derived_groups: extra layer groups, each the sum of listed base groups.
      train_threads: torch threads during training (None: unchanged).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    Config: ClassVar[type] = object
    default_reduction: ClassVar[str] = "trace"
    default_top: ClassVar[int] = 200
    derived_groups: ClassVar[dict[str, tuple[str, ...]]] = {}
    train_threads: ClassVar[int | None] = None
    """torch threads while training (``None``: leave as is). Tiny models train faster on one."""
    description: ClassVar[str] = ""
    """A few sentences for newcomers: what the model is and what its eNTK shows."""
    has_accuracy: ClassVar[bool] = True
    """Whether :meth:`accuracy` is meaningful (``False`` for regression-style families such as TMS)."""

    # ------------------------------------------------------------------ config
    def config_from_dict(self, d: dict[str, Any]) -> Any:
        """Build a Config, rejecting unknown keys and coercing types of known ones."""
        fields = {f.name: f for f in dataclasses.fields(self.Config)}
        unknown = set(d) - set(fields)
        if unknown:
            raise ValueError(f"unknown {self.name} config keys: {sorted(unknown)}")
        kwargs = {}
        for k, v in d.items():
            default = getattr(self.Config(), k)
            kwargs[k] = type(default)(v) if default is not None and not isinstance(v, type(default)) else v
        return self.Config(**kwargs)

    # ------------------------------------------------------------ to implement
    def build_model(self, cfg: Any) -> nn.Module:
        """The freshly initialised model; initialisation is seeded from ``cfg.seed``."""
        raise NotImplementedError

    def make_data(self, cfg: Any) -> Dataset:
        """The run's deterministic dataset."""
        raise NotImplementedError

    def make_optimizer(self, model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
        raise NotImplementedError

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar training loss of outputs ``(B, C)`` against targets."""
        raise NotImplementedError

    def accuracy(self, out: torch.Tensor, y: torch.Tensor) -> float | None:
        """Fraction correct, or ``None`` where accuracy has no meaning (TMS)."""
        return None

    def batches(self, data: Dataset, cfg: Any, epoch: int) -> Iterator[torch.Tensor]:
        """Index batches (into ``data.x``) for one epoch; default: the full train set."""
        yield data.train_idx

    # ---------------------------------------------------------------- optional
    def summary(self, model: nn.Module, cfg: Any, data: Dataset) -> dict[str, Any]:
        """Family-specific facts for ``info`` (e.g. ``represented_features``)."""
        return {}

    def feature_families(self, cfg: Any, data: Dataset, model: nn.Module | None = None) -> dict[str, FeatureFamily]:
        """Ground-truth feature families over the kernel inputs."""
        return {}

    def class_weights(self, cfg: Any, beta: float) -> torch.Tensor | None:
        """Per-class Jacobian row weights for importance rescaling (``None``: none)."""
        return None

    def align_report(self, run: Any, epoch: int, **options: Any) -> dict[str, Any]:
        """JSON-able alignment report for ``python -m entk_core align`` (family specific).

        ``options`` come from the CLI: ``group`` (str or None), ``beta`` (float or None),
        ``cache`` (an :class:`~entk_core.store.cache.ArrayCache` or None) and ``progress``.
        """
        raise ValueError(f"the align command is not available for the {self.name} family yet")

    # ------------------------------------------------ what the family offers
    def sweep_spec(self, cfg: Any, group: str) -> Any:
        """What the per-checkpoint (grokking) sweep measures for ``group``: a
        :class:`entk_core.workflows.sweep.SweepSpec`, or ``None`` for the generic defaults."""
        return None

    def group_labels(self, cfg: Any) -> dict[str, str]:
        """Human names of layer groups, shown beside the module path
        (``{"net.0": "W1, input → hidden"}``); groups not listed show their path only."""
        return {}

    def eigenvector_view(self, cfg: Any) -> str:
        """How the dashboard draws one eigenvector of this family's default kernel:

        * ``"grid"`` -- rows are the ``p²`` pairs ``(a, b)`` (row ``a*p + b``): a ``p × p``
          image and its 2-D Fourier power;
        * ``"features"`` -- a vector over the family's features, importance-ordered (rows of
          a class-major flattened kernel are folded per feature);
        * ``"contexts"`` -- rows are text contexts: the most positive and most negative ones;
        * ``"vector"`` -- a plain line plot over the kernel rows (the default).
        """
        return "vector"

    def hidden_activations(self, model: nn.Module, x: Any) -> torch.Tensor | None:
        """Hidden activations ``(N, d)`` of ``model`` on the kernel inputs ``x``, for the PCA
        baseline of the alignment measures (``None``: no PCA baseline for this family)."""
        return None

    def offers(self, what: str) -> bool:
        """Whether this family supports a view or command, so pages and the CLI can say
        "not available for this family" instead of drawing an empty chart. ``what``:

        * ``"train"`` -- models are trained here (``build_model``/``make_optimizer``);
        * ``"accuracy"`` -- :meth:`accuracy` is meaningful (classification);
        * ``"grokking"`` -- the per-checkpoint overlap sweep with accuracy (needs accuracy);
        * ``"align"`` -- :meth:`align_report` is implemented;
        * ``"beta"`` -- :meth:`class_weights` (importance rescaling) is implemented;
        * ``"pca"`` -- :meth:`hidden_activations` is implemented (PCA baseline).
        """
        cls = type(self)
        if what == "train":
            return cls.build_model is not ModelFamily.build_model
        if what == "accuracy":
            return self.has_accuracy
        if what == "grokking":
            return self.has_accuracy and cls.build_model is not ModelFamily.build_model
        if what == "align":
            return cls.align_report is not ModelFamily.align_report
        if what == "beta":
            return cls.class_weights is not ModelFamily.class_weights
        if what == "pca":
            return cls.hidden_activations is not ModelFamily.hidden_activations
        raise ValueError(f"unknown capability {what!r}")

    def validate_state(self, cfg: Any, state: dict[str, torch.Tensor]) -> None:
        """Raise ``ValueError`` if a loaded state dict does not fit ``cfg``."""
        model = self.build_model(cfg)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        if missing or extra:
            raise ValueError(f"tensor names do not match the {self.name} model (missing {missing}, unexpected {extra})")
        for k, shape in expected.items():
            if got[k] != shape:
                raise ValueError(f"tensor '{k}' has shape {list(got[k])}, the run's config implies {list(shape)}")


_REGISTRY: dict[str, ModelFamily] = {}


def register(family_cls: type[ModelFamily]) -> type[ModelFamily]:
    """Class decorator: register a family under ``family_cls.name``."""
    if not family_cls.name:
        raise ValueError("a model family needs a name")
    _REGISTRY[family_cls.name] = family_cls()
    return family_cls


def _load_builtin() -> None:
    # Importing the package registers the built-in families.
    from .. import families  # noqa: F401


def get_family(name: str) -> ModelFamily:
    """The registered family called ``name`` (``ValueError`` listing the known ones)."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model family '{name}'; known: {', '.join(sorted(_REGISTRY))}") from None


def list_families() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (all randomness in the library goes through one)."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g

