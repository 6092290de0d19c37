"""Run folders and checkpoints.

A run is a folder holding ``manifest.json`` (config, metrics, checkpoint list) and
safetensors checkpoints. Nothing here executes code from a file: manifests are JSON,
checkpoints are safetensors, optimizer state is safetensors + JSON. Every write goes
to a temporary file in the same folder, is fsynced and then renamed into place, so a
killed process leaves either the old file or the new one, never half a file. The
manifest is written last and is the commit point: a checkpoint the manifest does not
list is ignored (and overwritten on resume).

Layout::

    NAME/manifest.json
    NAME/checkpoints/epoch_000010.safetensors
    NAME/resume/optimizer.safetensors, NAME/resume/optimizer.json
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .models import Dataset, ModelFamily, get_family

__all__ = [
    "RunError",
    "Run",
    "open_run",
    "list_runs",
    "runs_root",
    "resolve_run_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "save_checkpoint",
    "load_checkpoint",
    "sha256_bytes",
]

MANIFEST = "manifest.json"
FORMAT = 1


class RunError(ValueError):
    """A run folder, manifest or checkpoint is missing, malformed or inconsistent.

    The message is one line naming the file and the fault."""


# --------------------------------------------------------------------- files
def runs_root() -> Path:
    """The configured runs folder: ``$ENTK_RUNS_DIR`` or ``./runs``."""
    return Path(os.environ.get("ENTK_RUNS_DIR", "runs")).expanduser()


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n").encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _describe_foreign(head: bytes) -> str:
    if head[:1] == b"\x80":
        return "it is a Python pickle, which is never loaded"
    if head[:2] == b"PK":
        return "it is a zip archive (a torch.save file?), which is never loaded"
    return "it is not a safetensors file"


def save_checkpoint(path: Path | str, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Save a state dict as safetensors, atomically. Returns the file's sha256."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    data = st_save(tensors, metadata=metadata)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def load_checkpoint(path: Path | str, *, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a safetensors checkpoint without executing anything.

    Raises :class:`RunError` (one line, naming the file) if the file is missing,
    truncated or corrupt, is a pickle, does not match ``sha256``, or holds NaN or
    infinite values.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path}: checkpoint file is missing") from None
    except OSError as e:
        raise RunError(f"{path}: cannot read checkpoint ({e.strerror})") from None
    if len(data) < 8:
        raise RunError(f"{path}: checkpoint is truncated ({len(data)} bytes)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8 or header_len > 100_000_000:
        head = data[:4]
        why = _describe_foreign(head)
        if why == "it is not a safetensors file" and data[8:9] == b"{":
            why = "it is truncated or corrupt"
        raise RunError(f"{path}: not a valid checkpoint ({why})")
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise RunError(f"{path}: checkpoint content does not match the manifest's sha256 (corrupt or replaced)")
    try:
        state = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise RunError(f"{path}: corrupt safetensors checkpoint ({str(e).splitlines()[0]})") from None
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise RunError(f"{path}: tensor '{k}' contains NaN or infinite values")
    return state


# --------------------------------------------------------------------- runs
def resolve_run_path(run: str | Path, root: Path | str | None = None, *, confine: bool = False) -> Path:
    """Resolve a run reference to a folder.

    ``run`` may be a path, or a bare name looked up under ``root`` (default
    :func:`runs_root`). With ``confine=True`` (the dashboard and URL parameters) the
    result must lie inside ``root``; anything else (``..``, absolute paths elsewhere,
    symlinks out) raises :class:`RunError`.
    """
    root_p = Path(root) if root is not None else runs_root()
    ref = Path(str(run))
    if confine:
        if ref.is_absolute() or any(part in ("..", "") for part in ref.parts) or str(run).strip() == "":
            raise RunError(f"run '{run}': not a run name inside the runs folder {root_p}")
        cand = (root_p / ref).resolve()
        if not cand.is_relative_to(root_p.resolve()):
            raise RunError(f"run '{run}': resolves outside the runs folder {root_p}")
        return cand
    if ref.exists() or ref.is_absolute() or len(ref.parts) > 1:
        return ref
    return root_p / ref


class Run:
    """A run folder with a validated manifest. Cheap to construct; loads lazily."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not self.path.is_dir():
            raise RunError(f"{self.path}: no such run folder")
        try:
            raw = mpath.read_bytes()
        except FileNotFoundError:
            raise RunError(f"{mpath}: manifest is missing (not a run folder?)") from None
        try:
            m = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(f"{mpath}: manifest is not valid JSON ({e.__class__.__name__} at byte {getattr(e, 'pos', '?')})") from None
        self.manifest = self._validate_manifest(m, mpath)
        self.family: ModelFamily = get_family(m["family"])
        try:
            self.config = self.family.config_from_dict(m["config"])
        except (ValueError, TypeError) as e:
            raise RunError(f"{mpath}: bad config ({e})") from None

    @staticmethod
    def _validate_manifest(m: Any, mpath: Path) -> dict:
        if not isinstance(m, dict):
            raise RunError(f"{mpath}: manifest must be a JSON object")
        for key, typ in [("family", str), ("config", dict), ("checkpoints", list), ("metrics", dict)]:
            if not isinstance(m.get(key), typ):
                raise RunError(f"{mpath}: manifest field '{key}' is missing or not a {typ.__name__}")
        if m.get("format") != FORMAT:
            raise RunError(f"{mpath}: unsupported manifest format {m.get('format')!r} (expected {FORMAT})")
        for c in m["checkpoints"]:
            if not (isinstance(c, dict) and isinstance(c.get("epoch"), int) and isinstance(c.get("file"), str)):
                raise RunError(f"{mpath}: malformed checkpoint entry {c!r}")
            f = Path(c["file"])
            if f.is_absolute() or ".." in f.parts:
                raise RunError(f"{mpath}: checkpoint path '{c['file']}' points outside the run folder")
        try:
            get_family(m["family"])
        except ValueError as e:
            raise RunError(f"{mpath}: {e}") from None
        return m

    # ------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return self.manifest.get("status", "unknown")

    @property
    def epochs(self) -> list[int]:
        """Checkpointed epochs, ascending."""
        return sorted(c["epoch"] for c in self.manifest["checkpoints"])

    @property
    def metrics(self) -> dict[str, list]:
        return self.manifest["metrics"]

    @property
    def summary(self) -> dict[str, Any]:
        return self.manifest.get("summary", {})

    @cached_property
    def data(self) -> Dataset:
        return self.family.make_data(self.config)

    def checkpoint_entry(self, epoch: int | None = None) -> dict:
        """The manifest entry of ``epoch`` (default: the last checkpoint)."""
        if not self.manifest["checkpoints"]:
            raise RunError(f"{self.path}: run has no checkpoints yet")
        if epoch is None:
            epoch = self.epochs[-1]
        for c in self.manifest["checkpoints"]:
            if c["epoch"] == epoch:
                return c
        near = min(self.epochs, key=lambda e: abs(e - epoch))
        raise RunError(f"{self.path}: no checkpoint at epoch {epoch} (nearest: {near}; available {self.epochs[0]}..{self.epochs[-1]})")

    def resolve_epoch(self, epoch: int | None) -> int:
        return self.checkpoint_entry(epoch)["epoch"]

    def checkpoint_sha(self, epoch: int | None = None) -> str:
        return self.checkpoint_entry(epoch).get("sha256", "")

    def load_state(self, epoch: int | None = None) -> dict[str, torch.Tensor]:
        """The validated state dict at ``epoch`` (names, shapes, finiteness, sha256)."""
        entry = self.checkpoint_entry(epoch)
        path = self.path / entry["file"]
        state = load_checkpoint(path, sha256=entry.get("sha256"))
        try:
            self.family.validate_state(self.config, state)
        except ValueError as e:
            raise RunError(f"{path}: {e}") from None
        return state

    def load_model(self, epoch: int | None = None) -> torch.nn.Module:
        """The model at ``epoch`` in eval mode."""
        model = self.family.build_model(self.config)
        model.load_state_dict(self.load_state(epoch))
        return model.eval()

    def metrics_at(self, epoch: int) -> dict[str, float]:
        m = self.metrics
        try:
            i = m["epoch"].index(epoch)
        except (KeyError, ValueError):
            return {}
        return {k: v[i] for k, v in m.items() if k != "epoch" and i < len(v)}

    def info(self) -> dict[str, Any]:
        """JSON-able description: config, checkpoints, summary metrics."""
        m = self.metrics
        last = {k: (v[-1] if v else None) for k, v in m.items()}
        return {
            "name": self.name,
            "path": str(self.path),
            "family": self.family.name,
            "status": self.status,
            "config": asdict(self.config),
            "checkpoints": self.epochs,
            "final_metrics": last,
            **self.summary,
        }


def open_run(run: str | Path, root: Path | str | None = None, *, confine: bool = False) -> Run:
    """Open and validate a run (see :func:`resolve_run_path` for ``run`` and ``confine``)."""
    return Run(resolve_run_path(run, root, confine=confine))


def list_runs(root: Path | str | None = None) -> list[tuple[str, Run | RunError]]:
    """Every sub-folder of ``root`` holding a manifest, sorted by name, as ``(name, Run)``
    or ``(name, RunError)`` for broken runs."""
    root_p = Path(root) if root is not None else runs_root()
    out: list[tuple[str, Run | RunError]] = []
    if not root_p.is_dir():
        return out
    for d in sorted(root_p.iterdir()):
        if d.is_dir() and (d / MANIFEST).exists():
            try:
                out.append((d.name, Run(d)))
            except RunError as e:
                out.append((d.name, e))
    return out


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: map non-finite floats to ``None``."""
    return float(x) if x is not None and math.isfinite(x) else None
