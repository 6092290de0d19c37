"""The benchmark cases on CUDA: ``python benchmarks/bench_device.py [--cases a,c,d,e,f] [--quick] [--require-gpu]``.

When ``torch.cuda.is_available()`` it runs ``python -m entk_core bench --device cuda --json``
(cases a, c, d, e, f by default), prints the table and writes the JSON to
``benchmarks/results/device-<gpu name>-<date>.json`` (``-2``, ``-3``, ... when that file
exists). Without a GPU it says so in one line and exits 0 (1 with ``--require-gpu``).
Nothing is downloaded: the cases use the library's own models and data (case f trains its
MLP locally when ``runs/modadd-mlp-p29-seed0`` is absent), and the Hugging Face libraries
are kept offline for the child processes. Exit status: the bench's (1 when a case failed).
See :mod:`entk_core.bench` for the cases and what is measured."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
DEFAULT_CASES = "a,c,d,e,f"


def sanitise(name: str) -> str:
    """A file-name-safe, lower-case form of a GPU name: ``NVIDIA H200`` -> ``nvidia-h200``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def result_path(gpu_name: str, date: str | None = None, folder: str = RESULTS) -> str:
    """``<folder>/device-<sanitised gpu name>-<date>.json``, not overwriting an earlier file."""
    stem = f"device-{sanitise(gpu_name)}-{date or datetime.date.today().isoformat()}"
    path, n = os.path.join(folder, stem + ".json"), 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(folder, f"{stem}-{n}.json")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench_device.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated cases (default {DEFAULT_CASES})")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--quick", action="store_true", help="passed to the bench (case b/e/f shortcuts)")
    ap.add_argument("--require-gpu", action="store_true", help="exit 1 (not 0) when no CUDA GPU is available")
    ap.add_argument("--out", default=None, help="the JSON file to write (default benchmarks/results/device-...json)")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("bench_device: no CUDA GPU here (torch.cuda.is_available() is False); nothing run")
        return 1 if args.require_gpu else 0

    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})  # never download
    cmd = [sys.executable, "-m", "entk_core", "bench", "--device", "cuda", "--json", "--cases", args.cases,
           "--dtype", args.dtype] + (["--quick"] if args.quick else [])
    print("bench_device: " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)  # progress: stderr, as it goes
    try:
        result = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        print(f"bench_device: the bench printed no JSON (exit {proc.returncode})", file=sys.stderr)
        return proc.returncode or 1

    sys.path.insert(0, ROOT)
    from entk_core.bench import format_table

    print(format_table(result))
    gpu = result["machine"].get("gpu_name") or torch.cuda.get_device_name(0)
    path = args.out or result_path(gpu)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    print(f"bench_device: figures written to {os.path.relpath(path, ROOT)}", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
