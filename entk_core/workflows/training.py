"""The generic training loop (nanoGPT-style: one readable function).

``train`` builds a family's model and data from a config, records train/test loss and
accuracy after every epoch (and at epoch 0, the initialisation), and saves a
checkpoint at epoch 0, every ``checkpoint_every`` epochs and at the last epoch. The
checkpoint at epoch ``e`` holds the parameters after ``e`` epochs of training.

An interrupted run (killed process, Ctrl-C, a cancelled dashboard job) resumes from its
last checkpoint with the saved optimizer state; the resumed run reaches the same
parameters as an uninterrupted one, because a family's ``batches(data, cfg, epoch)`` hook
is a pure function of the config and the epoch (full batch for the MLP and TMS; for the
Transformer a replay of the author's seeded DataLoader stream).

One writer per run folder: ``train`` holds the run's lock file (``NAME/.lock``,
:func:`entk_core.store.locks.file_lock`) while it writes, so a second ``train`` of the same
folder (another dashboard session, another terminal) fails at once with a one-line
:class:`~entk_core.store.runs.RunError` instead of interleaving writes.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from ..families.base import ModelFamily, get_family
from ..families.run import Run
from ..store.locks import LockBusy, file_lock
from ..store.runs import (FORMAT, LOCK_FILE, MANIFEST, RunError, atomic_write_bytes, atomic_write_json,
                          finite_or_none, remove_stale_temp_files, save_checkpoint)

__all__ = ["train", "evaluate", "run_lock", "Progress", "METRIC_KEYS"]

Progress = Callable[[int, int, str], None]
"""``progress(done, total, message)``; may raise (e.g. KeyboardInterrupt) to cancel."""

METRIC_KEYS = ("train_loss", "test_loss", "train_acc", "test_acc")


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@torch.no_grad()
def evaluate(family: ModelFamily, model: torch.nn.Module, data) -> dict[str, float | None]:
    """Train/test loss and accuracy of ``model`` on ``data`` (no gradients)."""
    model.eval()
    out: dict[str, float | None] = {}
    for split, idx in (("train", data.train_idx), ("test", data.test_idx)):
        if len(idx) == 0:
            out[f"{split}_loss"] = out[f"{split}_acc"] = None
            continue
        pred = model(data.x[idx])
        out[f"{split}_loss"] = finite_or_none(family.loss(pred, data.y[idx]).item())
        acc = family.accuracy(pred, data.y[idx])
        out[f"{split}_acc"] = None if acc is None else float(acc)
    model.train()
    return out


def _optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _resume_file(out: Path, epoch: int) -> Path:
    return out / "resume" / f"optimizer_epoch_{epoch:06d}.safetensors"


def _save_resume_state(out: Path, opt: torch.optim.Optimizer, epoch: int) -> None:
    """One file per checkpointed epoch: the optimizer tensors, with the rest of its state as
    JSON in the safetensors metadata (one atomic write, so the two can never disagree).
    Written before the manifest names the epoch; other epochs' files are pruned after."""
    tensors, meta = _optimizer_state(opt)
    meta["epoch"] = epoch
    atomic_write_bytes(_resume_file(out, epoch), st_save(tensors, metadata={"entk_optimizer": json.dumps(meta)}))


def _prune_resume_state(out: Path, keep: int) -> None:
    for f in (out / "resume").glob("optimizer*"):
        if f != _resume_file(out, keep):
            f.unlink(missing_ok=True)


def _load_resume_state(out: Path, opt: torch.optim.Optimizer, epoch: int) -> bool:
    try:
        with safe_open(_resume_file(out, epoch), framework="pt") as f:
            meta = json.loads(f.metadata()["entk_optimizer"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("epoch") != epoch:
            return False
        _restore_optimizer(opt, tensors, meta)
        return True
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):
        return False


@contextmanager
def run_lock(out: Path | str) -> Iterator[None]:
    """Hold the write lock of the run folder ``out`` (created if missing); a
    :class:`RunError` at once if another thread or process holds it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with file_lock(out / LOCK_FILE, blocking=False):
            yield
    except LockBusy:
        raise RunError(f"{out}: another process is writing this run (training or importing); "
                       "wait for it to finish") from None


_SAVE_FOLDERS = ("checkpoints", "resume")
"""Subfolders a run's saves create (:func:`~entk_core.store.runs.atomic_write_bytes`) before its
first manifest exists."""


def _left_by_a_killed_save(p: Path) -> bool:
    """A save folder holding nothing, or only the temporary files of a save killed before its
    rename: what a run killed during its first checkpoint leaves (no manifest refers to it)."""
    return p.name in _SAVE_FOLDERS and p.is_dir() and not p.is_symlink() and all(
        q.is_file() and q.name.startswith(".") and q.name.endswith(".tmp") for q in p.iterdir())


def _foreign_files(out: Path) -> list[str]:
    """What in ``out`` is not a run's own, before it has a manifest: anything but the lock and
    what a killed first save leaves (:func:`_left_by_a_killed_save`)."""
    if not out.exists():
        return []
    return sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE and not _left_by_a_killed_save(p))


def train(
    family: ModelFamily | str,
    cfg: Any,
    out: Path | str,
    *,
    progress: Progress | None = None,
) -> Run:
    """Train a family's model from ``cfg`` into the run folder ``out``; return the :class:`Run`.

    * ``out`` missing or empty: a new run.
    * ``out`` is an unfinished run with the same config: resumes from its last checkpoint.
    * ``out`` is a finished run with the same config: returned as is.
    * ``out`` holds anything else (another config, foreign files): :class:`RunError`,
      nothing is touched.
    * another process is writing ``out``: :class:`RunError` at once (:func:`run_lock`).
    """
    fam = get_family(family) if isinstance(family, str) else family
    out = Path(out)
    cfg = fam.check_config(cfg)  # types, ranges and memory, before anything is built
    if cfg.epochs < 1 or cfg.checkpoint_every < 1:
        raise ValueError(f"epochs and checkpoint_every must be at least 1 (got {cfg.epochs}, {cfg.checkpoint_every})")
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: exists and is not a folder; choose another --out")
    if not (out / MANIFEST).exists() and _foreign_files(out):
        raise RunError(f"{out}: folder exists and is not a run; choose another --out")
    created = not out.exists()
    try:
        with run_lock(out):
            return _train_locked(fam, cfg, out, progress)
    except BaseException:
        if created and not (out / MANIFEST).exists():
            _remove_empty_run_folder(out)  # failed before anything was saved: leave no trace
        raise


def _remove_empty_run_folder(out: Path) -> None:
    try:
        if not _foreign_files(out):
            remove_stale_temp_files(out)
            for name in _SAVE_FOLDERS:
                if (out / name).is_dir():
                    (out / name).rmdir()
            (out / LOCK_FILE).unlink(missing_ok=True)
            out.rmdir()
    except OSError:
        pass


def _train_locked(fam: ModelFamily, cfg: Any, out: Path, progress: Progress | None) -> Run:
    config = asdict(cfg)

    torch.manual_seed(cfg.seed)
    model = fam.build_model(cfg)
    data = fam.make_data(cfg)
    opt = fam.make_optimizer(model, cfg)
    start_epoch = 0
    manifest: dict[str, Any]

    if (out / MANIFEST).exists():
        run = Run(out)
        if type(run.family) is not type(fam) or asdict(run.config) != config:
            raise RunError(f"{out}: already holds a run with a different config; choose another --out or delete it")
        if run.status == "complete":
            return run
        manifest = run.manifest
        remove_stale_temp_files(out)  # left by a killed writer; no manifest references them
        start_epoch = run.epochs[-1] if run.epochs else 0
        if run.epochs:
            model.load_state_dict(run.load_state(start_epoch))
            if start_epoch > 0 and not _load_resume_state(out, opt, start_epoch):
                raise RunError(f"{out}: optimizer state for epoch {start_epoch} is missing or corrupt; cannot resume exactly")
        m = manifest["metrics"]
        keep = [i for i, e in enumerate(m.get("epoch", [])) if e <= start_epoch]
        manifest["metrics"] = {k: [v[i] for i in keep] for k, v in m.items()}
    else:
        if _foreign_files(out):
            raise RunError(f"{out}: folder exists and is not a run; choose another --out")
        remove_stale_temp_files(out)  # a first save killed before its rename: nothing refers to them
        manifest = {
            "format": FORMAT,
            "family": fam.name,
            "config": config,
            "status": "training",
            "epochs_done": 0,
            "metrics": {"epoch": [], **{k: [] for k in METRIC_KEYS}, "time_s": []},
            "checkpoints": [],
            "summary": {},
        }

    def record(epoch: int, elapsed: float) -> None:
        metrics = evaluate(fam, model, data)
        manifest["metrics"]["epoch"].append(epoch)
        for k in METRIC_KEYS:
            manifest["metrics"][k].append(metrics[k])
        manifest["metrics"]["time_s"].append(round(elapsed, 4))

    def checkpoint(epoch: int) -> None:
        rel = f"checkpoints/epoch_{epoch:06d}.safetensors"
        # no safetensors metadata: its key order is not deterministic, and identical
        # parameters must give identical files (the sha256 keys the cache)
        sha = save_checkpoint(out / rel, model.state_dict())
        if epoch > 0:
            _save_resume_state(out, opt, epoch)
        manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c["epoch"] != epoch]
        manifest["checkpoints"].append({"epoch": epoch, "file": rel, "sha256": sha})
        manifest["epochs_done"] = epoch
        atomic_write_json(out / MANIFEST, manifest)  # the commit point
        if epoch > 0:
            _prune_resume_state(out, epoch)

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with _torch_threads(fam.train_threads):
        if start_epoch == 0 and not manifest["checkpoints"]:
            record(0, 0.0)
            checkpoint(0)
        model.train()
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            for idx in fam.batches(data, cfg, epoch):
                opt.zero_grad(set_to_none=True)
                loss = fam.loss(model(data.x[idx]), data.y[idx])
                if not torch.isfinite(loss):
                    raise RunError(f"{out}: training diverged at epoch {epoch} (loss {loss.item()}); last good checkpoint kept")
                loss.backward()
                opt.step()
            record(epoch, time.perf_counter() - t0)
            if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
                checkpoint(epoch)
            if progress is not None:
                last = manifest["metrics"]
                acc = last["test_acc"][-1]
                msg = f"epoch {epoch}/{cfg.epochs} train loss {last['train_loss'][-1]:.3g}" + (
                    f" test acc {acc:.1%}" if acc is not None else ""
                )
                progress(epoch, cfg.epochs, msg)

    model.eval()
    manifest["status"] = "complete"
    manifest["summary"] = fam.summary(model, cfg, data)
    manifest["train_time_s"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(out / MANIFEST, manifest)
    return Run(out)
