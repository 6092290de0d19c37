"""Benchmark of the eNTK kernel paths: ``python benchmarks/bench_entk.py [--json] [--quick] [--cases a,b]``.

See :mod:`entk_core.bench` for the cases and what is measured."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from entk_core.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
