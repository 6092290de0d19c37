"""Helpers shared by the CLI's command modules: progress bars, output, error text."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

from ..errors import one_line

__all__ = ["tqdm_progress", "progress_lines", "emit", "one_line", "add_family_options", "add_executor_options"]


class _Progress:
    """A ``progress(done, total, message)`` callback drawing a tqdm bar on stderr."""

    def __init__(self, desc: str, mode: str = "auto"):
        # mode "auto": draw only on a terminal; "on": always; "off": never.
        self.desc, self.bar = desc, None
        self.enabled = mode == "on" or (mode == "auto" and sys.stderr.isatty())

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, file=sys.stderr, leave=False, dynamic_ncols=True)
        self.bar.total = total
        self.bar.n = done
        if message:
            self.bar.set_postfix_str(message, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def tqdm_progress(desc: str) -> _Progress:
    return _Progress(desc, mode=os.environ.get("ENTK_PROGRESS", "auto"))


class _LineProgress(_Progress):
    """A tqdm bar on a terminal; elsewhere (a pipe, a log file, a notebook cell) plain stderr
    lines ``desc: done/total message``, at most one a second plus the first and the last."""

    def __init__(self, desc: str, mode: str = "auto", every_s: float = 1.0):
        super().__init__(desc, mode)
        self.lines = mode in ("auto", "on", "lines") and not (mode != "lines" and sys.stderr.isatty())
        self.enabled = self.enabled and not self.lines
        self.every_s, self._last = every_s, None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if not self.lines:
            return super().__call__(done, total, message)
        import time

        now = time.monotonic()
        if self._last is None or done >= total or now - self._last >= self.every_s:
            self._last = now
            print(f"{self.desc}: {done}/{total} {message}".rstrip(), file=sys.stderr, flush=True)


def progress_lines(desc: str, every_s: float = 1.0) -> _Progress:
    """Progress for long commands that must report it in every setting: a bar on a terminal,
    stderr lines otherwise (``ENTK_PROGRESS=off``: nothing; ``=lines``: lines even on a terminal),
    at most one line every ``every_s`` seconds (0: every call, for a few long phases)."""
    return _LineProgress(desc, mode=os.environ.get("ENTK_PROGRESS", "auto"), every_s=every_s)


def emit(args: argparse.Namespace, obj: dict[str, Any], text: Callable[[dict[str, Any]], str]) -> None:
    if args.json:
        print(json.dumps(obj, indent=1, allow_nan=False, default=float))
    else:
        print(text(obj))


def add_family_options(p: argparse.ArgumentParser, fam) -> None:
    """One ``--option`` per field of the family's ``Config`` dataclass."""
    import dataclasses

    for f in dataclasses.fields(fam.Config):
        default = getattr(fam.Config(), f.name)
        typ = type(default)
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=typ, default=None,
                       metavar=typ.__name__.upper(), help=f"(default {default})")


def add_executor_options(p: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]`` and ``--workers N``: where the command's independent units run
    (see :mod:`entk_core.workflows.executors`)."""
    p.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                   help="run the units on Ray: a local instance sized to this machine, or the cluster at ADDRESS "
                        "(default $ENTK_RAY_ADDRESS when set; 'auto' = the cluster `ray start` runs on this host)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local worker processes (default: the CPU count, at most 4; 1 = in this process)")
