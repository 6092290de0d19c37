"""Alignment report helpers for the modular-addition MLP (paper spec §4.4-§4.9, §2.7).

Used by :meth:`entk_core.families.modadd_mlp.ModAddMLPFamily.align_report` (``python -m
entk_core align``), its ``sweep_spec`` hook and the Alignment dashboard page. Functions that
need a spectrum or kernel take ``services`` (an
:class:`entk_core.families.base.AnalysisServices`, e.g. ``entk_core.workflows.analysis.services()``).

Cliffs and windows
------------------
Cliffs are detected automatically in the spectrum of ``windows_from`` (default: the full
kernel; :func:`entk_core.engine.spectra.detect_cliffs`, the same rule as ``spectrum``: the drop that
ends the sum/diff cliff is 1.46x for p=29/width 512 but only 1.13x for p=23/width 256, above
the rule's 1.1 minimum, while its local test rejects noise) and labelled by
:func:`entk_core.engine.spectra.label_cliffs` (``constant`` = the isolated constant mode at index 0,
then ``cliff 1``, ``cliff 2``, ...). The same index windows are then read in the
eigenvectors of the requested layer group, as the paper's layerwise table does: for
``net.0`` window 1-56 carries the a/b modes, for ``net.3`` the top windows carry the
sum/diff modes (the layer-2 kernel has no sharp cliff of its own at 56).

Rotation inside a cliff
-----------------------
Each Fourier cliff is rotated with :func:`entk_core.families.modadd_mlp.fourier.rotate_cliff`; the
Laplacian pair is chosen from the cliff's content, never from its position: the *axis*
pair ``(L_a, L_b)`` when the cliff overlaps the ``a``/``b`` families more than the
``sum``/``diff`` families, else the *sum/diff* pair ``(L_s, L_d)``. The subspace overlap
is rotation-invariant (reported before and after as a check); what the rotation changes
is how single-mode each direction is: the mean over the cliff's directions of the best
phase-insensitive correlation with the stacked Fourier bank ``a | b | sum | diff``
(``4·⌊p/2⌋`` rows, labels ``"a k=3"``...), and each direction's best ``(family, k)``.
Axis-rotated cliffs list the ``b`` modes first, then the ``a`` modes; sum/diff-rotated
cliffs the ``diff`` modes first, then ``sum``.

Linearised check (spec §2.7)
----------------------------
Kernel regression with the eNTK at a checkpoint, trained on the train split and evaluated
on the test split, compared with the network's own test outputs
(:func:`entk_core.engine.measures.linearised_check`). Kernel form: the *class-traced* kernel
``mean_c K[:, :, c, c]`` (the paper's MLP reduction, sliced from the cached ``(N, N)``
kernel of all p² inputs) shared across the ``C = p`` outputs (layout ``"shared"``). For
this MLP the layer-2 part is exactly class-diagonal and class-independent, so sharing
it is exact; the layer-1 part's off-diagonal class terms are dropped. The flattened
``(C·N)²`` kernel would be exact but is 17k x 17k for the 588 training pairs at p=29.
Ridge ``λ = ridge · mean(diag K_train)`` (default ``1e-6``, relative). Two modes are
reported: ``expand`` (around the model: ``f(x) + K(x,X)(K+λI)⁻¹(y − f(X))``, the
linearisation the eNTK hypothesis is about) and ``pure`` (``K(x,X)(K+λI)⁻¹ y``, a
kernel machine with the eNTK alone).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...engine.measures import best_phase_corr, family_bases, linearised_check, window_overlaps
from ...engine.spectra import CONSTANT_LABEL, detect_cliffs, label_cliffs, labelled_cliffs
from ..base import FULL, AnalysisServices, FeatureFamily, SweepSpec
from ..features import concat_families, families_with_rows
from ..run import Run
from .fourier import rotate_cliff

__all__ = [
    "FOURIER",
    "REPORT_FAMILIES",
    "sweep_spec",
    "fourier_bank_all",
    "rotation_kind",
    "analyse_cliff",
    "cliff_windows",
    "linearised_report",
    "align_report",
    "eigenvector_image",
]

FOURIER = ("a", "b", "sum", "diff")
"""The Fourier families of modular addition, in the order of the stacked bank."""

REPORT_FAMILIES = ("a", "b", "sum", "diff", "random")
"""Families in the align report and the sweep (the digit families span the same
centred subspaces as the Fourier ones, so they add nothing to an overlap)."""


def sweep_spec(cfg: Any, group: str) -> SweepSpec:
    """The MLP's sweep: windows detected in the *full* kernel (tracked inside a layer's
    kernel for per-layer sweeps); primary family ``sum`` (the paper's Fig. 2 curve) except
    for layer 1, which carries no sum modes (there the curve that rises most is used)."""
    return SweepSpec(group=group, families=REPORT_FAMILIES, window_group=FULL,
                     primary=None if group == "net.0" else "sum")


def _families(run: Run) -> dict[str, FeatureFamily]:
    fams = families_with_rows(run.family.feature_families(run.config, run.data), len(run.data.kernel_idx))
    return {k: fams[k] for k in REPORT_FAMILIES if k in fams}


def fourier_bank_all(families: dict[str, FeatureFamily]) -> FeatureFamily:
    """The stacked bank ``a | b | sum | diff`` (labels ``"a k=1"``, ..., ``"diff k=14"``)."""
    return concat_families("fourier", [families[k] for k in FOURIER])


def rotation_kind(overlap: dict[str, float]) -> str:
    """``"axis"`` if the a/b overlap exceeds the sum/diff overlap, else ``"sumdiff"``."""
    ab = overlap.get("a", 0.0) + overlap.get("b", 0.0)
    sd = overlap.get("sum", 0.0) + overlap.get("diff", 0.0)
    return "axis" if ab >= sd else "sumdiff"


def _overlaps(block: np.ndarray, bases: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in zip(bases, window_overlaps(block, bases))}


def _best(block: np.ndarray, bank: FeatureFamily) -> tuple[np.ndarray, list[str]]:
    corr, idx = best_phase_corr(block, bank)
    return corr, [bank.labels[i] for i in idx]


def analyse_cliff(block: np.ndarray, families: dict[str, FeatureFamily], p: int, *,
                  rotate: bool = True, kind: str | None = None,
                  bases: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Overlaps and phase-insensitive correlations of one cliff ``(p², k)`` before and after rotation.

    Returns a JSON-able dict: ``overlap`` (per family, out of ``dims``), ``overlap_pct``,
    ``rotation`` (``"axis"``, ``"sumdiff"`` or ``None``), ``overlap_after``,
    ``mean_best_corr`` / ``frac_above_0.9`` (``{"before", "after"}``) and per direction
    ``best_before`` / ``best_after`` (``"a k=3"``) with ``corr_before`` / ``corr_after``;
    plus ``rotated`` (the ``(p², k)`` array, not JSON) for callers that draw it.
    ``bases``: :func:`entk_core.workflows.sweep.family_bases` of ``families`` (computed if omitted).
    """
    block = np.asarray(block, dtype=np.float64)
    bank = fourier_bank_all(families)
    bases = bases if bases is not None else family_bases(families)
    ov = _overlaps(block, bases)
    dims = {k: b.shape[1] for k, b in bases.items()}
    c_before, l_before = _best(block, bank)
    out: dict[str, Any] = {
        "overlap": ov,
        "overlap_pct": {k: round(100.0 * v / max(dims[k], 1), 2) for k, v in ov.items()},
        "rotation": None,
        "mean_best_corr": {"before": round(float(c_before.mean()), 4), "after": None},
        "frac_above_0.9": {"before": round(float((c_before > 0.9).mean()), 4), "after": None},
        "best_before": l_before,
        "corr_before": [round(float(c), 4) for c in c_before],
    }
    if rotate and block.shape[1] >= 2:
        kind = kind or rotation_kind(ov)
        U = rotate_cliff(block, p, kind)
        c_after, l_after = _best(U, bank)
        out.update({
            "rotation": kind,
            "overlap_after": _overlaps(U, bases),
            "best_after": l_after,
            "corr_after": [round(float(c), 4) for c in c_after],
            "rotated": U,
        })
        out["mean_best_corr"]["after"] = round(float(c_after.mean()), 4)
        out["frac_above_0.9"]["after"] = round(float((c_after > 0.9).mean()), 4)
    return out


def cliff_windows(run: Run, epoch: int, *, services: AnalysisServices, windows_from: str = FULL,
                  top: int | None = None, progress=None) -> list[tuple[str, int, int, float]]:
    """``[(label, start, end, drop ratio)]``: cliffs detected in ``windows_from``'s spectrum at ``epoch``."""
    ref = services.spectrum(run, epoch, group=windows_from, top=top, progress=progress)
    cliffs = detect_cliffs(ref.eigenvalues)
    labels = label_cliffs(cliffs, ref.eigenvectors)
    return [(lab, c.start, c.end, round(c.ratio, 4)) for lab, c in zip(labels, cliffs)]


def linearised_report(run: Run, epoch: int, *, services: AnalysisServices, group: str = FULL, ridge: float = 1e-6,
                      model: torch.nn.Module | None = None) -> dict[str, Any]:
    """The eNTK linearisation check at ``epoch`` (module docstring): ``{"expand": {...}, "pure": {...}}``
    with ``r2``, ``acc_gap`` (points), ``loss_ratio`` and the raw losses/accuracies."""
    data = run.data
    K = services.kernel_matrix(run, epoch, group=group, reduction="trace", model=model).astype(np.float64)
    pos = {int(i): r for r, i in enumerate(data.kernel_idx.tolist())}
    tr = np.array([pos[int(i)] for i in data.train_idx.tolist()])
    te = np.array([pos[int(i)] for i in data.test_idx.tolist()])
    m = model if model is not None else run.load_model(epoch)
    with torch.no_grad():
        F = m(data.kernel_x).double().numpy()
    C = F.shape[1]
    y = data.y[data.kernel_idx].numpy()
    Y_train = np.eye(C)[y[tr]]
    K_tr, K_te = K[np.ix_(tr, tr)], K[np.ix_(te, tr)]
    lam = ridge * float(np.mean(np.diag(K_tr)))
    out: dict[str, Any] = {"kernel": f"{group} class-traced, shared across {C} outputs", "ridge": ridge,
                           "lambda": lam, "n_train": int(tr.size), "n_test": int(te.size)}
    for mode in ("expand", "pure"):
        r = linearised_check(K_tr, K_te, Y_train, y[te], F[tr], F[te], ridge=lam, mode=mode, layout="shared")
        out[mode] = {k: (round(v, 6) if np.isfinite(v) else None) for k, v in r.items()}
    return out


def align_report(run: Run, epoch: int, *, services: AnalysisServices, group: str | None = None,
                 beta: float | None = None, progress=None, top: int | None = None,
                 windows_from: str = FULL, linearised: bool = True) -> dict[str, Any]:
    """The MLP's JSON-able alignment report at ``epoch`` (module docstring).

    ``group``: the layer group whose eigenvectors are read (default ``"full"``);
    ``beta`` must be ``None`` (no importance rescaling for this family).
    """
    if beta is not None:
        raise ValueError("--beta (importance rescaling) does not apply to the modular-addition MLP")
    group = group or FULL
    p = int(run.config.p)
    res = services.spectrum(run, epoch, group=group, top=top, progress=progress)
    wins = cliff_windows(run, epoch, services=services, windows_from=windows_from, top=top)
    fams = _families(run)
    bases = family_bases(fams)
    V = res.eigenvectors
    cliffs = []
    for label, s, e, ratio in wins:
        if e >= V.shape[1]:
            continue
        a = analyse_cliff(V[:, s:e + 1], fams, p, rotate=label != CONSTANT_LABEL, bases=bases)
        a.pop("rotated", None)
        cliffs.append({"label": label, "start": s, "end": e, "size": e - s + 1, "ratio": ratio, **a})
    report: dict[str, Any] = {
        "group": group, "reduction": res.meta["reduction"], "top": res.meta["top"], "p": p,
        "windows_from": windows_from,
        "families": {k: int(b.shape[1]) for k, b in bases.items()},
        "metrics": res.meta.get("metrics", {}),
        "cliffs": cliffs,
        "own_cliffs": labelled_cliffs(detect_cliffs(res.eigenvalues), V),
    }
    if linearised:
        report["linearised"] = linearised_report(run, epoch, services=services, group=group)
    return report


def eigenvector_image(vec: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An eigenvector over the p² inputs as a ``(p, p)`` image ``[a, b]`` and its 2-D Fourier power.

    Returns ``(image, power, freqs)``: ``power[i, j]`` = ``|FFT2(image)|²`` at frequencies
    ``(freqs[i], freqs[j])`` (``ka`` down, ``kb`` across), centred (``fftshift``, frequencies
    ``−⌊p/2⌋ .. ⌈p/2⌉−1``) and normalised to sum 1. A pure ``a``-mode of frequency ``k`` has its
    power at ``(±k, 0)``, a ``sum``-mode at ``±(k, k)``, a ``diff``-mode at ``±(k, −k)``.
    """
    v = np.asarray(vec, dtype=np.float64).reshape(-1)
    if v.size != p * p:
        raise ValueError(f"vector has {v.size} entries, expected p² = {p * p}")
    img = v.reshape(p, p)
    P = np.abs(np.fft.fftshift(np.fft.fft2(img))) ** 2
    tot = P.sum()
    freqs = np.fft.fftshift(np.fft.fftfreq(p, d=1.0 / p)).round().astype(int)
    return img, (P / tot if tot > 0 else P), freqs
