"""Cold and warm ``python -m entk_core dynamics`` on the 51-checkpoint demo MLP, as a user runs it.

Trains the demo run (``train modadd-mlp --p 29 --width 512 --epochs 500 --seed 0``, about 10 s)
into a temporary folder, or uses ``--run RUN``; then, each in a fresh process with a cold
cache in a temporary folder:

* ``dynamics RUN --json`` cold (the target: at most 20 s on 2 cores), then warm (served from
  the cache);
* ``sweep RUN --json`` cold, the baseline measured in the same run: the same per-checkpoint
  kernels through the same executor, with a top-200 eigendecomposition instead of the
  dynamics' measures. The ratio dynamics/sweep travels between machines better than seconds.

Wall seconds and CPU seconds (user + system of the command and its worker processes) are
printed for each; the machine's load average is printed beside them, since on a shared
machine the wall time is inflated and the CPU time much less so. ``--repeat N`` takes the
best of N cold runs (each in a fresh cache). Not a test: nothing is asserted.

    python benchmarks/bench_dynamics.py [--run RUN] [--repeat N] [--json [FILE]]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 20.0
"""Issue 19's target for a cold ``dynamics`` of the demo MLP on 2 cores."""
DEMO = ["train", "modadd-mlp", "--p", "29", "--width", "512", "--epochs", "500", "--seed", "0"]


def _timed(args: list[str], env: dict[str, str]) -> tuple[float, float, dict]:
    """``(wall s, CPU s of the process and its children, parsed JSON stdout)``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "entk_core", *args], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args[:2])} failed: {r.stderr.strip()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(r.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="an existing run of the demo MLP (default: train it in a temp folder)")
    ap.add_argument("--repeat", type=int, default=1, help="cold runs of each command (best is reported)")
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                    help="write the figures as JSON to FILE (or stdout)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dynamics-"))
    try:
        return _bench(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bench(args: argparse.Namespace, tmp: Path) -> int:
    env = {**os.environ, "ENTK_PROGRESS": "off", "ENTK_RUNS_DIR": str(tmp / "runs")}
    run = args.run
    train_s = None
    if run is None:
        run = str(tmp / "runs" / "modadd-mlp-p29-seed0")
        train_s, _, _ = _timed([*DEMO, "--out", run, "--json"], {**env, "ENTK_CACHE_DIR": str(tmp / "c-train")})
    load = os.getloadavg()
    figures: dict[str, dict] = {}
    for name, cmd in (("dynamics", ["dynamics", run, "--json"]), ("sweep", ["sweep", run, "--json"])):
        best = None
        for i in range(max(1, args.repeat)):
            cenv = {**env, "ENTK_CACHE_DIR": str(tmp / f"cache-{name}-{i}")}
            cold = _timed(cmd, cenv)
            if best is None or cold[0] < best[0][0]:
                warm = _timed(cmd, cenv) if name == "dynamics" else None
                best = (cold, warm)
        (cw, cc, out), warm = best
        figures[name] = {"cold_s": round(cw, 2), "cold_cpu_s": round(cc, 2),
                         "executor": out.get("executor"), "cache": out.get("cache")}
        if warm is not None:
            figures[name].update(warm_s=round(warm[0], 2), warm_cpu_s=round(warm[1], 2), warm_cache=warm[2]["cache"],
                                 checkpoints=len(out["checkpoints"]))
    d, s = figures["dynamics"], figures["sweep"]
    result = {
        "benchmark": "dynamics cold/warm on the demo MLP (p=29, width 512, 500 epochs, 51 checkpoints)",
        "target_s": TARGET_S, "meets_target": d["cold_s"] <= TARGET_S,
        "dynamics": d, "sweep_baseline": s,
        "ratio_cold_dynamics_to_sweep": round(d["cold_s"] / s["cold_s"], 3),
        "ratio_cpu_dynamics_to_sweep": round(d["cold_cpu_s"] / s["cold_cpu_s"], 3),
        "train_s": None if train_s is None else round(train_s, 2),
        "machine": {"cpus": os.cpu_count(), "load_avg_1_5_15": [round(x, 2) for x in load],
                    "python": platform.python_version(), "platform": platform.platform()},
        "repeat": args.repeat,
    }
    print(f"dynamics cold {d['cold_s']:.1f} s (CPU {d['cold_cpu_s']:.1f} s; target {TARGET_S:.0f} s: "
          f"{'met' if result['meets_target'] else 'NOT met'}), warm {d['warm_s']:.2f} s (CPU {d['warm_cpu_s']:.1f} s), "
          f"{d['checkpoints']} checkpoints, {d['executor']}", file=sys.stderr)
    print(f"sweep cold {s['cold_s']:.1f} s (CPU {s['cold_cpu_s']:.1f} s); dynamics/sweep: "
          f"{result['ratio_cold_dynamics_to_sweep']:.2f} wall, {result['ratio_cpu_dynamics_to_sweep']:.2f} CPU; "
          f"load average {load[0]:.1f} on {os.cpu_count()} CPUs", file=sys.stderr)
    if args.json == "-":
        print(json.dumps(result, indent=1))
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
