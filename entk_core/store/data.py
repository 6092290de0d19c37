"""The data folder: the only place the dashboard reads user text files (stories) from.

A visitor never types a server path. Files are *chosen* from folders the server owns:
``$ENTK_DATA_DIR`` (default ``./data``), plus the shared TinyStories sample when it is
present beside the checkout, plus the small sample bundled with the tests. A name chosen in
the page is resolved with :func:`resolve_data_file`, which refuses anything that leaves the
folder (``..``, an absolute path, a symlink pointing out).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DATA_SUFFIXES", "DataFile", "DataPathError", "data_root", "list_data_files", "resolve_data_file"]

DATA_SUFFIXES = (".txt", ".jsonl")
"""Story files the probe builder reads."""

_REPO = Path(__file__).resolve().parents[2]
_EXTRA = {
    # shown as "shared/<name>" and "sample/<name>"; both are read-only folders of the checkout
    "shared": _REPO.parent / "shared" / "data" / "tinystories",
    "sample": _REPO / "tests" / "data",
}


class DataPathError(ValueError):
    """A chosen data file is not inside the server's data folders (one-line message)."""


@dataclass(frozen=True)
class DataFile:
    """A story file the server offers: ``label`` is what a page shows and accepts back."""

    label: str
    path: Path
    size: int


def data_root() -> Path:
    """The configured data folder: ``$ENTK_DATA_DIR`` or ``./data``."""
    return Path(os.environ.get("ENTK_DATA_DIR", "data")).expanduser()


def _folders() -> dict[str, Path]:
    return {"data": data_root(), **_EXTRA}


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve(strict=True).relative_to(folder.resolve(strict=True))
    except (OSError, ValueError):
        return False
    return True


def list_data_files() -> list[DataFile]:
    """Every story file in the data folders (not recursive), sorted by label; symlinks that
    point outside their folder and unreadable entries are left out."""
    out: list[DataFile] = []
    for prefix, folder in _folders().items():
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in DATA_SUFFIXES and p.is_file() and _inside(p, folder):
                try:
                    out.append(DataFile(f"{prefix}/{p.name}", p, p.stat().st_size))
                except OSError:
                    continue
    return out


def resolve_data_file(label: str) -> Path:
    """The file behind a ``label`` of :func:`list_data_files` (``data/stories.txt``).
    Raises :class:`DataPathError` for anything else: an unknown folder, a path with a
    separator or ``..`` inside the name, an absolute path, a symlink out of the folder."""
    prefix, _, name = str(label).partition("/")
    folder = _folders().get(prefix)
    if folder is None or not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise DataPathError(f"not a data file of this server: {label[:80]!r} (choose one from the list)")
    p = folder / name
    if p.suffix.lower() not in DATA_SUFFIXES or not p.is_file() or not _inside(p, folder):
        raise DataPathError(f"not a data file of this server: {label[:80]!r} (choose one from the list)")
    return p
