"""Command line: ``python -m entk_core COMMAND ...``.

Commands print human-readable text, or one JSON document on stdout with ``--json``.
Progress bars go to stderr. Any failure is a single ``error: ...`` line on stderr and
a non-zero exit status (2 for bad input, 1 for anything unexpected, 130 when
interrupted); set ``ENTK_DEBUG=1`` to see tracebacks.

Each command lives in a module of this package with an ``add_commands(subparsers)``
function; :data:`COMMAND_MODULES` lists them in the order ``--help`` shows them.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ..errors import USER_ERRORS, debug_enabled, one_line
from .common import tqdm_progress

__all__ = ["main", "build_parser", "one_line", "tqdm_progress", "COMMAND_MODULES"]

COMMAND_MODULES = (
    "entk_core.cli.runs",
    "entk_core.cli.analysis",
    "entk_core.cli.dynamics",
    "entk_core.cli.grid",
    "entk_core.cli.export",
    "entk_core.cli.lm",
)
"""Modules defining commands (each has ``add_commands(subparsers)``)."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m entk_core",
                                 description="eNTK Explorer: train models, compute eNTK spectra, align them with features.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    sub.add_parser("bench", help="benchmark the eNTK paths against the reference (bench --help)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the benchmark has its own parser (python -m entk_core bench --help)
        from .. import bench

        return int(bench.main(argv[1:]) or 0)
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. `... | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("error: interrupted (nothing saved is lost; `train` resumes from the last checkpoint)", file=sys.stderr)
        return 130
    except USER_ERRORS as e:  # bad input (entk_core.errors): one line, status 2
        if debug_enabled():
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the CLI never shows a traceback
        if debug_enabled():
            raise
        print(f"error: unexpected {e.__class__.__name__}: {one_line(e)} (set ENTK_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
