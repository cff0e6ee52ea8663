"""Worker processes: skyprep's allocator settings (pipeline/dask.yaml) and its kernels loaded ahead of the first task."""

import os
import subprocess
import sys

import numpy as np
import yaml

from pipeline.runner import DASK_YAML, make_client


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
    """In a new process the stack and cosmic-ray kernels are not loaded; ``load_kernels`` (run on
    every worker by ``runner.run``) loads them with the argument types the tasks use."""
    code = (
        "from pipeline import graph\nfrom pipeline.steps import lacosmic, stack\n"
        "kernels = (stack._do_rows, lacosmic._snr, lacosmic._candidates)\n"
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
