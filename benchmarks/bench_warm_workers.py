"""Time to first task of a new worker process: with an empty numba cache (compiles the kernels)
against one built by ``skyprep compile`` (the image build's step), in the same run.

    .venv/bin/python benchmarks/bench_warm_workers.py [--repeats 3]

Each case starts a fresh one-worker LocalCluster with its own ``NUMBA_CACHE_DIR``, imports
skyprep on the worker (reported apart: issue 17's business), then times the first task that
calls the kernels (``graph.load_kernels``, what ``runner.run`` sends every new worker), from
submit to result, with the worker's CPU seconds and numba's cache statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distributed import Client, LocalCluster


def _import() -> float:
    t0 = time.perf_counter()
    import pipeline.graph  # noqa: F401

    return time.perf_counter() - t0


def _first_task():
    from pipeline.graph import load_kernels
    from pipeline.runner import kernel_cache

    cpu = time.process_time()
    load_kernels()
    return time.process_time() - cpu, kernel_cache()


def first_task(cache: Path) -> dict:
    os.environ["NUMBA_CACHE_DIR"] = str(cache)
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster) as client:
        imported = client.submit(_import, pure=False).result()
        t0 = time.perf_counter()
        cpu, stats = client.submit(_first_task, pure=False).result()
        return {"import_s": imported, "first_task_s": time.perf_counter() - t0, "cpu_s": cpu,
                "compiled": stats.compiled, "loaded": stats.loaded}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "built"
        env = {**os.environ, "NUMBA_CACHE_DIR": str(built)}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline", "compile"], env=env, check=True, capture_output=True)
        compile_s = time.perf_counter() - t0
        runs = {"cold": [], "warm": []}
        for i in range(args.repeats):
            empty = Path(tmp) / f"empty{i}"
            runs["cold"].append(first_task(empty))
            shutil.rmtree(empty, ignore_errors=True)
            runs["warm"].append(first_task(built))
        summary = {case: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for case, rs in runs.items()}
        summary["skyprep_compile_s"] = compile_s
        summary["cold_over_warm"] = summary["cold"]["first_task_s"] / summary["warm"]["first_task_s"]
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
