"""What computing one LM layer costs, phase by phase, before it starts: the eNTK unit
(capture + Lanczos), the SAE baseline (token activations + training) and the evaluation
(ICA, random directions, the SAE's latents, every table). A phase already cached costs
nothing and is left out. The dashboard states the total before a Compute button and asks
:func:`~entk_core.ui.mode.compute_allowed` with it in viewer mode.

The rates are effective GFLOP/s on the CPU threads the work runs on
(:func:`~entk_core.workflows.lm.lm_gflops`: this process's torch threads, or a dashboard job
worker's, :func:`~entk_core.workflows.jobs.worker_threads`, for ``worker=True``); the SAE
runs at most ``budget_s`` seconds plus its last epoch and the held-out checks.
"""
from __future__ import annotations

from typing import Any

from ..families.causal_lm.models import LoadedLM
from ..families.causal_lm.probes import ProbeSet
from ..families.causal_lm.sae import SAEOptions
from ..store.cache import ArrayCache
from .jobs import worker_threads
from .lm import LMAlignOptions, estimate_unit_seconds, lm_gflops, peek_layer, peek_sae
from .lm_report import layer_tasks

__all__ = ["sae_seconds", "evaluation_seconds", "layer_phases", "sweep_seconds", "phases_text"]

SAE_EPOCHS_EXPECTED = 8
"""Epochs a TopK SAE usually runs before its held-out FVU plateaus (Gemma-3-270M layer 16)."""


def _rate(gflops: float | None) -> float:
    return (gflops or lm_gflops()) * 1e9


def _gflops(worker: bool) -> float | None:
    """The rate where the work runs: a job worker's threads, or this process's (``None``)."""
    return lm_gflops(worker_threads()) if worker else None


def sae_seconds(N: int, T: int, d: int, options: SAEOptions, activations: bool, lm: LoadedLM | None = None,
                layer: int | None = None, gflops: float | None = None) -> float:
    """Training the SAE on ``N × (T − 1)`` token activations: encoder, decoder and their
    gradients (≈ 6·M·d·latents FLOPs an epoch, plus the held-out check), for the expected
    number of epochs, capped at the time budget plus one epoch. ``activations``: add the
    forward pass through blocks ``0..layer`` that collects them (when the eNTK unit is
    cached and does not hand them over)."""
    M = N * max(1, T - 1)
    per_epoch = (6 * M * d * options.latents + 2 * M * 0.05 * d * options.latents) / _rate(gflops)
    train = per_epoch * min(options.epochs, SAE_EPOCHS_EXPECTED)
    if options.budget_s is not None:
        train = min(train, options.budget_s + per_epoch)
    fwd = 0.0
    if activations and lm is not None and layer is not None:
        d_ff = lm.arch.d_ff
        fwd = 2 * N * T * (8 * d * d + 6 * d * d_ff) * (layer + 1) / _rate(gflops)
    return train + fwd


def evaluation_seconds(N: int, d: int, top: int, latents: int | None, labels: int = 15) -> float:
    """ICA (FastICA on ``N × d``), 20 random draws of ``top`` directions and, per label, the
    best direction and sign of every method by train AP (the full SAE dictionary's
    ``latents`` directions dominate): ``1 s + 1.4e-8 · N log₂N · directions · labels``,
    fitted to 5 CPU s at N = 512 (14 labels) and 14.5 CPU s at N = 1,024 (20 labels) with
    4,096 latents (measured 2026-12-04)."""
    import math

    dirs = top * (3 + 20) + (latents or 0)
    return 1.0 + 1.4e-8 * N * math.log2(max(N, 2)) * dirs * max(1, labels)


def _load_phase(lm: LoadedLM) -> dict[str, Any]:
    """A worker loads the model and the probe set first, as long as this process's load took."""
    return {"phase": "load", "seconds": float(lm.load_s), "what": "the model, in a worker"}


def layer_phases(lm: LoadedLM, ps: ProbeSet, layer: int, options: LMAlignOptions,
                 cache: ArrayCache | None = None, *, worker: bool = False) -> list[dict[str, Any]]:
    """The phases still to run for ``layer`` (cached ones left out), each
    ``{"phase", "seconds", "what"}``; the evaluation is always there (it is not cached).
    ``worker``: computed in a worker process (the dashboard), which loads the model first."""
    out: list[dict[str, Any]] = [_load_phase(lm)] if worker else []
    entk_cached = peek_layer(lm, ps, layer, options, cache) is not None
    if not entk_cached:
        out.append({"phase": "eNTK", "seconds": estimate_unit_seconds(lm, ps.N, ps.T, layer, options.steps,
                                                                      gflops=_gflops(worker)),
                    "what": f"{options.steps} Lanczos steps on {ps.N} contexts"})
    sae_needed = options.sae == "train" and peek_sae(lm, ps, layer, options, cache) is None
    if sae_needed:
        so = options.sae_options()
        out.append({"phase": "SAE", "seconds": sae_seconds(ps.N, ps.T, lm.d_model, so, activations=entk_cached,
                                                           lm=lm, layer=layer, gflops=_gflops(worker)),
                    "what": f"TopK SAE, {so.latents} latents"})
    latents = options.sae_latents if (options.sae != "off") else None
    tasks = layer_tasks(ps, options.min_count)
    labels = len(tasks["pos"]) + len(tasks["morph"]["tasks"])
    out.append({"phase": "evaluation", "seconds": evaluation_seconds(ps.N, lm.d_model, options.top, latents, labels),
                "what": "ICA, random directions, every table"})
    return out


def sweep_seconds(lm: LoadedLM, ps: ProbeSet, layers: list[int], steps: int, *, worker: bool = False) -> float:
    """Seconds the eNTK and PCA units of ``layers`` take (a layer sweep; no SAE), plus the
    model's load when ``worker``."""
    return ((_load_phase(lm)["seconds"] if worker else 0.0)
            + sum(estimate_unit_seconds(lm, ps.N, ps.T, L, steps, gflops=_gflops(worker)) for L in layers))


def phases_text(phases: list[dict[str, Any]]) -> str:
    """``eNTK ~3.1 min + SAE ~2.5 min + evaluation ~10 s``."""
    from .lm_report import format_seconds

    return " + ".join(f"{p['phase']} ~{format_seconds(p['seconds'])}" for p in phases)
