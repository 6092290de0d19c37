"""Estimate against measured for the dashboard's long actions, every phase (issue 22).

For each action a page offers with an estimate, computed on an empty result cache (a fresh
temporary folder; the engine's calibrated rates are copied in, so nothing is re-calibrated),
exactly as the page runs it: the phases' estimates
(:mod:`entk_core.workflows.estimates`), then one worker job running the phases in order
(:class:`entk_core.workflows.jobs.Job`), each phase timed from the worker's progress.

Actions: Grokking's first visit on ``modadd-mlp-p29-seed0`` (the sweep over 51 checkpoints,
then the PCA baseline over training); the Training dynamics page on the same run (its default
group and reduction: the kernel at every checkpoint and its measures, the sweep from those
kernels, the animation's frames); the Transformer page on
``modadd-transformer-p29-seed2`` (its unembed spectrum, then "the overlap over training": the
sweep over 201 checkpoints and the PCA baseline). Prints one row per phase with the ratio
measured / estimate, and the load average before and after (the machine may be shared).

    python benchmarks/bench_estimates.py [--only grokking|dynamics|transformer] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _job(run, steps) -> list[float]:
    """Run ``steps`` in one worker; the seconds each step took (from its progress messages)."""
    from entk_core.workflows.jobs import Job

    job = Job(run=str(run.path), steps=steps).start()
    t0 = time.perf_counter()
    marks = {0: t0}

    def on_progress(done, total, message):
        marks.setdefault(job.step, time.perf_counter())

    job.wait(on_progress, interval=0.05)
    end = time.perf_counter()
    starts = [marks.get(i) for i in range(len(steps))]
    out = []
    for i, s in enumerate(starts):
        nxt = next((x for x in starts[i + 1:] if x is not None), end)
        out.append(round(nxt - (s if s is not None else nxt), 2))
    return out


def actions(runs: Path, only: str | None):
    from entk_core.families.modadd_transformer import analysis as T
    from entk_core.families.run import open_run
    from entk_core.workflows import alignment, estimates

    if only in (None, "grokking"):
        run = open_run(runs / "modadd-mlp-p29-seed0")
        yield ("Grokking first visit", run, [
            ("sweep, 51 checkpoints", lambda: estimates.sweep_seconds(run, group="full"),
             {"target": "entk_core.workflows.alignment:grokking_sweep", "kwargs": {"group": "full"}}),
            ("PCA baseline over training", lambda: estimates.pca_over_training_seconds(run),
             {"target": "entk_core.workflows.baselines:pca_profile", "kwargs": {}})])
    if only in (None, "dynamics"):
        from entk_core.workflows.dynamics import dynamics_seconds
        from entk_core.workflows.dynamics_frames import training_frames_seconds
        from entk_core.workflows.sweep import default_spec, resolve_spec

        run = open_run(runs / "modadd-mlp-p29-seed0")
        red = run.family.default_reduction  # the page's defaults: the full group, the family's reduction
        kw = {"group": "full", "reduction": red}
        spec = resolve_spec(default_spec(run, "full", reduction=red), run)
        yield ("Training dynamics", run, [
            (f"kernels at {len(run.epochs)} checkpoints", lambda: dynamics_seconds(run, "full", red),
             {"target": "entk_core.workflows.dynamics:dynamics", "kwargs": kw}),
            ("sweep from those kernels", lambda: estimates.sweep_seconds(run, spec, kernels_cached=True),
             {"target": "entk_core.workflows.dynamics_frames:training_sweep", "kwargs": kw}),
            ("the animation's frames", lambda: training_frames_seconds(run),
             {"target": "entk_core.workflows.dynamics_frames:training_frames", "kwargs": kw})])
    if only in (None, "transformer"):
        run = open_run(runs / "modadd-transformer-p29-seed2")
        spec = T.sweep_spec(run, "unembed")
        top = max(run.family.default_top, T.mode_blocks(len(T.run_key_frequencies(run)))[1][1])
        kw = {"epoch": run.epochs[-1], "group": "unembed", "reduction": "mean", "top": top}
        yield ("Transformer spectrum (unembed)", run, [
            ("spectrum, last checkpoint", lambda: estimates.spectrum_seconds(run, run.epochs[-1], group="unembed",
                                                                             reduction="mean", top=top),
             {"target": "entk_core.workflows.analysis:spectrum", "kwargs": kw})])
        yield ("Transformer overlap over training", run, [
            (f"sweep, {len(run.epochs)} checkpoints", lambda: estimates.sweep_seconds(run, spec),
             {"target": "entk_core.workflows.alignment:spec_sweep", "kwargs": {"spec": alignment.spec_dict(spec)}}),
            ("PCA baseline over training", lambda: estimates.pca_over_training_seconds(run),
             {"target": "entk_core.workflows.baselines:pca_profile", "kwargs": {}})])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["grokking", "dynamics", "transformer"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    runs = Path(os.environ.get("ENTK_RUNS_DIR", REPO / "runs")).resolve()
    rates = Path(os.environ.get("ENTK_CACHE_DIR", REPO / ".entk_cache")) / "engine-rates.json"
    rows, load0 = [], os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="entk-est-") as tmp:
        os.environ["ENTK_CACHE_DIR"] = tmp
        os.environ["ENTK_RUNS_DIR"] = str(runs)
        if rates.exists():
            shutil.copy(rates, Path(tmp) / rates.name)
        from entk_core.workflows.jobs import prestart_workers

        prestart_workers()  # as a page does before its first offer
        for action, run, phases in actions(runs, args.only):
            est = [f() for _, f, _ in phases]
            took = _job(run, [s for _, _, s in phases])
            total_e = sum(e or 0 for e in est)
            for (name, _, _), e, m in zip(phases, est, took):
                rows.append({"action": action, "phase": name, "estimate_s": None if e is None else round(e, 1),
                             "measured_s": m, "ratio": None if not e else round(m / e, 2)})
            rows.append({"action": action, "phase": "all phases", "estimate_s": round(total_e, 1),
                         "measured_s": round(sum(took), 1), "ratio": round(sum(took) / total_e, 2) if total_e else None})
            print(f"{action}: done", file=sys.stderr)
    load1 = os.getloadavg()
    print(f"{'action':36s} {'phase':30s} {'estimate s':>10s} {'measured s':>10s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['action']:36s} {r['phase']:30s} {r['estimate_s'] if r['estimate_s'] is not None else '-':>10} "
              f"{r['measured_s']:>10} {r['ratio'] if r['ratio'] is not None else '-':>6}")
    print(f"load average: {load0[0]:.1f} before, {load1[0]:.1f} after ({os.cpu_count()} cores)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "load_average": [load0, load1], "cpus": os.cpu_count()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
