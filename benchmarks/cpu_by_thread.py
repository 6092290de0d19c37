"""Where a Grokking epoch step's CPU goes, by process and thread: one lone session, then N at once.

The six-session benchmark (``bench_dashboard.py --sessions 6``) gives one number per step for
the whole machine. This splits it up. It uses the same server, pages and steps
(:mod:`bench_sessions`). Every process's CPU time comes from ``/proc/<pid>/stat``, which
still counts threads that have ended, such as Streamlit's script-run threads. Every live
thread's comes from ``/proc/<pid>/task/<tid>/stat``.

Each process is sorted by kind: the server, chromium's processes by ``--type`` (``renderer``,
``gpu-process``, ``browser``, ``utility:NetworkService`` ...), Playwright's driver, this
harness, and the rest. Counters are read before and after each phase, and the output is
milliseconds of CPU per step::

    python benchmarks/cpu_by_thread.py [--sessions 6] [--steps 10] [--warmup 2]

Found with it on 2026-12-05: with six sessions, the GPU process's compositor spent 98 ms per
step against 26 ms alone. The cause was Streamlit's one-second stale-element fade, which runs
only when a step takes longer than half a second (``entk_core/ui/style.py``). Not a test.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

import bench_sessions as bs  # noqa: E402
from browser_util import CHROMIUM, CHROMIUM_ARGS, StreamlitServer  # noqa: E402

def _kind(pid: int) -> str | None:
    """What process ``pid`` is (None when it is gone)."""
    try:
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    cmd = " ".join(a.decode(errors="replace") for a in argv)
    if "chromium" in cmd:
        m = re.search(r"--type=([\w-]+)", cmd)
        kind = m.group(1) if m else "browser"
        if kind == "utility":
            sub = re.search(r"--utility-sub-type=([\w.]+)", cmd)
            kind += ":" + (sub.group(1).rsplit(".", 1)[-1] if sub else "?")
        return "chromium " + kind
    if "streamlit" in cmd:
        return "server"
    if "playwright" in cmd or Path(argv[0].decode(errors="replace")).name == "node":
        return "playwright driver"
    if pid == os.getpid():
        return "this harness"
    return "other"


def snapshot() -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """CPU seconds so far: by process kind (ended threads included), and by (kind, thread name)
    for the threads alive now (digits in names folded: ``ThreadPoolForeg#``)."""
    procs: dict[str, float] = defaultdict(float)
    threads: dict[tuple[str, str], float] = defaultdict(float)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        kind = _kind(int(d.name))
        if kind is None:
            continue
        try:
            procs[kind] += bs.stat_cpu_s(d / "stat")
            for t in (d / "task").iterdir():
                name = (t / "comm").read_text().strip()
                if name.startswith("kworker"):  # its name changes with its work item: one line for all
                    name = "kworker"
                name = re.sub(r"\d+$", "#", name)
                threads[(kind, name)] += bs.stat_cpu_s(t / "stat")
        except OSError:
            continue
    return procs, threads


def report(title: str, before, after, steps: int, top: int = 12) -> None:
    per = lambda a, b: {k: 1000 * (b.get(k, 0.0) - a.get(k, 0.0)) / steps for k in set(a) | set(b)}  # noqa: E731
    procs, threads = per(before[0], after[0]), per(before[1], after[1])
    print(f"\n{title}: ms of CPU per step (whole machine {sum(procs.values()):.0f})")
    for kind, ms in sorted(procs.items(), key=lambda kv: -kv[1]):
        if ms >= 1:
            print(f"  {kind:38s} {ms:7.0f}")
    print("  busiest threads (live ones; a process's ended threads are only in its total above):")
    for (kind, name), ms in sorted(threads.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {kind:32s} {name:24s} {ms:7.0f}")


async def _main(n: int, steps: int, warmup: int) -> None:
    from playwright.async_api import async_playwright

    env = {"ENTK_RUNS_DIR": os.environ.get("ENTK_RUNS_DIR", str(REPO / "runs")),
           "ENTK_CACHE_DIR": os.environ.get("ENTK_CACHE_DIR", str(REPO / ".entk_cache")), "ENTK_PROGRESS": "off"}
    from bench_dashboard import first_visit

    first_visit(env)  # the Grokking view cached, as in the six-session benchmark
    with StreamlitServer(REPO, env, Path("/tmp/entk_cpu_by_thread.log")) as srv:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            sessions = [await bs._open(browser, srv.url, 500 - 10 * i) for i in range(n)]
            await bs._warm(sessions, warmup)
            a = snapshot()
            alone = [await sessions[0].step() for _ in range(steps)]
            b = snapshot()
            many = await bs._rounds(sessions, steps)
            c = snapshot()
            await browser.close()
    p95 = lambda xs: 1000 * bs._pct(xs, 0.95)  # noqa: E731
    print(f"epoch steps on Grokking ({bs.RUN}), {steps} per phase after {warmup} warm-up steps per session")
    print(f"alone p95 {p95(alone):.0f} ms; {n} at once p95 {p95(many):.0f} ms ({p95(many) / p95(alone):.2f}x)")
    report("one session alone", a, b, steps)
    report(f"{n} sessions at once (per step of one session)", b, c, steps * n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=bs.WARMUP_STEPS)
    args = ap.parse_args(argv)
    asyncio.run(_main(args.sessions, args.steps, args.warmup))
    return 0


if __name__ == "__main__":
    sys.exit(main())
