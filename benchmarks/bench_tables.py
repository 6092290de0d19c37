"""README tables from the bench's raw JSON: ``python benchmarks/bench_tables.py FILE.json [...]``.

Prints, as Markdown, the table of each file it is given: a ``bench --json`` file (cases a-f),
a ``bench --peers --json`` file or a ``bench --methods --json`` file (recognised by their
contents). The README's Performance tables are this script's output on the files in
``docs/results/``, so a re-run on another machine gives the new tables directly."""
from __future__ import annotations

import json
import sys


def _s(t: float) -> str:
    return f"{t:.3g} s" if t < 100 else f"{t:,.0f} s"


def _mb(x: float) -> str:
    return f"{x / 1024:.2f} GB" if x >= 1000 else f"{x:.0f} MB"


def load_line(d: dict) -> str:
    m = d["machine"]
    return (f"{m['cpu_model']}, {m['usable_cores']} cores, torch {m['torch']}; load average "
            f"{m['loadavg_start'][0]:.1f} at the start, {m['loadavg_end'][0]:.1f} at the end")


def cases_table(d: dict) -> str:
    rows = ["| case | reference (tutorial) | eNTK Explorer | speedup | max rel. error | ref. vs float64 brute force "
            "| peak memory (ref.) | load avg. |", "|---|---|---|---|---|---|---|---|"]
    for c, r in d["cases"].items():
        if "time_ref" not in r:
            rows.append(f"| ({c}) | {r.get('error') or r.get('skipped')} | | | | | | |")
            continue
        ext = " (extrapolated)" if r.get("ref_extrapolated") else ""
        fext = ext if "subset_times" in r else ""
        sp = f"{r['speedup']:.1f}×"
        if "fast_over_floor" in r:
            sp += f" ({r['fast_over_floor']:.2f}× the {_s(r['time_floor'])} floor)"
        if "speedup_full" in r:
            sp = f"trace {r['speedup_trace']:.1f}×, full {r['speedup_full']:.1f}×"
        ref = r.get("ref_peak_rss_mb")
        rows.append(f"| ({c}) {r['description'].split(';')[0]} | {_s(r['time_ref'])}{ext} | {_s(r['time_fast'])}{fext} | {sp} "
                    f"| {r['max_rel_error']:.1e} | {r.get('ref_check_rel_error_f64', float('nan')):.1e} "
                    f"| {_mb(r['peak_rss_mb'])}{f' ({_mb(ref)})' if ref else ''} "
                    f"| {r.get('loadavg_before', [0])[0]:.0f}–{r.get('loadavg_after', [0])[0]:.0f} |")
    return "\n".join(rows)


def peers_table(d: dict) -> str:
    libs = d["settings"]["libs"]
    rows = ["| case (N, C, P) | " + " | ".join(libs) + " | entk_core vs best peer |",
            "|---|" + "---|" * (len(libs) + 1)]
    for c, rec in d["cases"].items():
        if "error" in rec:
            rows.append(f"| {c} | error: {' '.join(rec['error'])[:120]} |" + " |" * len(libs))
            continue
        cells = []
        for lib in libs:
            r = rec["libs"].get(lib, {})
            if "seconds" in r:
                cells.append(f"{_s(r['seconds'])}, +{_mb(r['peak_delta_mb'])}, {r['max_rel_error']:.0e}")
            else:
                why = r.get("skipped") or r.get("failed") or ""
                cells.append("not run (" + ("flops" if "flops" in why else "time limit" if "stopped" in why
                                            else "not installed" if "not installed" in why else "fails") + ")")
        best = rec.get("entk_core_speedup_vs_best_peer")
        vs = f"{best:.2f}× ({rec['best_peer']})" if best else "-"
        rows.append(f"| {c} ({rec['N']:,}, {rec['C']}, {rec['P']:,}) | " + " | ".join(cells) + f" | {vs} |")
    return "\n".join(rows)


def methods_table(d: dict) -> str:
    rows = ["| case (N) | auto (path) | structured | jacobian | ntk_vp | auto / best forced | measured / estimate |",
            "|---|---|---|---|---|---|---|"]
    for c, rec in d["cases"].items():
        if "error" in rec:
            rows.append(f"| {c} | error | | | | | |")
            continue
        ms = rec["methods"]
        cell = []
        for m in ("auto", "structured", "jacobian", "ntk_vp"):
            r = ms.get(m, {})
            if "seconds" in r:
                cell.append(_s(r["seconds"]) + (f" ({r['path'].split('/')[0]})" if m == "auto" else ""))
            else:
                why = r.get("skipped") or r.get("failed") or ""
                cell.append("raises" if r.get("failed") else "est. over limit" if "estimated" in why
                            else "stopped" if "stopped" in why else "does not fit" if "fit" in why else "-")
        ratio = rec.get("auto_over_best_forced")
        spread = [r["measured_over_estimate"] for r in ms.values() if "measured_over_estimate" in r]
        rows.append(f"| {c} ({rec['N']}) | " + " | ".join(cell)
                    + f" | {f'{ratio:.2f}' if ratio else '-'}{' **' if ratio and ratio > 1.2 else ''} | "
                    + (f"{min(spread):.1f}–{max(spread):.1f}" if spread else "-") + " |")
    return "\n".join(rows)


def table(d: dict) -> str:
    if "peers" in d:
        return peers_table(d)
    if "summary" in d or any("methods" in r for r in d["cases"].values()):
        return methods_table(d)
    return cases_table(d)


def main(argv: list[str] | None = None) -> int:
    for path in (sys.argv[1:] if argv is None else argv):
        with open(path) as fh:
            d = json.load(fh)
        print(f"<!-- {path}: {d.get('command', '')} -->\n{load_line(d)}\n\n{table(d)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
