"""The worker processes skyprep starts get its allocator settings (pipeline/dask.yaml)."""

import os

import numpy as np
import yaml

from pipeline.runner import DASK_YAML, make_client


def _environment():
    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "OMP_NUM_THREADS")}


def test_local_cluster_workers_get_the_allocator_settings():
    wanted = yaml.safe_load(DASK_YAML.read_text())["distributed"]["nanny"]["pre-spawn-environ"]
    with make_client(workers=1) as client:
        (found,) = client.run(_environment).values()
        assert client.submit(np.sum, np.ones(10)).result() == 10
    assert {k: found[k] for k in wanted} == {k: str(v) for k, v in wanted.items()}
    assert found["OMP_NUM_THREADS"] == "1"  # Dask's own defaults are kept
