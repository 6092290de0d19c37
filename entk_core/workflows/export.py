"""Export a view's data: CSV and NPZ bytes, and ``python -m entk_core export`` (a spectrum,
the eigenvectors of the shown window, overlap tables) written atomically into a folder.

Files (``--what`` picks the groups):

* ``spectrum``: ``spectrum.csv`` (``index,eigenvalue``), ``cliffs.csv`` (``label,start,end,size,ratio``;
  the constant mode is labelled ``constant``, then ``cliff 1``...), ``spectrum.json``;
* ``vectors``: ``eigenvectors.npz`` (``eigenvalues (k,)``, ``eigenvectors (n, k)``, columns in
  spectral order, rows the kernel inputs) and ``eigenvectors.csv`` (one column per eigenvector);
* ``overlaps``: ``overlaps.csv``: per detected block and feature family the eNTK overlap with the
  PCA and random baselines of the same budget (:func:`entk_core.workflows.alignment.window_table`).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["arrays_npz", "array_csv", "table_csv", "export_view", "WHAT"]

WHAT = ("spectrum", "vectors", "overlaps")


def arrays_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` of plain arrays (readable with ``allow_pickle=False``)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def array_csv(a: np.ndarray, header: Sequence[str] | None = None) -> bytes:
    """A 1-D array as ``index,value`` rows; a 2-D array with one column per array column."""
    a = np.asarray(a)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if a.ndim == 1:
        w.writerow(header or ["index", "value"])
        w.writerows([i, repr(float(v))] for i, v in enumerate(a))
    elif a.ndim == 2:
        w.writerow(header or [f"col{j}" for j in range(a.shape[1])])
        w.writerows([repr(float(v)) for v in row] for row in a)
    else:
        raise ValueError(f"CSV export needs a 1-D or 2-D array, got shape {a.shape}")
    return buf.getvalue().encode()


def table_csv(rows: list[dict[str, Any]]) -> bytes:
    """Rows of dicts as CSV (columns in first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue().encode()


def export_view(run, epoch: int | None, out: Path, *, what: Sequence[str] = WHAT, group: str | None = None,
                reduction: str | None = None, top: int | None = None, beta: float | None = None,
                window: tuple[int, int] | None = None, progress=None, check: int | None = None) -> dict[str, Any]:
    """Write the files of the module docstring into ``out`` (created); returns a summary
    ``{"files": [...], ...}``. ``window`` (inclusive) limits the exported eigenvectors
    (default: all ``top``); ``check``: spot-check the kernel when it is computed (see
    :func:`~entk_core.workflows.analysis.spectrum`)."""
    from ..store.runs import atomic_write_bytes
    from . import analysis
    from .alignment import pca_for, window_table
    from ..engine.spectra import label_cliffs

    bad = [w for w in what if w not in WHAT]
    if bad:
        raise ValueError(f"unknown export {', '.join(bad)}; choose from {', '.join(WHAT)}")
    epoch = run.resolve_epoch(epoch)
    res = analysis.spectrum(run, epoch, group=group or analysis.FULL, reduction=reduction, top=top, beta=beta,
                            progress=progress, check=check)
    labels = label_cliffs(res.cliffs, res.eigenvectors)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []

    def write(name: str, data: bytes) -> None:
        atomic_write_bytes(out / name, data)
        files.append(name)

    if "spectrum" in what:
        write("spectrum.csv", array_csv(res.eigenvalues, ["index", "eigenvalue"]))
        write("cliffs.csv", table_csv([{"label": lab, "start": c.start, "end": c.end, "size": c.size,
                                        "ratio": c.ratio} for lab, c in zip(labels, res.cliffs)]))
        write("spectrum.json", (json.dumps({**res.to_json(), "labels": labels}, indent=1, default=float) + "\n").encode())
    if "vectors" in what:
        s, e = window if window is not None else (0, res.eigenvectors.shape[1] - 1)
        if not 0 <= s <= e < res.eigenvectors.shape[1]:
            raise ValueError(f"window {s}..{e} is outside the {res.eigenvectors.shape[1]} eigenvectors")
        V = res.eigenvectors[:, s:e + 1]
        write("eigenvectors.npz", arrays_npz({"eigenvalues": res.eigenvalues[s:e + 1], "eigenvectors": V,
                                             "indices": np.arange(s, e + 1)}))
        write("eigenvectors.csv", array_csv(V, [f"v{j}" for j in range(s, e + 1)]))
    if "overlaps" in what:
        fams = run.family.feature_families(run.config, run.data, run.load_model(epoch))
        from ..families.features import families_with_rows

        fams = families_with_rows(fams, res.eigenvectors.shape[0])
        if not fams:
            raise ValueError(f"the {run.family.name} family has no feature families for this kernel (no overlaps)")
        wins = [(lab, c.start, c.end) for lab, c in zip(labels, res.cliffs)]
        rows = window_table(res.eigenvectors, wins, fams, H=pca_for(run, epoch))
        write("overlaps.csv", table_csv(rows))
    return {"run": run.name, "epoch": epoch, "group": res.meta["group"], "reduction": res.meta["reduction"],
            "top": res.meta["top"], "out": str(out), "files": files}
