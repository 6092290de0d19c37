"""The memory planner's estimate against the real peak memory of the computation.

Each request runs in a fresh subprocess (one torch thread): the model and inputs are
built, a 4-input warm-up loads the libraries and primes the allocator, the peak is reset
(``/proc/self/clear_refs``), then ``empirical_ntk`` runs and the growth of ``VmHWM`` over
the resident size before it is the measured peak. It must lie within
``[estimate / UNDER, OVER · estimate]`` (plus :data:`SLACK_MB` of allocator noise), with
the estimate from the engine's public :func:`entk_core.engine.kernels.estimate_ntk`.

Measured here (2 shared cores, torch 2.13 CPU): measured/estimate = 0.93 (MLP trace),
0.75 (MLP flat), 0.46 (Transformer mean), 1.14 (TMS flat).
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
OVER = 1.5    # the real peak is at most 1.5x the estimate ...
UNDER = 3.0   # ... and the estimate at most 3x the real peak
SLACK_MB = 32.0

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
        print(json.dumps({"skip": "cannot reset the peak (/proc/self/clear_refs)"}))
        sys.exit(0)
    K = empirical_ntk(model, x, reduction=reduction, **kw)
    print(json.dumps({"measured_mb": status_mb("VmHWM") - base, "estimate_mb": plan.bytes / 2**20,
                      "method": plan.method, "output_mb": plan.output_bytes / 2**20}))
""")

REQUESTS = [
    ("modadd-mlp", {"p": 29, "width": 512}, "trace", "-"),       # 841 inputs, C = 29: factors >> output
    ("modadd-mlp", {"p": 17, "width": 256}, "flat", "-"),        # the (C·N)² = 4,913² flattened kernel
    ("modadd-transformer", {}, "mean", "-"),                     # attention, 841 sequences
    ("tms", {"n_points": 200}, "flat", "1.0"),                   # 10,000² flattened, class weights
]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("family, config, reduction, beta", REQUESTS,
                         ids=[f"{f}-{r}" for f, _, r, _ in REQUESTS])
def test_planner_estimate_bounds_the_real_peak(family, config, reduction, beta):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", CHILD, family, json.dumps(config), reduction, beta], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if "skip" in res:
        pytest.skip(res["skip"])
    measured, est = res["measured_mb"], res["estimate_mb"]
    assert measured >= res["output_mb"] * 0.9, res  # the measurement sees at least the result itself
    assert measured <= OVER * est + SLACK_MB, f"real peak {measured:.0f} MB > {OVER} x estimate {est:.0f} MB ({res})"
    assert est <= UNDER * measured + SLACK_MB, f"estimate {est:.0f} MB > {UNDER} x real peak {measured:.0f} MB ({res})"
