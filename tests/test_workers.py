"""Worker processes: skyprep's allocator settings (pipeline/dask.yaml) and its kernels loaded ahead of the first task."""

import os
import subprocess
import sys
import time

import numpy as np
import yaml
from distributed import Client, LocalCluster

from pipeline.runner import DASK_YAML, kernel_cache, make_client


def _environment():
    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "OMP_NUM_THREADS")}


def test_local_cluster_workers_get_the_allocator_settings():
    wanted = yaml.safe_load(DASK_YAML.read_text())["distributed"]["nanny"]["pre-spawn-environ"]
    with make_client(workers=1, processes=True) as client:
        (found,) = client.run(_environment).values()
        assert client.submit(np.sum, np.ones(10)).result() == 10
    assert {k: found[k] for k in wanted} == {k: str(v) for k, v in wanted.items()}
    assert found["OMP_NUM_THREADS"] == "1"  # Dask's own defaults are kept


def test_local_cluster_is_threads_in_this_process_by_default():
    with make_client(workers=2) as client:
        assert list(client.nthreads().values()) == [2]
        (pid,) = client.run(os.getpid).values()
    assert pid == os.getpid()
    with make_client(workers=2, processes=True) as client:
        assert sorted(client.nthreads().values()) == [1, 1]
        assert os.getpid() not in client.run(os.getpid).values()


def test_load_kernels_loads_what_the_session_tasks_call():
    """In a new process the stack, cosmic-ray and synthesis kernels are not loaded; ``load_kernels``
    (run on every worker by ``runner.run``) loads them with the argument types the tasks use."""
    code = (
        "from pipeline import graph\nfrom pipeline.steps import lacosmic, stack, synthesize\n"
        "kernels = (stack._do_rows, lacosmic._snr, lacosmic._candidates, synthesize._synthesize)\n"
        "assert not any(k.signatures for k in kernels)\n"
        "graph.load_kernels()\n"
        "loaded = [k.signatures for k in kernels]\n"
        "# a call like the strip task's must find its signature loaded, not add one\n"
        "import numpy as np\n"
        "from pipeline.steps.masks import MASK_DTYPE\n"
        "stack.sigma_clip_stack(np.ones((3, 5, 7), np.float32), np.zeros((3, 5, 7), MASK_DTYPE), parallel=False)\n"
        "assert all(loaded) and [k.signatures for k in kernels] == loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def _first_kernel_task() -> tuple[float, float, object]:
    """What a session's first task pays for its kernels on a new worker: wall and CPU seconds of
    loading (or compiling) them, and numba's cache statistics afterwards."""
    from pipeline.graph import load_kernels

    wall, cpu = time.perf_counter(), time.process_time()
    load_kernels()
    return time.perf_counter() - wall, time.process_time() - cpu, kernel_cache()


def _import_skyprep() -> float:
    t0 = time.perf_counter()
    import pipeline.graph  # noqa: F401

    return time.perf_counter() - t0


def test_fresh_worker_with_the_built_cache_runs_its_first_task_without_compiling(numba_cache, monkeypatch):
    """Warm workers: a new worker process given the cache that ``skyprep compile`` built (the image's
    NUMBA_CACHE_DIR) loads every kernel from it, compiling none, in far less time than a
    compile. CPU seconds are asserted (the shared machine's load stretches wall time); both shown."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(numba_cache))
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster) as client:
        imported = client.submit(_import_skyprep, pure=False).result()
        started = time.perf_counter()
        wall, cpu, cache = client.submit(_first_kernel_task, pure=False).result()
        first = time.perf_counter() - started
    seen = f"first task {first:.2f} s ({wall:.2f} s wall, {cpu:.2f} s CPU in the task; import {imported:.2f} s)"
    assert cache.compiled == 0 and cache.loaded > 0, f"{cache}; {seen}"
    assert cache.directory == str(numba_cache)
    assert cpu < 2.0, seen
