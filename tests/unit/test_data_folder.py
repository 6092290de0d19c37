"""The data folder: story files are chosen from the server's folders, never typed paths."""
import os

import pytest

from entk_core.store.data import DataPathError, list_data_files, resolve_data_file
from entk_core.ui.mode import compute_allowed, viewer_max_seconds, viewer_mode


def test_files_are_listed_and_resolved_inside_the_data_folder(tmp_path, monkeypatch):
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (data / "mine.txt").write_text("Once upon a time.\n")
    (data / "notes.md").write_text("not stories")
    (outside / "secret.txt").write_text("server secret")
    os.symlink(outside / "secret.txt", data / "link.txt")            # a symlink out of the folder
    monkeypatch.setenv("ENTK_DATA_DIR", str(data))
    labels = [f.label for f in list_data_files()]
    assert "data/mine.txt" in labels and "data/link.txt" not in labels and "data/notes.md" not in labels
    assert resolve_data_file("data/mine.txt") == data / "mine.txt"
    for bad in ("data/link.txt", "data/../outside/secret.txt", str(outside / "secret.txt"), "data/notes.md",
                "data/", "elsewhere/mine.txt", "data/missing.txt", "data/..", "data/mine.txt\x00"):
        with pytest.raises(DataPathError, match="not a data file of this server"):
            resolve_data_file(bad)


def test_viewer_mode_and_its_compute_limit(monkeypatch):
    monkeypatch.delenv("ENTK_VIEWER", raising=False)
    monkeypatch.delenv("ENTK_VIEWER_MAX_SECONDS", raising=False)
    assert not viewer_mode() and compute_allowed(1e6, "x") == (True, "")
    monkeypatch.setenv("ENTK_VIEWER", "1")
    assert viewer_mode() and viewer_max_seconds() == 30.0
    assert compute_allowed(12.0, "the spectrum")[0]
    ok, why = compute_allowed(45.0, "the spectrum")
    assert not ok and "45 s" in why and "limit 30 s" in why
    assert not compute_allowed(None, "the sweep")[0]
    monkeypatch.setenv("ENTK_VIEWER_MAX_SECONDS", "60")
    assert compute_allowed(45.0, "the spectrum")[0]
