"""Run folders and checkpoints (family-agnostic).

A run is a folder holding ``manifest.json`` (config, metrics, checkpoint list) and
safetensors checkpoints. This module knows files, not model families: a
:class:`RunRecord` is the validated manifest and its checkpoints, with the family's
*name* and the config as a plain dict. The family-aware :class:`entk_core.families.run.Run`
(the record plus its :class:`~entk_core.families.base.ModelFamily`, typed config, data and
model) is built on top of it one layer up. Nothing here executes code from a file: manifests are JSON,
checkpoints are safetensors, optimizer state is safetensors + JSON. Every write goes
to a temporary file in the same folder, is fsynced and then renamed into place, so a
killed process leaves either the old file or the new one, never half a file. The
manifest is written last and is the commit point: a checkpoint the manifest does not
list is ignored (and overwritten on resume).

Layout::

    NAME/manifest.json
    NAME/checkpoints/epoch_000010.safetensors
    NAME/resume/optimizer_epoch_000010.safetensors   (optimizer tensors; its JSON state in the
                                                      safetensors metadata; only the last epoch's)
    NAME/.lock                                       (held while a process writes the run)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import one_line  # re-exported: the one error format (entk_core.errors)

__all__ = [
    "RunError",
    "RunRecord",
    "list_run_folders",
    "runs_root",
    "resolve_run_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "save_checkpoint",
    "load_checkpoint",
    "sha256_bytes",
    "file_sha256",
    "remove_stale_temp_files",
    "one_line",
    "finite_or_none",
    "MANIFEST",
    "FORMAT",
    "LOCK_FILE",
]

MANIFEST = "manifest.json"
FORMAT = 1
LOCK_FILE = ".lock"
"""Name of the lock file inside a run folder (held while a process writes the run)."""
SHA_MISMATCH = "checkpoint content does not match the manifest's sha256 (corrupt or replaced)"


class RunError(ValueError):
    """A run folder, manifest or checkpoint is missing, malformed or inconsistent.

    The message is one line naming the file and the fault."""


# --------------------------------------------------------------------- files
def runs_root() -> Path:
    """The configured runs folder: ``$ENTK_RUNS_DIR`` or ``./runs``."""
    return Path(os.environ.get("ENTK_RUNS_DIR", "runs")).expanduser()


def fsync_dir(folder: Path | str) -> None:
    """fsync a directory, so a rename (or creation) inside it survives a power cut.
    Best effort where the platform cannot open directories."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsynced,
    renamed into place, then the folder fsynced (so the rename itself is durable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
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


def _canonical_safetensors(data: bytes) -> bytes:
    """``data`` with its header's ``__metadata__`` keys sorted.

    safetensors writes the metadata from a Rust ``HashMap``, whose order changes from one
    call to the next, so the same weights would get different bytes and sha256s (and
    identical checkpoints would never share cache entries). Tensor entries and data are
    already in a fixed order; the header stays space-padded to a multiple of 8 bytes."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    if "__metadata__" in header and isinstance(header["__metadata__"], dict):
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def save_checkpoint(path: Path | str, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Save a state dict as safetensors, atomically. Returns the file's sha256, which
    depends only on the tensors and ``metadata`` (the bytes are canonical)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    data = _canonical_safetensors(st_save(tensors, metadata=metadata))
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def _checkpoint_fault(data: bytes) -> str | None:
    """Why ``data`` is not a complete safetensors file (``None`` if its structure is sound).

    Only the 8-byte length and the JSON header are read here (no tensor is decoded), so
    the checks are cheap and never execute anything."""
    if len(data) < 8:
        return f"checkpoint is truncated ({len(data)} bytes)"
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8 or header_len > 100_000_000:
        why = _describe_foreign(data[:4])
        if why == "it is not a safetensors file" and data[8:9] == b"{":
            return f"checkpoint is truncated ({len(data)} bytes, its header alone declares {header_len + 8})"
        return f"not a valid checkpoint ({why})"
    try:
        header = json.loads(data[8:8 + header_len])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "not a valid checkpoint (corrupt safetensors header)"
    if not isinstance(header, dict):
        return "not a valid checkpoint (corrupt safetensors header)"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offs = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int and o >= 0 for o in offs)):
            return f"not a valid checkpoint (corrupt safetensors header entry for '{name}')"
        end = max(end, offs[1])
    have = len(data) - 8 - header_len
    if have < end:
        return f"checkpoint is truncated ({len(data)} bytes, its header declares {end + 8 + header_len})"
    return None


def load_checkpoint(path: Path | str, *, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a safetensors checkpoint without executing anything.

    Raises :class:`RunError` (one line, naming the file) if the file is missing,
    truncated or corrupt, is a pickle (never unpickled), does not match ``sha256``, or
    holds NaN or infinite values.
    """
    path = Path(path)
    data = _read_checkpoint_bytes(path)
    fault = _checkpoint_fault(data)
    if fault:
        raise RunError(f"{path}: {fault}")
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise RunError(f"{path}: {SHA_MISMATCH}")
    try:
        state = st_load(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError) as e:
        raise RunError(f"{path}: corrupt safetensors checkpoint ({one_line(e)})") from None
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise RunError(f"{path}: tensor '{k}' contains NaN or infinite values")
    return state


def _read_checkpoint_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path}: checkpoint file is missing") from None
    except IsADirectoryError:
        raise RunError(f"{path}: checkpoint is a folder, not a file") from None
    except OSError as e:
        raise RunError(f"{path}: cannot read checkpoint ({e.strerror})") from None


_SHA_MEMO: dict[tuple, str] = {}


def file_sha256(path: Path | str) -> str:
    """sha256 of a checkpoint file's content, memoised by (path, size, mtime, inode), so
    re-checking an unchanged file is free. :class:`RunError` if it cannot be read."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise RunError(f"{path}: checkpoint file is missing") from None
    except OSError as e:
        raise RunError(f"{path}: cannot read checkpoint ({e.strerror})") from None
    memo_key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    sha = _SHA_MEMO.get(memo_key)
    if sha is None:
        sha = sha256_bytes(_read_checkpoint_bytes(path))
        if len(_SHA_MEMO) > 4096:
            _SHA_MEMO.clear()
        _SHA_MEMO[memo_key] = sha
    return sha


def remove_stale_temp_files(folder: Path | str) -> list[Path]:
    """Delete the temporary files (``.NAME.XXXX.tmp``) that :func:`atomic_write_bytes` leaves
    behind when its process is killed before the rename; return what was removed. No
    manifest ever references them. Call only while no other process writes ``folder``."""
    removed = []
    for p in Path(folder).rglob(".*.tmp"):
        if p.is_file() and not p.is_symlink():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


# --------------------------------------------------------------------- runs
def resolve_run_path(run: str | Path, root: Path | str | None = None, *, confine: bool = False) -> Path:
    """Resolve a run reference to a folder.

    ``run`` may be a path, or a bare name looked up under ``root`` (default
    :func:`runs_root`). With ``confine=True`` (the dashboard and URL parameters) the
    result must lie inside ``root``; anything else (``..``, absolute paths elsewhere,
    symlinks out) raises :class:`RunError`.
    """
    root_p = Path(root) if root is not None else runs_root()
    text = str(run)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise RunError(f"run {text[:80]!r}: contains control characters")
    ref = Path(text)
    if confine:
        shown = text if len(text) <= 80 else text[:77] + "..."
        if len(text) > 255 or ref.is_absolute() or any(part in ("..", "") for part in ref.parts) or text.strip() == "":
            raise RunError(f"run '{shown}': not a run name inside the runs folder {root_p}")
        cand = (root_p / ref).resolve()
        if not cand.is_relative_to(root_p.resolve()):
            raise RunError(f"run '{shown}': resolves outside the runs folder {root_p}")
        return cand
    if ref.exists() or ref.is_absolute() or len(ref.parts) > 1:
        return ref
    return root_p / ref


class RunRecord:
    """A run folder with a validated manifest, independent of any model family.

    Cheap to construct (reads and checks ``manifest.json`` only). ``family_name`` is the
    manifest's family string and ``config_dict`` its config as stored; the family-aware
    :class:`entk_core.families.run.Run` subclasses this with the family, typed config,
    data and model.

    Raises :class:`RunError` (one line naming the file) for a missing folder, a missing,
    unreadable or malformed manifest, or checkpoint entries pointing outside the run.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not self.path.is_dir():
            raise RunError(f"{self.path}: no such run folder")
        try:
            raw = mpath.read_bytes()
        except FileNotFoundError:
            raise RunError(f"{mpath}: manifest is missing (not a run folder?)") from None
        except OSError as e:
            raise RunError(f"{mpath}: cannot read the manifest ({e.strerror or e.__class__.__name__})") from None
        try:
            m = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(f"{mpath}: manifest is not valid JSON ({e.__class__.__name__} at byte {getattr(e, 'pos', '?')})") from None
        except RecursionError:
            raise RunError(f"{mpath}: manifest is not valid JSON (nested too deeply)") from None
        self.manifest = validate_manifest(m, mpath)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def family_name(self) -> str:
        """The manifest's family name (resolved to a family one layer up)."""
        return self.manifest["family"]

    @property
    def config_dict(self) -> dict[str, Any]:
        """The config as stored in the manifest (a plain JSON object)."""
        return self.manifest["config"]

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

    @property
    def unvouched_metrics(self) -> dict[str, Any] | None:
        """``{"keys": [metric names], "reason": sentence}`` for metrics this run cannot vouch
        for (an imported run's metrics were evaluated on the family's own seeded split, not
        on the data the checkpoints were trained and tested on); ``None`` for a trained run.
        Everything that shows these metrics shows the reason beside them."""
        return self.manifest.get("unvouched_metrics")

    def checkpoint_tensors(self, epoch: int | None = None) -> dict[str, tuple[str, tuple[int, ...]]]:
        """``name -> (dtype, shape)`` of a checkpoint's tensors, from its safetensors header
        alone (nothing else is read, nothing is checked against the sha256: cheap enough to
        compare every checkpoint of a run before computing anything). :class:`RunError`
        for a file that is missing or not a safetensors file."""
        path = self.checkpoint_path(epoch)
        try:
            with open(path, "rb") as f:
                head = f.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else -1
                if not 0 < n <= 100_000_000:
                    raise RunError(f"{path}: {_checkpoint_fault(head + f.read(64)) or 'not a valid checkpoint'}")
                header = json.loads(f.read(n))
        except FileNotFoundError:
            raise RunError(f"{path}: checkpoint file is missing") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(f"{path}: not a valid checkpoint (corrupt safetensors header: {one_line(e)})") from None
        if not isinstance(header, dict):
            raise RunError(f"{path}: not a valid checkpoint (corrupt safetensors header)")
        out = {}
        for k, v in header.items():
            if k == "__metadata__":
                continue
            if not (isinstance(v, dict) and isinstance(v.get("shape"), list) and isinstance(v.get("dtype"), str)):
                raise RunError(f"{path}: not a valid checkpoint (corrupt safetensors header entry for '{k}')")
            out[k] = (v["dtype"], tuple(int(d) for d in v["shape"]))
        return out

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

    def checkpoint_path(self, epoch: int | None = None) -> Path:
        """The checkpoint file of ``epoch``; :class:`RunError` if it (or a symlink on the
        way) leads outside the run folder."""
        entry = self.checkpoint_entry(epoch)
        path = self.path / entry["file"]
        try:
            inside = path.resolve().is_relative_to(self.path.resolve())
        except (OSError, RuntimeError):
            inside = False
        if not inside:
            raise RunError(f"{path}: checkpoint path points outside the run folder (symlink?); refusing to read it")
        return path

    def checkpoint_sha(self, epoch: int | None = None) -> str:
        """The sha256 of the checkpoint file's *actual* content, checked against the
        manifest (so a cache key built from it covers exactly the weights on disk).
        :class:`RunError` if the file is missing, outside the run, or corrupt/replaced."""
        entry = self.checkpoint_entry(epoch)
        path = self.checkpoint_path(entry["epoch"])
        sha = file_sha256(path)
        want = entry.get("sha256")
        if want is not None and sha != want:
            fault = _checkpoint_fault(_read_checkpoint_bytes(path))  # the most specific reason
            raise RunError(f"{path}: {fault or SHA_MISMATCH}")
        return sha

    def check_same_shapes(self) -> None:
        """:class:`RunError` in one line naming two epochs whose checkpoints hold different
        tensor names or shapes (read from the headers, :meth:`checkpoint_tensors`): a series
        whose parameters change shape is not one model over training."""
        first, ref = None, None
        for e in self.epochs:
            shapes = {k: s for k, (_, s) in self.checkpoint_tensors(e).items()}
            if ref is None:
                first, ref = e, shapes
                continue
            if shapes != ref:
                diff = sorted(set(ref) ^ set(shapes))
                if diff:
                    what = f"tensor '{diff[0]}' is in one and not the other"
                else:
                    k = next(k for k in ref if ref[k] != shapes[k])
                    what = f"'{k}' is {list(ref[k])} at epoch {first} and {list(shapes[k])} at epoch {e}"
                raise RunError(f"{self.path}: the checkpoints at epochs {first} and {e} have different parameter "
                               f"shapes ({what}); a run's checkpoints must all be the same model")

    def load_tensors(self, epoch: int | None = None) -> dict[str, torch.Tensor]:
        """The state dict at ``epoch``, checked for structure, sha256 and finiteness (not
        against a model: :meth:`entk_core.families.run.Run.load_state` adds that)."""
        entry = self.checkpoint_entry(epoch)
        return load_checkpoint(self.checkpoint_path(entry["epoch"]), sha256=entry.get("sha256"))

    def metrics_at(self, epoch: int) -> dict[str, float]:
        m = self.metrics
        try:
            i = m["epoch"].index(epoch)
        except (KeyError, ValueError):
            return {}
        return {k: v[i] for k, v in m.items() if k != "epoch" and i < len(v)}


def validate_manifest(m: Any, mpath: Path) -> dict:
    """Check a parsed manifest's structure (``RunError`` naming ``mpath`` and the field);
    returns it unchanged. The family name is checked one layer up."""
    if not isinstance(m, dict):
        raise RunError(f"{mpath}: manifest must be a JSON object")
    for key, typ in [("family", str), ("config", dict), ("checkpoints", list), ("metrics", dict)]:
        if not isinstance(m.get(key), typ):
            raise RunError(f"{mpath}: manifest field '{key}' is missing or not a {typ.__name__}")
    if m.get("format") != FORMAT:
        raise RunError(f"{mpath}: unsupported manifest format {m.get('format')!r} (expected {FORMAT})")
    if "status" in m and not isinstance(m["status"], str):
        raise RunError(f"{mpath}: manifest field 'status' is not a str")
    for k, v in m["metrics"].items():
        if not isinstance(v, list):
            raise RunError(f"{mpath}: manifest field 'metrics.{k}' is not a list")
    for key in ("summary", "unvouched_metrics"):
        if key in m and not isinstance(m[key], dict):
            raise RunError(f"{mpath}: manifest field '{key}' is not a JSON object")
    um = m.get("unvouched_metrics")
    if um is not None and not (isinstance(um.get("reason"), str)
                               and isinstance(um.get("keys"), list) and all(isinstance(k, str) for k in um["keys"])):
        raise RunError(f"{mpath}: manifest field 'unvouched_metrics' needs a 'reason' string and a 'keys' list")
    bad = _non_finite(m)
    if bad is not None:
        raise RunError(f"{mpath}: manifest field '{bad}' holds a non-finite number (NaN or infinity is not JSON)")
    seen: set[int] = set()
    for c in m["checkpoints"]:
        if not (isinstance(c, dict) and type(c.get("epoch")) is int and c["epoch"] >= 0
                and isinstance(c.get("file"), str) and c["file"].strip()):
            raise RunError(f"{mpath}: malformed checkpoint entry {str(c)[:120]}")
        if c["epoch"] in seen:
            raise RunError(f"{mpath}: epoch {c['epoch']} is listed twice in 'checkpoints'")
        seen.add(c["epoch"])
        sha = c.get("sha256")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64
                                    and all(ch in "0123456789abcdef" for ch in sha)):
            raise RunError(f"{mpath}: checkpoint entry for epoch {c['epoch']} has a malformed sha256")
        f = Path(c["file"])
        if f.is_absolute() or ".." in f.parts or "\0" in c["file"]:
            raise RunError(f"{mpath}: checkpoint path '{c['file']}' points outside the run folder")
    return m


def _non_finite(obj: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN or infinite number in a parsed manifest, else ``None``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return path or "(top level)"
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = ((str(i), v) for i, v in enumerate(obj))
    else:
        return None
    for k, v in items:
        hit = _non_finite(v, f"{path}.{k}" if path else str(k))
        if hit is not None:
            return hit
    return None


def list_run_folders(root: Path | str | None = None) -> list[tuple[str, Path | RunError]]:
    """Every sub-folder of ``root`` (default :func:`runs_root`) holding a manifest, sorted by
    name, as ``(name, path)``, or ``(name, RunError)`` for one that resolves outside ``root``."""
    root_p = Path(root) if root is not None else runs_root()
    out: list[tuple[str, Path | RunError]] = []
    if not root_p.is_dir():
        return out
    real_root = root_p.resolve()
    for d in sorted(root_p.iterdir()):
        if d.is_dir() and (d / MANIFEST).exists():
            if not d.resolve().is_relative_to(real_root):
                out.append((d.name, RunError(f"{d}: resolves outside the runs folder {root_p} (symlink); not opened")))
                continue
            out.append((d.name, d))
    return out


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: map non-finite floats to ``None``."""
    return float(x) if x is not None and math.isfinite(x) else None
