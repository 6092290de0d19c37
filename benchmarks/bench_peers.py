"""entk_core against its peers: ``python benchmarks/bench_peers.py [--cases ...] [--libs ...] [--json]``.

The same as ``python -m entk_core bench --peers``; see :mod:`entk_core.bench.peers`. It installs
nothing: the peers (nngeometry, ASDL, BackPACK) are timed where they are importable."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from entk_core.bench.peers import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
