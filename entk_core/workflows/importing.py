"""Import checkpoints trained elsewhere as a normal run folder.

A researcher's own training script saves state dicts as safetensors (for example with
``safetensors.torch.save_file(model.state_dict(), "epoch_100.safetensors")``);
:func:`import_run` (``python -m entk_core import FAMILY --config CONFIG.json --checkpoint
EPOCH=FILE ... --out runs/NAME``) validates each one against the family's model and
writes a run folder that every command and page reads like a trained one:

* each file is read without executing anything (:func:`entk_core.store.runs.load_checkpoint`:
  safetensors only, never a pickle; complete; finite values) and checked against the
  model that ``config`` builds (tensor names and shapes, :meth:`ModelFamily.validate_state`);
* the checkpoints are re-saved canonically (so identical weights share cache entries),
  the metrics (train/test loss and accuracy) are evaluated at every imported epoch,
  and the family's ``summary`` is taken at the last one;
* everything is written into a temporary folder beside ``out`` and renamed into place
  in one step, so a failure leaves nothing behind and ``out`` is never half-written.
  ``out`` must not exist, or be an empty folder.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..families.base import ModelFamily, get_family
from ..families.run import Run
from ..store.runs import (FORMAT, MANIFEST, RunError, atomic_write_json, fsync_dir, load_checkpoint, one_line,
                          save_checkpoint, sha256_bytes)
from .training import METRIC_KEYS, evaluate

__all__ = ["import_run", "read_config", "parse_checkpoint_args", "unvouched_reason"]

Progress = Callable[[int, int, str], None]


def read_config(family: ModelFamily, path: Path | str | None) -> dict[str, Any]:
    """The user's config from a JSON file (an object of some of the family's config fields;
    the others keep their defaults), checked against the family's schema, returned as the
    object the file holds (``{}`` for ``path=None``: the defaults). One-line errors naming
    the file and the field."""
    if path is None:
        return {}
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunError(f"{path}: config file is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: cannot read the config ({one_line(e)})") from None
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: config is not valid JSON ({e.msg} at line {e.lineno})") from None
    try:
        family.config_from_dict(d)
    except (ValueError, TypeError, OverflowError) as e:
        raise RunError(f"{path}: bad {family.name} config ({one_line(e)})") from None
    return d


def parse_checkpoint_args(items: list[str]) -> dict[int, Path]:
    """``["100=a.safetensors", ...]`` -> ``{100: Path("a.safetensors")}`` (one-line errors)."""
    out: dict[int, Path] = {}
    for item in items:
        epoch, sep, file = item.partition("=")
        if not sep or not file:
            raise ValueError(f"--checkpoint '{item}': expected EPOCH=FILE.safetensors")
        try:
            e = int(epoch)
        except ValueError:
            raise ValueError(f"--checkpoint '{item}': epoch '{epoch}' is not an integer") from None
        if e < 0:
            raise ValueError(f"--checkpoint '{item}': the epoch must be at least 0")
        if e in out:
            raise ValueError(f"--checkpoint: epoch {e} is given twice")
        out[e] = Path(file)
    if not out:
        raise ValueError("give at least one --checkpoint EPOCH=FILE.safetensors")
    return out


def _run_config(fam: ModelFamily, given: dict[str, Any], last_epoch: int) -> Any:
    """The run's config: the user's fields, the family's defaults for the others, and
    ``epochs`` = the last imported epoch unless the user gave it (then it must reach it)."""
    given = dict(given)
    if "epochs" in given:
        if type(given["epochs"]) is int and given["epochs"] < last_epoch:
            raise ValueError(f"the config says epochs={given['epochs']}, but a checkpoint is at epoch {last_epoch}")
    else:
        given["epochs"] = last_epoch
    return fam.config_from_dict(given)


def unvouched_reason(fam: ModelFamily, cfg: Any) -> str:
    """Why an imported run's metrics are not the user's: they are evaluated on the family's
    own seeded split of its own data."""
    split = ", ".join(f"{k}={getattr(cfg, k)}" for k in ("seed", "split_seed", "train_frac") if hasattr(cfg, k))
    return (f"evaluated at import on the {fam.name} family's own data and seeded train/test split ({split}), "
            "not on the data the checkpoints were trained and tested on; the 'test' examples may have been "
            "trained on")


def import_run(family: ModelFamily | str, cfg: Any, checkpoints: Mapping[int, Path | str], out: Path | str, *,
               progress: Progress | None = None, config_file: str | None = None) -> Run:
    """Validate ``checkpoints`` (``epoch -> safetensors file``) against ``family``'s model
    built from ``cfg`` and write them as the run folder ``out`` (see the module docstring).

    ``cfg``: the user's config as a dict of some fields (:func:`read_config`; the others keep
    the family's defaults, ``epochs`` defaults to the last imported epoch) or a Config
    instance (its fields that differ from the family's defaults count as given). The
    manifest records it as given (``import.config``, with ``config_file`` and the imported
    epochs), and marks the train/test metrics as ``unvouched_metrics``: they are evaluated
    on the family's own seeded split, not the user's.

    Returns the :class:`~entk_core.families.run.Run`. :class:`RunError` (one line, naming the
    file) for a bad file or a state dict that does not fit; nothing is written then."""
    fam = get_family(family) if isinstance(family, str) else family
    if not fam.offers("import"):
        raise ValueError(f"the {fam.name} family cannot import checkpoints (it builds no model)")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"{out}: already exists and is not empty; choose another --out")
    items = sorted((int(e), Path(p)) for e, p in checkpoints.items())
    if not items:
        raise ValueError("no checkpoints to import")
    if isinstance(cfg, dict):
        given = dict(cfg)
    else:  # a Config object: the fields that differ from the family's defaults are what the user set
        defaults = asdict(fam.Config())
        given = {k: v for k, v in asdict(cfg).items() if v != defaults[k]}
    cfg = _run_config(fam, given, items[-1][0])
    model = fam.build_model(cfg)
    data = fam.make_data(cfg)
    states: list[tuple[int, Path, dict[str, torch.Tensor], str]] = []
    metrics: dict[str, list] = {"epoch": [], **{k: [] for k in METRIC_KEYS}}
    for i, (epoch, path) in enumerate(items):
        state = load_checkpoint(path)  # safetensors only, complete, finite
        try:
            fam.validate_state(cfg, state)
            model.load_state_dict(state)
        except (ValueError, RuntimeError) as e:
            raise RunError(f"{path}: {one_line(e)}") from None
        row = evaluate(fam, model, data)
        metrics["epoch"].append(epoch)
        for k in METRIC_KEYS:
            metrics[k].append(row[k])
        states.append((epoch, path, state, sha256_bytes(path.read_bytes())))
        if progress is not None:
            progress(i + 1, len(items) + 1, f"checked epoch {epoch}")
    model.eval()
    summary = fam.summary(model, cfg, data)  # the model holds the last epoch's weights

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a run folder is an ordinary folder
        entries = []
        for epoch, path, state, src_sha in states:
            rel = f"checkpoints/epoch_{epoch:06d}.safetensors"
            sha = save_checkpoint(tmp / rel, state)
            entries.append({"epoch": epoch, "file": rel, "sha256": sha})
        manifest = {
            "format": FORMAT, "family": fam.name, "config": asdict(cfg), "status": "complete",
            "epochs_done": items[-1][0], "metrics": metrics, "checkpoints": entries, "summary": summary,
            "imported": [{"epoch": e, "source": p.name, "source_sha256": s} for e, p, _, s in states],
            "import": {"config": given, "config_file": config_file, "epochs": [e for e, _ in items]},
            "unvouched_metrics": {"keys": list(METRIC_KEYS), "reason": unvouched_reason(fam, cfg)},
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        fsync_dir(tmp / "checkpoints")
        try:
            os.rename(tmp, out)  # one step: out appears complete or not at all
        except OSError as e:
            raise RunError(f"{out}: cannot create the run folder ({e.strerror}); it may have appeared meanwhile") from None
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress is not None:
        progress(len(items) + 1, len(items) + 1, "written")
    return Run(out)
