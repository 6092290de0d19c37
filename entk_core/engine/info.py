"""What an eNTK call tells its caller: :class:`KernelInfo` and :class:`TrainModeWarning`.

``empirical_ntk(..., return_info=True)``, ``empirical_ntk_by_layer(..., return_info=True)``,
``top_eigenpairs(..., return_info=True)`` and ``KernelOperator(...).info`` return a
:class:`KernelInfo`: which path ran, how the output was walked, which parameters fell back
to the Jacobian path and why, where a loop replaced ``vmap``, the planner's estimate and the
measured time. ``info.to_dict()`` is plain JSON.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["KernelInfo", "TrainModeWarning"]


class TrainModeWarning(UserWarning):
    """A module in training mode (batch norm with batch statistics, dropout) was
    evaluated in eval mode for the eNTK."""


@dataclass
class KernelInfo:
    """What ran for one eNTK call (``return_info=True``).

    Attributes:
      method: ``"structured"``, ``"jacobian"`` or ``"ntk_vp"``; layout: ``"chunks"``,
        ``"panels"`` or ``"stream"``; chunk_size: inputs per chunk.
      device, dtype: where and in what precision the work ran.
      structured: ``{layer: {"rule", "form", "positions"}}`` of the layers contracted by
        structured rules (form ``"pair"`` or ``"perex"``).
      fallbacks: ``[{"params", "path", "reason"}]``: parameters computed by their
        per-parameter Jacobian (``"path": "jacobian"``) and why -- no rule, or a rule whose
        per-example check failed on the probe examples or whose layer received an input
        that is not batch-first on a later chunk; and a whole path replaced
        (``"instead_of": "ntk_vp"``, ``"path"`` the one that ran) where it cannot run on the
        model (forward-mode AD unsupported).
      adjustments: ``[{"what", "by", "reason"}]``: settings the engine changed to avoid a
        known PyTorch hazard (a ``vmap(jacrev)`` chunk as large as its output rows).
      check: the spot check (``check=k``): ``{"entries", "max_rel_error", "tolerance",
        "dtype", "seed", "seconds", "worst"}`` (see :mod:`entk_core.engine.checks`); empty
        when no check was asked for.
      loops: places where ``vmap`` could not batch and a per-example (or per-channel) loop
        ran instead, with the reason.
      model_copy: how the caller's module was protected (``"private copy"``, ``"cast
        copy"`` or ``"shared (...)"``); train_mode: modules evaluated in eval mode although
        the caller's were in training mode.
      estimate: the planner's :class:`~entk_core.engine.planner.Plan` summary line;
        estimated_seconds / seconds: its estimate and the measured wall time.
      rates: the machine rates the estimate used (:meth:`~entk_core.engine.machine.Rates.describe`:
        source, GEMM flop/s, bandwidth, seconds per kernel, when and under what load they
        were measured), and ``"update"`` when this call ran 3× or more off its estimate and
        the rates were measured again (``{"reason", "before", "after"}``).
      pilot: when ``method="auto"`` timed the estimates' pick against the structured path
        on a slice of the inputs before choosing (:mod:`entk_core.engine._pilot`): ``{"paths": {path: {"measured_s",
        "estimated_s", "ratio"}}, "inputs", "seconds", "reused", "chose"}``; empty otherwise.
      path: for spectra, the top-k path that ran (``"lanczos (structured operator)"``...);
        solver: eigensolver statistics (products, restarts, basis, residuals).
    """

    method: str = ""
    layout: str = "chunks"
    chunk_size: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    structured: dict = field(default_factory=dict)
    fallbacks: list = field(default_factory=list)
    loops: list = field(default_factory=list)
    adjustments: list = field(default_factory=list)
    model_copy: str = "private copy"
    train_mode: list = field(default_factory=list)
    estimate: str = ""
    estimated_seconds: float = 0.0
    seconds: float = 0.0
    path: str = ""
    solver: dict = field(default_factory=dict)
    check: dict = field(default_factory=dict)
    rates: dict = field(default_factory=dict)
    pilot: dict = field(default_factory=dict)

    def note_loop(self, where: str, reason: str) -> None:
        """Record (once) that ``where`` ran as a loop because of ``reason``."""
        item = {"where": where, "reason": reason}
        if item not in self.loops:
            self.loops.append(item)

    def to_dict(self) -> dict:
        return asdict(self)
