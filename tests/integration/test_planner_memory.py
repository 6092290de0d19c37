"""The memory planner's estimate against the real peak memory of the computation.

Each request runs in a fresh subprocess (one torch thread): the model and inputs are
built, a 4-input warm-up loads the libraries and primes the allocator, the peak is reset
(``/proc/self/clear_refs``), then ``empirical_ntk`` runs and the growth of ``VmHWM`` over
the resident size before it is the measured peak. The ratio measured / estimate (the
estimate from the engine's public :func:`entk_core.engine.kernels.estimate_ntk`) must lie
in that request's window (:data:`REQUESTS`): the spread measured here widened by
:data:`MARGIN` on each side, so a change of the planner's model or of the engine's memory
use that moves a ratio beyond its usual noise fails.

Measured (2 shared cores under load from other jobs, torch 2.13 CPU, 2026-12-04; 5 runs
each, TMS 8): MLP trace 0.66-0.93 (the noisiest: 0.66, 0.81, 0.82, 0.82, 0.93), MLP flat
0.767-0.768, Transformer mean 0.545-0.572, TMS flat 1.03-1.21. Re-measured after the planner's time
model (issue 18.4; its chunk choice now depends on the machine's measured rates): MLP trace 0.77-0.88,
MLP flat 0.764-0.765, Transformer mean 0.547-0.579 here and 0.327 in a fresh clone whose rates were
measured afresh (another chunk); with the same plan (structured, chunk 421, estimate 48.9 MB) the
peak is small enough for the allocator's reuse of the warm-up's memory to move it: 0.210 in CI
(2026-12-05), 0.276-0.357 in 10 quiet runs here the same day. TMS flat 0.511-0.557 (was 1.03-1.21: its estimate about doubled with the time
model's plan; not investigated further). TMS flat per path, forced (3 runs each, 2026-12-04, the
machine loaded by one other job): structured 0.493-0.532, ntk_vp 1.005-1.065 (`auto` took ntk_vp in a
fresh clone whose rates were measured under that load: 1.020). Reproduce with
``python -c`` of :data:`CHILD` (see the test) a few times per request.

Needs Linux's ``/proc``: without it (or with an unwritable ``/proc/self/clear_refs``) the test
is skipped locally with that reason, and fails under ``CI=true`` (tests/_honest_skips.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MARGIN = 1.25
"""Each window is [lowest measured ratio / MARGIN, highest measured ratio x MARGIN]."""

CHILD = textwrap.dedent("""
    import gc, json, sys, torch
    from entk_core import get_family
    from entk_core.bench.measure import reset_peak, status_mb
    from entk_core.engine.kernels import empirical_ntk
    from entk_core.engine.kernels import estimate_ntk

    torch.set_num_threads(1)
    family, config, reduction, beta = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    fam = get_family(family)
    cfg = fam.config_from_dict(config)
    model, x = fam.build_model(cfg).eval(), fam.make_data(cfg).kernel_x
    kw = {} if beta == "-" else {"class_weights": fam.class_weights(cfg, float(beta))}
    empirical_ntk(model, x[:4], reduction=reduction, **kw)
    plan = estimate_ntk(model, x, reduction=reduction, **kw)
    gc.collect()
    base = status_mb("VmRSS")
    if not reset_peak():
        print(json.dumps({"skip": "cannot reset the peak memory: /proc/self/clear_refs is not writable"}))
        sys.exit(0)
    K = empirical_ntk(model, x, reduction=reduction, **kw)
    print(json.dumps({"measured_mb": status_mb("VmHWM") - base, "estimate_mb": plan.bytes / 2**20,
                      "method": plan.method, "output_mb": plan.output_bytes / 2**20}))
""")

REQUESTS = [  # (family, config, reduction, beta, (lowest, highest) measured ratio)
    ("modadd-mlp", {"p": 29, "width": 512}, "trace", "-", (0.66, 0.93)),    # 841 inputs, C = 29: factors >> output
    ("modadd-mlp", {"p": 17, "width": 256}, "flat", "-", (0.767, 0.768)),    # the (C·N)² = 4,913² flattened kernel
    ("modadd-transformer", {}, "mean", "-", (0.21, 0.579)),                  # attention, 841 sequences
    # 10,000² flattened, class weights; `auto` takes ntk_vp or structured by this machine's measured rates
    # (the time model), and each path's memory model has its own spread
    ("tms", {"n_points": 200}, "flat", "1.0", {"structured": (0.493, 0.557), "ntk_vp": (1.005, 1.065)}),
]


def window(measured: tuple[float, float]) -> tuple[float, float]:
    lo, hi = measured
    return lo / MARGIN, hi * MARGIN


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc to read the peak memory")
@pytest.mark.parametrize("family, config, reduction, beta, measured", REQUESTS,
                         ids=[f"{f}-{r}" for f, _, r, _, _ in REQUESTS])
def test_planner_estimate_bounds_the_real_peak(family, config, reduction, beta, measured):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", CHILD, family, json.dumps(config), reduction, beta], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if "skip" in res:
        pytest.skip(res["skip"])
    assert res["measured_mb"] >= res["output_mb"] * 0.9, res  # the measurement sees at least the result itself
    ratio = res["measured_mb"] / res["estimate_mb"]
    if isinstance(measured, dict):  # measured per path
        assert res["method"] in measured, f"the planner took {res['method']}, measured only {sorted(measured)}: {res}"
        measured = measured[res["method"]]
    lo, hi = window(measured)
    assert lo <= ratio <= hi, (f"real peak / estimate = {ratio:.3f}, outside [{lo:.3f}, {hi:.3f}] (measured "
                               f"{measured[0]}-{measured[1]}, margin x{MARGIN}): {res}")

