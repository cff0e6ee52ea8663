"""Client-side cost of scheduling: tasks per session, and seconds to build and submit each session's graph.

Sessions are independent subgraphs, so the cost for a 1,000-session archive is the per-session
cost times 1,000; this measures it on ``--sessions`` tiny sessions and extrapolates.

    .venv/bin/python benchmarks/bench_scheduling.py --sessions 20 --size 64 --frames 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import dask
from distributed import Client, wait

from pipeline.config import Config
from pipeline.graph import build_session
from pipeline.io.discover import find_sessions
from pipeline.io.store import write_session
from pipeline.synth import SynthSpec, write_archive


def measure(root: Path, store: Path, client: Client) -> list[dict]:
    """Per session: task count, seconds to build the graph (with the store template) and to submit it."""
    config, rows = Config(), []
    sessions, problems = find_sessions(root)
    if len(sessions) < 2 or problems:  # the first session is left out of the statistics
        raise RuntimeError(f"{root}: need at least 2 usable sessions, found {len(sessions)}, problems {problems}")
    for session in sessions:
        t0 = time.perf_counter()
        graph = build_session(session, config)
        write = write_session(graph.dataset, store, session.key, config.chunks.store_chunk_px)
        done = dask.delayed(lambda written, summary: summary)(write, graph.summary)
        t1 = time.perf_counter()
        future = client.compute(done)
        t2 = time.perf_counter()
        rows.append({"tasks": len(done.__dask_graph__()), "build_s": t1 - t0, "submit_s": t2 - t1, "future": future})
    wait([r.pop("future") for r in rows])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--frames", type=int, default=5)
    args = p.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Client(n_workers=2, threads_per_worker=1, dashboard_address=":0") as client,
    ):
        root = Path(tmp) / "archive"
        t0 = time.perf_counter()
        write_archive(root, SynthSpec(sessions=args.sessions, size=args.size, frames=args.frames, amps=1, seed=0))
        print(
            f"synthetic archive: {args.sessions} sessions of {args.size} px, {args.frames} e91 frames "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        rows = measure(root, Path(tmp) / "out.zarr", client)
    rows = rows[1:]  # the first session pays one-off imports
    tasks = [r["tasks"] for r in rows]
    build = statistics.median(r["build_s"] for r in rows)
    submit = statistics.median(r["submit_s"] for r in rows)
    print(f"tasks per session: median {statistics.median(tasks):.0f} (min {min(tasks)}, max {max(tasks)})")
    print(f"client per session: build {1e3 * build:.1f} ms, submit {1e3 * submit:.1f} ms (medians)")
    print(
        f"extrapolated to 1,000 sessions: {1000 * (build + submit):.0f} s of client time, "
        f"{1000 * statistics.median(tasks):,.0f} tasks in total (at most window x {statistics.median(tasks):.0f} "
        f"in the scheduler at once)"
    )


if __name__ == "__main__":
    main()
