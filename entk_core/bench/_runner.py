"""What the peer and method benchmarks share: one child process per case, a time limit per
call, and the command-line driver (table or ``--json``)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

__all__ = ["common_args", "save_partial", "table_rows", "table_head", "Timeout", "time_limit", "run_children", "split_names",
           "one_line", "cli", "command_line"]


def command_line() -> str:
    """The command this process was started with, as a user would type it."""
    a0 = sys.argv[0].replace(os.sep, "/")
    if a0.endswith("entk_core/__main__.py"):
        prog = "python -m entk_core"
    elif a0.endswith("entk_core/bench/__main__.py"):
        prog = "python -m entk_core.bench"
    else:
        prog = "python " + os.path.relpath(sys.argv[0])
    return " ".join([prog] + sys.argv[1:])


class Timeout(Exception):
    """A call ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Timeout` in the main thread after ``seconds`` (SIGALRM; between Python
    bytecodes, so a long single torch call finishes first)."""
    def handler(signum, frame):
        raise Timeout(f"stopped after {seconds:g} s (--max-seconds)")
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def save_partial(case: str, record: dict[str, Any]) -> None:
    """Keep a finished case's record in ``$ENTK_CACHE_DIR/bench-partial/`` too (default
    ``./.entk_cache``), so an interrupted long run keeps the cases it finished."""
    name = os.path.basename(sys.argv[0]) if not sys.argv[0].endswith("__main__.py") else "bench"
    folder = os.path.join(os.environ.get("ENTK_CACHE_DIR", ".entk_cache"), "bench-partial")
    try:
        os.makedirs(folder, exist_ok=True)
        stem = f"{os.path.splitext(name)[0]}-{case}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        with open(os.path.join(folder, stem), "w") as fh:
            json.dump(record, fh)
    except OSError:
        pass   # a read-only folder: the record is still printed


def one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (what a failing library or method is reported as)."""
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg.splitlines()[0][:limit] if msg else ''}"


def split_names(value, known, what: str) -> list[str]:
    """A comma-separated string (or a sequence) of names, each checked against ``known``."""
    names = [c.strip() for c in (value.split(",") if isinstance(value, str) else value)]
    for c in names:
        if c not in known:
            raise ValueError(f"unknown {what} {c!r}; known: {', '.join(known)}")
    return names


def run_children(module: str, cases: list[str], args: list[str], progress: Callable | None = None
                 ) -> dict[str, dict[str, Any]]:
    """``python -m module --_child CASE *args`` for every case, each in a process of its own
    (peak memory per case; a crash is that case's ``error``); ``{case: record}``."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(cases):
        if progress:
            progress(i, len(cases), c)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", module, "--_child", c, *args], capture_output=True, text=True,
                              env=env, cwd=root)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            out[c] = {"case": c, "error": (proc.stderr or proc.stdout).strip().splitlines()[-5:]}
            continue
        out[c] = {**json.loads(lines[-1]), "wall_s": time.perf_counter() - t0}
    return out


def common_args(ap) -> None:
    """The options every child-process benchmark has: ``--n``, ``--threads``, ``--json``."""
    import argparse

    ap.add_argument("--n", type=int, default=None, help="inputs per case (default: each model's N)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads in each case (default: torch's); 1 is fairer on a machine loaded beyond its cores")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)


def cli(args, child: Callable[[], dict], run: Callable[[Callable], dict], table: Callable[[dict], str]) -> int:
    """The driver: ``--_child`` prints one case's JSON; else run every case and print a table or JSON."""
    if args._child:
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        rec = child()
        save_partial(args._child, rec)
        print(json.dumps(rec))
        return 0
    try:
        res = run(lambda i, t, c: print(f"[{i}/{t}] {c}", file=sys.stderr, flush=True))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=2) if args.json else table(res))
    return 0 if all("error" not in r for r in res["cases"].values()) else 1


def table_head(result: dict[str, Any], *more: str) -> list[str]:
    """The first lines of a table: the machine and its load, then ``more``."""
    m = result["machine"]
    return [f"machine: {m['cpu_model']}, {m['usable_cores']} cores, torch {m['torch']}, loadavg start "
            f"{m['loadavg_start'][0]:.2f} end {m['loadavg_end'][0]:.2f}", *more]


def table_rows(result: dict[str, Any], key: str, row: Callable[[str, str, dict], str],
               tail: Callable[[dict], str | None]) -> list[str]:
    """One line per case and entry of ``record[key]`` (``row(case, name, entry)``), then
    ``tail(record)`` when not ``None``; a failed case is one ``ERROR`` line."""
    lines = []
    for c, rec in result["cases"].items():
        if "error" in rec:
            lines.append(f"{c:16} ERROR: {' | '.join(rec['error'])}")
            continue
        lines += [row(c, name, r) for name, r in rec[key].items()]
        t = tail(rec)
        if t is not None:
            lines.append(t)
    return lines
