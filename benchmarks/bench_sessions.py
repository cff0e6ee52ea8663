"""How the command's cost grows with the number of sessions, and the client's share of it.

    python -m benchmarks.bench_sessions [--counts 1,3,10,50 --size 256 --frames 6] [--tiny 1000] [--json PATH]

Per-session cost: ``skyprep run`` (``python -m pipeline``, a subprocess, its default local cluster) over archives of 1, 3, 10 and 50 small synthetic
sessions (``SynthSpec(sessions=n, size, frames)``), into a fresh store: the command's wall time,
the run's own time (from its report: discovery to the last session indexed) and both divided by
the number of sessions. Flat means the per-session run time does not grow with ``n``.

Client side: ``pipeline.runner.run`` in this process over ``--tiny`` tiny sessions (64 x 64 px,
3 e91 frames) on the command's default cluster (``runner.make_client()``), with the client's work per session timed: building
its graph, writing its store template and submitting it (``runner._submit``), and the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.common import machine, publish, skyprep, timed_command, warm_kernels_command
from pipeline import runner
from pipeline.config import Config
from pipeline.synth import SynthSpec, write_archive

COUNTS = (1, 3, 10, 50)


def _archive(workdir: Path, sessions: int, size: int, frames: int) -> Path:
    root = workdir / f"sessions-archive-{sessions}x{size}-{frames}"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        write_archive(root, SynthSpec(sessions=sessions, size=size, frames=frames, seed=0),
                      workers=len(os.sched_getaffinity(0)))  # fmt: skip
        (root / ".complete").touch()
    return root


def per_session(workdir: Path, counts=COUNTS, size: int = 256, frames: int = 6, log=print) -> list[dict]:
    """``skyprep run`` over each count of sessions: wall and run seconds, in total and per session."""
    rows = []
    log(f"kernels warmed in {warm_kernels_command():.1f} s (skyprep compile)")
    for n in counts:
        root, store = _archive(workdir, n, size, frames), workdir / f"sessions-{n}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        load = os.getloadavg()[0]
        cmd = timed_command(skyprep("run", str(root), "--out", str(store)))
        if cmd.returncode != 0:
            raise RuntimeError(f"skyprep run over {n} sessions failed:\n{cmd.stderr}")
        report = json.loads(store.with_name(store.name + ".report.json").read_text())
        if sum(s["status"] == "ok" for s in report["sessions"]) != n:
            raise RuntimeError(f"{n} sessions: not all ok: {report['sessions']}")
        rows.append({"sessions": n, "wall_s": cmd.seconds, "run_s": report["seconds"],
                     "wall_per_session_s": cmd.seconds / n, "run_per_session_s": report["seconds"] / n,
                     "fixed_s": cmd.seconds - report["seconds"], "peak_mb": cmd.peak_total_mb,
                     "load_avg_1min_at_start": load})  # fmt: skip
        log(f"{n:>4} sessions: wall {cmd.seconds:6.1f} s ({cmd.seconds / n:.2f} s/session), run "
            f"{report['seconds']:6.1f} s ({report['seconds'] / n:.2f} s/session), outside the run "
            f"{cmd.seconds - report['seconds']:.1f} s, peak {cmd.peak_total_mb:.0f} MB (load {load:.1f})")  # fmt: skip
    return rows


def client_side(workdir: Path, sessions: int, log=print) -> dict:
    """The client's build + template + submit time per session over a whole run of tiny sessions."""
    root, store = _archive(workdir, sessions, 64, 3), workdir / f"tiny-{sessions}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    spent: list[float] = []
    submit = runner._submit

    def timed_submit(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return submit(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - t0)

    runner._submit = timed_submit
    try:
        with runner.make_client() as client:
            t0 = time.perf_counter()
            report = runner.run(root, store, Config(), client, echo=lambda line: None)
            wall = time.perf_counter() - t0
    finally:
        runner._submit = submit
    if report.exit_code or len(report.results) != sessions:
        raise RuntimeError(f"tiny sessions: {report.table()}")
    result = {"sessions": sessions, "client_build_submit_s": sum(spent), "median_ms": 1e3 * statistics.median(spent),
              "first_ms": 1e3 * spent[0], "run_s": wall, "run_per_session_s": wall / sessions}  # fmt: skip
    log(f"{sessions} tiny sessions: client build + template + submit {sum(spent):.1f} s in all "
        f"(median {result['median_ms']:.0f} ms a session, first {result['first_ms']:.0f} ms); "
        f"whole run {wall:.1f} s ({wall / sessions:.3f} s/session)")  # fmt: skip
    return result


def run_benchmark(workdir: Path, counts=COUNTS, size: int = 256, frames: int = 6, tiny: int = 1000) -> dict:
    rows = per_session(workdir, counts, size, frames)
    return {"benchmark": "sessions", "size": size, "frames": frames, "per_session": rows,
            "client": client_side(workdir, tiny) if tiny else None, "machine": machine()}  # fmt: skip


def format_table(r: dict) -> str:
    lines = [f"sessions: skyprep run over n sessions of {r['size']} x {r['size']} ({r['frames']} e91)",
             "  n     wall s   wall s/session   run s   run s/session"]  # fmt: skip
    for row in r["per_session"]:
        lines.append(f"  {row['sessions']:<4}  {row['wall_s']:7.1f}  {row['wall_per_session_s']:14.2f}  "
                     f"{row['run_s']:6.1f}  {row['run_per_session_s']:13.2f}")  # fmt: skip
    if r["client"]:
        c = r["client"]
        lines.append(f"  client, {c['sessions']} tiny sessions: build + template + submit {c['client_build_submit_s']:.1f} s"
                     f" (median {c['median_ms']:.0f} ms a session); whole run {c['run_s']:.1f} s")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default=",".join(map(str, COUNTS)))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--tiny", type=int, default=1000, help="tiny sessions for the client-side figure (0: skip)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/skyprep-bench"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    report = run_benchmark(args.workdir, counts, args.size, args.frames, args.tiny)
    return publish(report, format_table(report), args.json)


if __name__ == "__main__":
    main()
