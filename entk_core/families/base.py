"""Model families: the plug-in point of eNTK Explorer (the plug-in author's API).

A *model family* bundles everything the rest of the library needs to know about one
kind of model: its ``nn.Module``, its data, its training defaults, how its eNTK is
usually reduced, and the ground-truth feature families to align against. A family is a
:class:`ModelFamily` subclass; it is found through the ``entk_core.families``
entry-point group (:func:`get_family`), the one registration mechanism for the
built-in families (declared in the project's ``pyproject.toml``) and for families in
other installed packages (see ``examples/`` and ``docs/ARCHITECTURE.md``).

Conventions
-----------
* A model maps a batch of inputs ``(N, ...)`` to outputs ``(N, C)``. Examples never
  interact (no batch norm), so the eNTK is well defined per pair of inputs.
* Layer groups are named by :func:`entk_core.engine.kernels.param_group`: the dotted path of
  the module that owns a parameter (``net.0.weight`` -> ``net.0``); a parameter owned
  by the root module keeps its own name (``W``). :data:`FULL` (``"full"``) is the group of
  all parameters. A family may declare *derived* groups (sums of groups, e.g.
  ``attn.OV`` = ``attn.W_O`` + ``attn.W_V``).
* A family's analysis code (``align_report``, extras a page calls) receives the
  workflow layer's cached operations as an :class:`AnalysisServices` object
  (dependency injection), so family packages import only the engine, the store and this
  layer.

Entry points
------------
The group is :data:`ENTRY_POINT_GROUP`; each entry point's name is the family name and
its value ``module:Class`` names a :class:`ModelFamily` subclass whose ``name`` equals
it. Families are found only through the installed distributions' entry-point metadata
(:func:`importlib.metadata.distributions`): the built-ins through this project's own
distribution, ``entk-explorer`` (installed by ``requirements.txt`` with ``-e .``, and by
the Dockerfile), plug-ins through theirs. Nothing reads a ``pyproject.toml``: after
editing the entry points of an editable install, reinstall it (``pip install -e .``).
:func:`register` adds a family class at run time (tests, notebooks); such a family
reaches the sweep's worker processes when its class can be imported by module path (not
from ``__main__``).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Protocol

import numpy as np
import torch
from torch import nn

from .family_page import FamilyPage

from ..engine.machine import available_memory
from ..engine.units import format_bytes
from .schema import check_config, size_fields

__all__ = [
    "FULL",
    "BETA_RANGE",
    "ENTRY_POINT_GROUP",
    "AnalysisServices",
    "Dataset",
    "FamilyPage",
    "FeatureFamily",
    "ModelFamily",
    "SweepSpec",
    "check_beta",
    "family_errors",
    "family_origin",
    "family_ref",
    "get_family",
    "list_families",
    "load_family_ref",
    "refresh_families",
    "register",
    "seeded",
    "unregister",
]

FULL = "full"
"""The layer-group name of the whole model (all parameters)."""

BETA_RANGE = (0.0, 10.0)
"""Allowed importance-rescaling exponents β (:meth:`ModelFamily.class_weights`)."""

ENTRY_POINT_GROUP = "entk_core.families"
"""The entry-point group under which packages register model families."""

Progress = Callable[[int, int, str], None]


def check_beta(beta: float) -> float:
    """``beta`` as a float, or ``ValueError`` unless it lies in :data:`BETA_RANGE`."""
    b = float(beta)
    lo, hi = BETA_RANGE
    if not lo <= b <= hi:
        raise ValueError(f"beta must lie in [{lo:g}, {hi:g}], got {beta}")
    return b


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
    vectors have length ``N * C``. The measures of :mod:`entk_core.engine.measures` accept
    it wherever they take a family (they read ``bank`` / ``matrix``).
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


@dataclass(frozen=True)
class SweepSpec:
    """What the per-checkpoint (grokking) sweep measures; every field has a default
    (see :mod:`entk_core.workflows.sweep`). Returned by :meth:`ModelFamily.sweep_spec`.

    Attributes:
      group: layer group of the swept kernel (:data:`FULL` = all parameters).
      reduction: kernel reduction (default: the family's).
      top: eigenpairs per epoch (default: the family's ``default_top``).
      families: names of the feature families to measure (default: every family with
        rows matching the kernel).
      window_group: group whose spectrum defines the tracked windows (default: ``group``).
        E.g. the MLP's per-layer sweeps track the full kernel's cliffs inside each
        layer's kernel, as the paper's layerwise table does.
      reference_epoch: checkpoint where the windows are detected (default: the last).
      windows: explicit ``((start, end), ...)`` index ranges (inclusive) instead of detection.
      primary: family whose overlap derivative defines ``peak_epoch``.
      max_cliffs: at most this many of each epoch's own detected cliffs are recorded.
      min_ratio: the cliff rule's minimum drop ``λ_end/λ_end+1`` for windows and own cliffs
        (:func:`entk_core.engine.spectra.detect_cliffs`; default ``None``: the rule's own, 1.1).
    """

    group: str = FULL
    reduction: str | None = None
    top: int | None = None
    families: tuple[str, ...] | None = None
    window_group: str | None = None
    reference_epoch: int | None = None
    windows: tuple[tuple[int, int], ...] | None = None
    primary: str | None = None
    max_cliffs: int = 4
    min_ratio: float | None = None


class AnalysisServices(Protocol):
    """The workflow layer's cached operations, handed to a family's analysis code.

    Implemented by :class:`entk_core.workflows.analysis.Services` (``services()`` gives the
    default one, on the default cache). Family packages never import the workflow layer:
    a hook or helper that needs a spectrum takes ``services`` as an argument. ``run`` is
    an :class:`entk_core.families.run.Run`.
    """

    cache: Any
    """The :class:`entk_core.store.cache.ArrayCache` the services read and write."""

    def spectrum(self, run: Any, epoch: int | None = None, *, group: str = FULL, reduction: str | None = None,
                 top: int | None = None, beta: float | None = None, model: nn.Module | None = None,
                 progress: Progress | None = None) -> Any:
        """Cached top-``top`` eigenpairs with cliffs: a
        :class:`entk_core.workflows.analysis.SpectrumResult` (``eigenvalues (k,)``,
        ``eigenvectors (n, k)``, ``cliffs``, ``meta``)."""
        ...

    def kernel_matrix(self, run: Any, epoch: int | None = None, *, group: str = FULL,
                      reduction: str | None = None, beta: float | None = None,
                      model: nn.Module | None = None, progress: Progress | None = None) -> np.ndarray:
        """The cached reduced ``(N, N)`` kernel (``"trace"`` or ``"mean"``)."""
        ...

    def sweep(self, run: Any, spec: SweepSpec | None = None, *, progress: Progress | None = None) -> Any:
        """The cached per-checkpoint sweep: a :class:`entk_core.workflows.sweep.SweepResult`."""
        ...


class ModelFamily:
    """Base class of a model family. Subclasses set the class attributes and methods.

    Required: ``name``, ``Config``, :meth:`build_model`, :meth:`make_data`,
    :meth:`make_optimizer` (for training) and :meth:`loss`. Every other hook has a default
    and is optional; callers ask :meth:`offers` whether a hook is implemented instead of
    probing attributes.

    Class attributes:
      name: the CLI/registry name, e.g. ``"modadd-mlp"`` (the entry point's name).
      title: a human title for the dashboard.
      Config: a dataclass of hyperparameters, every field with a default. Must contain
        ``seed``, ``epochs`` and ``checkpoint_every``.
      default_reduction: the eNTK reduction the paper uses for this family
        (``"trace"``, ``"mean"`` or ``"flat"``).
      default_top: how many eigenpairs are shown by default.
      derived_groups: extra layer groups, each the sum of listed base groups.
      default_align_group: the layer group ``align`` reads by default (``None``: :data:`FULL`).
      train_threads: torch threads during training (``None``: unchanged).
      description: a few sentences for newcomers.
      has_accuracy: whether :meth:`accuracy` is meaningful.
      view_families, control_families, rotation_help: what the alignment views show
        (see each attribute).
      pages: the family's own dashboard pages (:class:`FamilyPage`).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    Config: ClassVar[type] = object
    default_reduction: ClassVar[str] = "trace"
    default_top: ClassVar[int] = 200
    derived_groups: ClassVar[dict[str, tuple[str, ...]]] = {}
    default_align_group: ClassVar[str | None] = None
    """The layer group :meth:`align_report` reads when the caller names none (``None``: :data:`FULL`)."""
    train_threads: ClassVar[int | None] = None
    """torch threads while training (``None``: leave as is). Tiny models train faster on one."""
    description: ClassVar[str] = ""
    """A few sentences for newcomers: what the model is and what its eNTK shows."""
    has_accuracy: ClassVar[bool] = True
    """Whether :meth:`accuracy` is meaningful (``False`` for regression-style families such as TMS)."""
    view_families: ClassVar[tuple[str, ...] | None] = None
    """The feature families the alignment views show and measure, in this order (``None``: every
    family of :meth:`feature_families` whose rows match the kernel). The MLP leaves out its
    digit families, which span the same centred subspaces as its Fourier ones."""
    control_families: ClassVar[tuple[str, ...]] = ("random",)
    """Families that are controls, not features (a random subspace): measured beside the others,
    never selected by default, never reported as a direction's best feature match."""
    rotation_help: ClassVar[str] = ""
    """What :meth:`cliff_rotation` does, in a sentence (the help of the pages' rotation control)."""
    pages: ClassVar[tuple[FamilyPage, ...]] = ()
    """The family's own dashboard pages (:class:`FamilyPage`), in the menu after the generic
    ones (Spectrum, Grokking, Alignment) whichever run is selected."""

    # ------------------------------------------------------------------ config
    def config_from_dict(self, d: dict[str, Any]) -> Any:
        """Build a Config from a JSON object (a manifest's config, a config file, CLI options)
        and check it (:meth:`check_config`): unknown keys, wrong types, values out of their
        declared ranges (:mod:`entk_core.families.schema`) and configs whose model and data
        would not fit in memory are refused with one line naming the field (``ValueError``);
        missing keys keep their defaults."""
        return self.check_config(check_config(self.Config, d, family=self.name))

    def check_config(self, cfg: Any) -> Any:
        """``cfg`` if it is a valid config of this family, else ``ValueError`` (one line naming
        the field): every field's type and declared range, then :meth:`memory_estimate`
        against the memory available now. Called before any model or data is built from it
        (opening a run, ``train``, ``import``). Returns ``cfg``."""
        cfg = check_config(self.Config, cfg, family=self.name)
        need = self.memory_estimate(cfg)
        if need is not None:
            have = available_memory()
            if need > have:
                sizes = ", ".join(f"{k}={getattr(cfg, k)}" for k in size_fields(self.Config)) or "its config"
                raise ValueError(f"the {self.name} model and data for {sizes} need about {format_bytes(need)}, "
                                 f"more than the {format_bytes(have)} of memory available; choose smaller values")
        return cfg

    def memory_estimate(self, cfg: Any) -> int | None:
        """Bytes the model and the dataset of ``cfg`` take to build and train (parameters,
        gradients and optimizer state, the data, one full-batch forward pass), computed from
        the config alone, before anything is built (``None``: unknown, no check). The
        built-in families override it; a plug-in may."""
        return None

    # ------------------------------------------------------------ to implement
    def build_model(self, cfg: Any) -> nn.Module:
        """The freshly initialised model; initialisation is seeded from ``cfg.seed``."""
        raise NotImplementedError

    def make_data(self, cfg: Any) -> Dataset:
        """The run's deterministic dataset."""
        raise NotImplementedError

    def make_optimizer(self, model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
        """The optimizer over ``model.parameters()`` (training only)."""
        raise NotImplementedError

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scalar training loss of outputs ``(B, C)`` against targets."""
        raise NotImplementedError

    def accuracy(self, out: torch.Tensor, y: torch.Tensor) -> float | None:
        """Fraction correct, or ``None`` where accuracy has no meaning (TMS)."""
        return None

    def targets(self, cfg: Any, data: Dataset, n_outputs: int) -> torch.Tensor | None:
        """What the model's ``n_outputs`` outputs are fitted to, one row per input of
        ``data.x``: ``(N, n_outputs)`` float targets, or ``None`` when the family has none (the
        kernel-target alignment and kernel regression of ``dynamics`` are then omitted, with
        the reason). Default: one-hot rows for integer class labels ``y (N,)``; ``y`` itself
        for float targets of shape ``(N, n_outputs)``; otherwise ``None``."""
        y = data.y
        if y.ndim == 1 and not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool:
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_outputs):
                return None
            return torch.nn.functional.one_hot(y.long(), n_outputs).to(torch.float64)
        if y.is_floating_point() and tuple(y.shape) == (len(data.x), n_outputs):
            return y.to(torch.float64)
        return None

    def batches(self, data: Dataset, cfg: Any, epoch: int) -> Iterator[torch.Tensor]:
        """Index batches (into ``data.x``) for one epoch; default: the full train set.
        Must be a pure function of ``(data, cfg, epoch)`` so that resume is exact."""
        yield data.train_idx

    # ---------------------------------------------------------------- optional
    def summary(self, model: nn.Module, cfg: Any, data: Dataset) -> dict[str, Any]:
        """Family-specific JSON-able facts of a trained model for ``info`` (e.g.
        ``represented_features``), stored in the manifest when training ends."""
        return {}

    def feature_families(self, cfg: Any, data: Dataset, model: nn.Module | None = None) -> dict[str, FeatureFamily]:
        """Ground-truth feature families over the kernel inputs (name -> family). ``model``
        is the checkpoint's model, for families that depend on it (key frequencies)."""
        return {}

    def class_weights(self, cfg: Any, beta: float) -> torch.Tensor | None:
        """Per-class Jacobian row weights ``(C,)`` for importance rescaling by ``beta``
        (in :data:`BETA_RANGE`); ``None``: none."""
        return None

    def align_report(self, run: Any, epoch: int, *, services: AnalysisServices, group: str | None = None,
                     beta: float | None = None, progress: Progress | None = None) -> dict[str, Any]:
        """JSON-able alignment report for ``python -m entk_core align`` (family specific).

        Args:
          run: the :class:`entk_core.families.run.Run`; ``epoch``: a checkpoint of it.
          services: the cached spectrum/kernel/sweep operations (:class:`AnalysisServices`).
          group: layer group (``None``: :attr:`default_align_group`).
          beta: importance rescaling (families that offer ``"beta"``; else must be ``None``).
          progress: ``progress(done, total, message)``.

        Every cliff or block in the report carries a ``label`` as
        :func:`entk_core.engine.spectra.label_cliffs` gives it.
        """
        raise ValueError(f"the align command is not available for the {self.name} family")

    def cliff_rotation(self, cfg: Any, block: np.ndarray, overlaps: dict[str, float]) -> tuple[np.ndarray, str] | None:
        """Rotate the directions of one spectral window inside their span so that each is a
        single feature where it can be (the alignment views' rotation control).

        Args:
          block: ``(N, k)`` orthonormal directions (``k >= 2``) over the kernel rows.
          overlaps: the window's subspace overlap with each view family (name -> overlap),
            e.g. to choose which rotation applies.

        Returns ``(rotated (N, k), name of the rotation)``, or ``None`` when no rotation
        applies to this window. The span (and so every overlap) must not change.
        """
        return None

    # ------------------------------------------------ what the family offers
    def sweep_spec(self, cfg: Any, group: str) -> SweepSpec | None:
        """What the per-checkpoint (grokking) sweep measures for ``group``: a
        :class:`SweepSpec`, or ``None`` for the generic defaults."""
        return None

    def group_labels(self, cfg: Any) -> dict[str, str]:
        """Human names of layer groups, shown beside the module path
        (``{"net.0": "W1, input → hidden"}``); groups not listed show their path only."""
        return {}

    def eigenvector_view(self, cfg: Any) -> str:
        """How the dashboard draws one eigenvector of this family's default kernel:

        * ``"grid"`` -- rows are the ``p²`` pairs ``(a, b)`` (row ``a*p + b``; ``p`` is the
          square root of the number of rows): a ``p × p`` image and its 2-D Fourier power;
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

    CAPABILITIES: ClassVar[tuple[str, ...]] = ("train", "import", "accuracy", "grokking", "sweep", "align",
                                               "beta", "pca", "rotation")

    def offers(self, what: str) -> bool:
        """Whether this family supports a view or command, so pages and the CLI can say
        "not available for this family" instead of drawing an empty chart. ``what``:

        * ``"train"`` -- models are trained here (``build_model`` and ``make_optimizer``);
        * ``"import"`` -- checkpoints trained elsewhere can be imported (``build_model``);
        * ``"accuracy"`` -- :meth:`accuracy` is meaningful (classification);
        * ``"grokking"`` -- the per-checkpoint overlap sweep with accuracy (needs accuracy);
        * ``"sweep"`` -- the per-checkpoint sweep: spectra and cliffs at every checkpoint, and
          overlaps with :meth:`feature_families` where the family declares some;
        * ``"align"`` -- :meth:`align_report` is implemented;
        * ``"beta"`` -- :meth:`class_weights` (importance rescaling) is implemented;
        * ``"pca"`` -- :meth:`hidden_activations` is implemented (PCA baseline);
        * ``"rotation"`` -- :meth:`cliff_rotation` is implemented (rotation inside a window).
        """
        cls = type(self)
        implemented = lambda hook: getattr(cls, hook) is not getattr(ModelFamily, hook)  # noqa: E731
        if what == "train":
            return implemented("build_model") and implemented("make_optimizer")
        if what == "import":
            return implemented("build_model")
        if what == "accuracy":
            return self.has_accuracy
        if what == "grokking":
            return self.has_accuracy and implemented("build_model") and implemented("feature_families")
        if what == "sweep":
            return implemented("build_model")
        if what == "align":
            return implemented("align_report")
        if what == "beta":
            return implemented("class_weights")
        if what == "pca":
            return implemented("hidden_activations")
        if what == "rotation":
            return implemented("cliff_rotation")
        raise ValueError(f"unknown capability {what!r}; known: {', '.join(self.CAPABILITIES)}")

    def validate_state(self, cfg: Any, state: dict[str, torch.Tensor]) -> None:
        """Raise ``ValueError`` if a loaded state dict does not fit ``cfg``'s model (tensor
        names, shapes and dtypes: a floating-point parameter needs floating-point values, not
        bool or integers; finiteness is checked when the checkpoint is read)."""
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
        for k, want in model.state_dict().items():
            if want.is_floating_point() and not state[k].is_floating_point():
                raise ValueError(f"tensor '{k}' has dtype {str(state[k].dtype).removeprefix('torch.')}, the model "
                                 f"needs floating-point values ({str(want.dtype).removeprefix('torch.')})")


# ------------------------------------------------------------------ registry
_lock = threading.RLock()
_REGISTRY: dict[str, ModelFamily] = {}
_ORIGIN: dict[str, str] = {}
_ERRORS: dict[str, str] = {}
_TABLE: dict[str, tuple[str, str]] | None = None  # name -> (module:Class, where declared)


def _entry_point_table() -> dict[str, tuple[str, str]]:
    """``name -> (value, origin)`` of every family declared in the :data:`ENTRY_POINT_GROUP`
    entry points of the installed distributions (cached per process)."""
    global _TABLE
    with _lock:
        if _TABLE is not None:
            return _TABLE
        table: dict[str, tuple[str, str]] = {}
        seen: set[tuple[str, str]] = set()
        for dist in importlib.metadata.distributions():
            dname = dist.metadata["Name"] or "?"
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP:
                    continue
                name, value = ep.name, ep.value.replace(" ", "")
                if (name, value) in seen:  # one distribution seen twice on the path (a build folder, say)
                    continue
                seen.add((name, value))
                origin = f"{dname} {dist.version}"
                if name in table:
                    _ERRORS[name] = (f"family '{name}' is declared twice: {table[name][0]} ({table[name][1]}) and "
                                     f"{value} ({origin}); uninstall one of them")
                    continue
                table[name] = (value, origin)
        _TABLE = table
        return table


def refresh_families() -> None:
    """Forget the discovered entry points (after installing a package at run time).
    Families already loaded stay registered."""
    global _TABLE
    with _lock:
        _TABLE = None
        for name in [n for n in _ERRORS if n not in _REGISTRY]:
            del _ERRORS[name]


def load_family_ref(ref: str, name: str | None = None, origin: str | None = None) -> ModelFamily:
    """Import ``module:Class`` (a :class:`ModelFamily` subclass), register it and return the
    family. ``name``: the name it must have (an entry point's). ``ValueError`` (one line) if
    it cannot be imported or is not a family."""
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise ValueError(f"'{ref}' is not of the form module:Class")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as e:  # noqa: BLE001 - a plug-in's import may fail in any way
        msg = str(e).strip().splitlines()
        raise ValueError(f"cannot import {ref}: {e.__class__.__name__}: {msg[0] if msg else ''}".rstrip(": ")) from None
    if not (isinstance(obj, type) and issubclass(obj, ModelFamily)):
        raise ValueError(f"{ref} is not a ModelFamily subclass")
    if name is not None and obj.name != name:
        raise ValueError(f"{ref} is called '{obj.name}', but its entry point is named '{name}'")
    with _lock:
        current = _REGISTRY.get(obj.name)
        if current is not None and type(current) is obj:
            return current
        return _register(obj, origin or f"{ref}")


def _register(cls: type[ModelFamily], origin: str) -> ModelFamily:
    if not cls.name:
        raise ValueError(f"model family class {cls.__qualname__} has no name")
    fam = cls()
    _REGISTRY[cls.name] = fam
    _ORIGIN[cls.name] = origin
    _ERRORS.pop(cls.name, None)
    return fam


def register(family_cls: type[ModelFamily]) -> type[ModelFamily]:
    """Register a family class at run time (class decorator). Installed packages use the
    ``entk_core.families`` entry-point group instead; this is for tests and notebooks.
    ``ValueError`` if the name belongs to another class from an entry point."""
    if not (isinstance(family_cls, type) and issubclass(family_cls, ModelFamily)):
        raise ValueError(f"{family_cls!r} is not a ModelFamily subclass")
    with _lock:
        current = _REGISTRY.get(family_cls.name)
        if current is not None and type(current) is family_cls:
            return family_cls
        declared = _entry_point_table().get(family_cls.name)
        if declared is not None and declared[0] != f"{family_cls.__module__}:{family_cls.__qualname__}":
            raise ValueError(f"model family '{family_cls.name}' is already declared by {declared[0]} ({declared[1]})")
        _register(family_cls, "registered at run time")
    return family_cls


def unregister(name: str) -> None:
    """Remove a family registered with :func:`register` (entry-point families reload on demand)."""
    with _lock:
        _REGISTRY.pop(name, None)
        _ORIGIN.pop(name, None)


def get_family(name: str) -> ModelFamily:
    """The family called ``name``: registered, or loaded from its entry point on first use.
    ``ValueError`` (one line) for an unknown name (listing the known ones) or a family whose
    entry point cannot be loaded (saying why)."""
    with _lock:
        fam = _REGISTRY.get(name)
        if fam is not None:
            return fam
        table = _entry_point_table()
        if name in _ERRORS:
            raise ValueError(f"model family '{name}' cannot be loaded: {_ERRORS[name]}")
        if name not in table:
            known = sorted(set(table) | set(_REGISTRY))
            raise ValueError(f"unknown model family '{name}'; known: {', '.join(known) or 'none'}")
        value, origin = table[name]
        try:
            return load_family_ref(value, name=name, origin=origin)
        except ValueError as e:
            _ERRORS[name] = str(e)
            raise ValueError(f"model family '{name}' cannot be loaded: {e}") from None


def list_families() -> list[str]:
    """Names of every family that loads (entry points and run-time registrations), sorted.
    Families that fail to load are left out; :func:`family_errors` says why."""
    with _lock:
        for name in list(_entry_point_table()):
            try:
                get_family(name)
            except ValueError:
                pass
        return sorted(_REGISTRY)


def family_errors() -> dict[str, str]:
    """``name -> one-line reason`` for declared families that cannot be loaded."""
    with _lock:
        list_families()
        return dict(sorted(_ERRORS.items()))


def family_origin(name: str) -> str:
    """Where a loaded family was declared: its distribution and version (``"entk-explorer 0.1.0"``,
    ``"my-plugin 0.1"``) or ``"registered at run time"``."""
    get_family(name)
    return _ORIGIN.get(name, "?")


def family_ref(family: ModelFamily) -> str | None:
    """``module:Class`` of a family, importable by another process (``None`` for a class
    defined in ``__main__`` or inside a function, which a worker process cannot import)."""
    cls = type(family)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (all randomness in the library goes through one)."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g
