"""Run the benchmarks of the job and write their figures.

    .venv/bin/python -m benchmarks [--only stack,memory,end_to_end,command,startup,sessions] [--workdir DIR] [--json PATH]

stack: the sigma-clip kernel on 20 frames of 2048 x 2048 vs astropy and ccdproc
(``bench_stack``); memory: ``skyprep run`` on 40 frames of 4096 x 4096 on one worker
(``bench_memory``); end_to_end: ``skyprep run`` over two 2048 x 2048 sessions vs the astropy
decompression floor, inside an already started cluster (``bench_end_to_end``); command: the
``skyprep run`` command over three such sessions, start-up included, vs the floor and a naive
astropy + ccdproc script (``bench_command``); startup: ``skyprep --help`` and ``skyprep info``
(``bench_startup``); sessions: the command's cost per session from 1 to 50 small sessions and the
client's share over 1,000 tiny ones (``bench_sessions``). Each prints its table; all reports go
to one JSON file (default ``benchmarks/results.json``) with a pass/fail line per target.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks import bench_command, bench_end_to_end, bench_memory, bench_sessions, bench_stack, bench_startup


def targets(reports: dict) -> dict[str, bool]:
    """The issue's targets, each met or not."""
    met = {}
    if "stack" in reports:
        met["stack >= 5x astropy"] = reports["stack"]["speedup"]["astropy"] >= 5.0
        met["stack >= 10x ccdproc"] = reports["stack"]["speedup"]["ccdproc"] >= 10.0
    if "memory" in reports:
        r = reports["memory"]
        met["memory peak < 1.5 GB"] = r["worker_peak_rss_mb"] < r["target_mb"]
        met["each e91 strip decoded once"] = r["e91_strip_reads"] == r["e91_strips"]
    if "end_to_end" in reports:
        met["end to end <= 2.5x floor"] = reports["end_to_end"]["ratio"] <= reports["end_to_end"]["target_ratio"]
    if "command" in reports:
        r = reports["command"]
        met[f"command <= {r['target_ratio']}x floor"] = r["ratio"] <= r["target_ratio"]
        met[f"command >= {r['target_speedup']}x faster than ccdproc"] = r["speedup"] >= r["target_speedup"]
    if "startup" in reports:
        r = reports["startup"]
        for name in ("skyprep --help", "skyprep info"):
            met[f"{name} < {r['target_s']} s"] = r["median_s"][name] < r["target_s"]
    return met


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="stack,memory,end_to_end")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/skyprep-bench"))
    ap.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results.json")
    args = ap.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    args.workdir.mkdir(parents=True, exist_ok=True)
    reports, tables = {}, []
    for name in chosen:
        if name == "stack":
            reports[name] = bench_stack.run_benchmark(20, 2048, 3)
            tables.append(bench_stack.format_table(reports[name]))
        elif name == "memory":
            reports[name] = bench_memory.run_benchmark(args.workdir)
            tables.append(bench_memory.format_table(reports[name]))
        elif name == "end_to_end":
            reports[name] = bench_end_to_end.run_benchmark(args.workdir)
            tables.append(bench_end_to_end.format_table(reports[name]))
        elif name == "command":
            reports[name] = bench_command.run_benchmark(args.workdir)
            tables.append(bench_command.format_table(reports[name]))
        elif name == "startup":
            reports[name] = bench_startup.run_benchmark(args.workdir)
            tables.append(bench_startup.format_table(reports[name]))
        elif name == "sessions":
            reports[name] = bench_sessions.run_benchmark(args.workdir)
            tables.append(bench_sessions.format_table(reports[name]))
        else:
            ap.error(f"unknown benchmark {name!r} (stack, memory, end_to_end, command, startup, sessions)")
    met = targets(reports)
    print("\n\n".join(tables))
    print("\ntargets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in met.items()))
    args.json.write_text(json.dumps({"reports": reports, "targets": met}, indent=2))
    print(f"wrote {args.json}")
    return {"reports": reports, "targets": met}


if __name__ == "__main__":
    main()
