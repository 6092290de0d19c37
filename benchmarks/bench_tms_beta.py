"""Time what the TMS page's β slider recomputes for a new (uncached) β once the model is loaded:
the β-rescaled spectrum, heatmap and both figures serialised for the browser.

Usage: python benchmarks/bench_tms_beta.py RUN [RUN ...]   (run folders under $ENTK_RUNS_DIR or paths)
"""
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["ENTK_CACHE_DIR"] = tempfile.mkdtemp()  # a cold cache: every beta is computed
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from entk_core.families.tms import analysis as T
from entk_core.families.run import open_run  # noqa: E402
from entk_core.figures import spectrum_figure
import plotly.graph_objects as go
def heat(H):
    return go.Figure(go.Heatmap(z=H, zmin=0, zmax=1))
for name in sys.argv[1:]:
    run = open_run(name)
    model = run.load_model()
    t = time.perf_counter()
    T.stats(run, model=model)
    ts = time.perf_counter() - t
    times = []
    for beta in (0.0, 0.05, 0.3, 0.65, 1.0):
        t = time.perf_counter()
        res = T.analyse(run, beta=beta, model=model)
        f1 = spectrum_figure(res.eigenvalues, res.cliffs, reference_lines={"r": 9.5, "n": 49.5}).to_json()
        f2 = heat(res.heatmap).to_json()
        times.append((beta, round(time.perf_counter() - t, 3), res.meta["gram_s"], res.meta["eig_s"]))
    t = time.perf_counter()
    res = T.analyse(run, beta=0.3, model=model)
    tc = time.perf_counter() - t
    print(name, f"stats(load) {ts:.2f}s", "uncached (beta, total, gram, eig):", times, f"cached {tc*1000:.0f} ms", flush=True)
