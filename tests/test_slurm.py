"""deploy/slurm/skyprep_slurm.py on a real single-node SLURM (slurmctld + slurmd on this machine).

The test setup installs Debian's slurm-wlm and munge when they are missing (root and apt-get
needed; otherwise the test skips and says why), starts a private cluster, runs the driver, which
submits two worker jobs through dask-jobqueue, and checks the store equals a local run's and the
queue is empty afterwards.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.io.index import complete_sessions
from tests import slurm_node
from tests.conftest import TINY
from tests.test_cluster import assert_same_store

DRIVER = Path(__file__).resolve().parents[1] / "deploy" / "slurm" / "skyprep_slurm.py"
JOBS = 2


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        node = slurm_node.start(tmp_path_factory.mktemp("slurm"))
    except slurm_node.Unavailable as why:
        pytest.skip(f"no single-node SLURM here: {why}")
    try:
        yield node
    finally:
        node.stop()


def _job_settings(directory: Path) -> Path:
    """deploy/slurm/jobqueue.yaml with what this one small node needs: one core and 1 GiB per job."""
    settings = yaml.safe_load((DRIVER.with_name("jobqueue.yaml")).read_text())
    slurm = settings["jobqueue"]["slurm"]
    slurm.update({"cores": 1, "memory": "1GiB", "walltime": "00:15:00", "log-directory": str(directory / "logs"),
                  "local-directory": str(directory / "spill")})  # fmt: skip
    path = directory / "jobqueue.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_two_slurm_worker_jobs_write_the_local_runs_store(slurm, tiny_archive, local_store, numba_cache, tmp_path):
    local = local_store
    out = tmp_path / "slurm.zarr"
    cmd = [sys.executable, str(DRIVER), str(tiny_archive), "--out", str(out), "--jobs", str(JOBS),
           "--config-file", str(_job_settings(tmp_path)), "--numba-cache", str(numba_cache)]  # fmt: skip
    done = subprocess.run(cmd, env=slurm.env, capture_output=True, text=True, timeout=420)
    logs = "\n".join(p.read_text(errors="replace")[-1500:] for p in sorted((tmp_path / "logs").glob("*")))
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n{logs}\n{slurm.log('slurmctld')[-2000:]}"
    assert complete_sessions(out) == complete_sessions(local) and len(complete_sessions(out)) == TINY.sessions
    assert_same_store(local, out)
    # both jobs ran a worker that joined the driver's scheduler (dask-jobqueue names logs by job id)
    workers = [p for p in (tmp_path / "logs").glob("skyprep-worker-*.err") if "Registered to" in p.read_text()]
    assert len(workers) == JOBS, logs
    assert slurm.log("slurmctld").count("sched: Allocate JobId=") >= JOBS
    assert "0 compiled" in done.stderr  # the driver found the kernels compiled; the jobs loaded them from there
    deadline = time.monotonic() + 60
    while slurm.jobs() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert slurm.jobs() == []
