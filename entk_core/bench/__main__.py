"""``python -m entk_core.bench``: the benchmark's own entry point (also ``python -m entk_core bench``)."""
from . import main

raise SystemExit(main())
