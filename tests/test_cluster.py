"""A real Dask cluster on 127.0.0.1 (``dask scheduler`` + ``dask worker`` processes), and faults.

The store written through the cluster must equal, array by array, the one written by a local
run; a worker SIGKILLed mid-run and the ``skyprep run`` process SIGKILLed mid-run must not change
the final store; no session is ever indexed complete before its arrays are intact.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import Client

from pipeline.config import Config
from pipeline.io.index import complete_sessions, index
from pipeline.io.lock import lock_path
from pipeline.runner import run
from pipeline.synth import SynthSpec, write_archive
from pipeline.tools.verify import check_session

pytestmark = pytest.mark.slow  # about 3 minutes on 2 shared cores: fresh worker processes, numba warm-up

DASK = str(Path(sys.executable).with_name("dask"))
TIMEOUT_S = 120


def _start(args, log):
    return subprocess.Popen([DASK, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _wait_for(condition, what, timeout_s=TIMEOUT_S, every_s=0.1):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(every_s)


class Cluster:
    """``dask scheduler`` and workers as subprocesses on 127.0.0.1 with random ports."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.scheduler_file = directory / "scheduler.json"
        self.log = open(directory / "cluster.log", "w")
        self.workers = []
        self.scheduler = _start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                                 "127.0.0.1:0", "--scheduler-file", str(self.scheduler_file)], self.log)  # fmt: skip
        _wait_for(lambda: self.scheduler_file.exists() and self.scheduler_file.stat().st_size > 0, "the scheduler file")
        self.address = json.loads(self.scheduler_file.read_text())["address"]

    def add_worker(self) -> subprocess.Popen:
        n = len(self.workers)
        worker = _start(["worker", self.address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                         "--local-directory", str(self.directory / f"w{n}"), "--name", f"w{n}"], self.log)  # fmt: skip
        self.workers.append(worker)
        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(len([w for w in self.workers if w.poll() is None]), timeout=TIMEOUT_S)
        return worker

    def close(self) -> None:
        for process in [*self.workers, self.scheduler]:
            _stop(process)
        self.log.close()


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-archive")
    write_archive(root, SynthSpec(sessions=3, size=128, frames=3, amps=1, seed=5))
    return root


@pytest.fixture(scope="module")
def local_store(tiny_archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "local.zarr"
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        assert run(tiny_archive, out, Config(), client, echo=lambda line: None).exit_code == 0
    return out


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        cluster.add_worker()
        cluster.add_worker()
        yield cluster
    finally:
        cluster.close()


def _skyprep(archive, out, *where, env=None):
    cmd = [sys.executable, "-m", "pipeline", "run", str(archive), "--out", str(out), *where]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})  # fmt: skip


def _finish(process):
    out, err = process.communicate(timeout=TIMEOUT_S)
    return process.returncode, out, err


def assert_same_store(a, b, keys=None):
    """Every complete session of ``a`` (or ``keys``) is complete in ``b`` with identical arrays."""
    keys = keys or complete_sessions(a)
    assert keys <= complete_sessions(b)
    for key in keys:
        ga, gb = zarr.open_group(str(a), path=key, mode="r"), zarr.open_group(str(b), path=key, mode="r")
        assert set(ga.array_keys()) == set(gb.array_keys()), key
        for name in ga.array_keys():
            va, vb = ga[name][...], gb[name][...]
            assert va.dtype == vb.dtype and va.shape == vb.shape, (key, name)
            np.testing.assert_array_equal(va, vb, err_msg=f"{key}/{name}")


def test_cluster_run_equals_local_run(cluster, tiny_archive, local_store, tmp_path):
    out = tmp_path / "cluster.zarr"
    code, stdout, stderr = _finish(_skyprep(tiny_archive, out, "--scheduler", cluster.address))
    assert code == 0, stderr
    assert "dashboard: http://127.0.0.1:" in stderr
    assert_same_store(local_store, out)
    assert complete_sessions(out) == complete_sessions(local_store)


def test_scheduler_file_and_environment_address(cluster, tiny_archive, local_store, tmp_path):
    key = sorted(complete_sessions(local_store))[0]
    by_file, by_env = tmp_path / "file.zarr", tmp_path / "env.zarr"
    pick = ("--sessions", key)
    code, _, stderr = _finish(_skyprep(tiny_archive, by_file, "--scheduler-file", str(cluster.scheduler_file), *pick))
    assert code == 0, stderr
    code, _, stderr = _finish(_skyprep(tiny_archive, by_env, *pick, env={"DASK_SCHEDULER_ADDRESS": cluster.address}))
    assert code == 0, stderr
    assert "dashboard: http://127.0.0.1:" in stderr
    assert_same_store(local_store, by_file, {key})
    assert_same_store(local_store, by_env, {key})


def _busy(address: str, worker_name: str) -> bool:
    with Client(address, timeout=10) as client:
        info = client.scheduler_info()["workers"]
        processing = client.processing()
    return any(w.get("name") == worker_name and processing.get(a) for a, w in info.items())


def test_worker_killed_mid_run_changes_nothing(cluster, tiny_archive, local_store, tmp_path):
    victim = cluster.add_worker()
    out = tmp_path / "killed-worker.zarr"
    job = _skyprep(tiny_archive, out, "--scheduler", cluster.address)
    _wait_for(lambda: _busy(cluster.address, "w2") or job.poll() is not None, "work on the victim", every_s=0.05)
    assert job.poll() is None, "the run ended before the worker could be killed"
    victim.send_signal(signal.SIGKILL)
    code, _, stderr = _finish(job)
    assert code == 0, stderr
    assert_same_store(local_store, out)


def test_killed_run_resumes_to_the_same_store(cluster, tiny_archive, local_store, tmp_path):
    out = tmp_path / "resumed.zarr"
    job = _skyprep(tiny_archive, out, "--scheduler", cluster.address)
    seen_complete = set()

    def first_session_done():
        if job.poll() is not None:
            return True
        for key in complete_sessions(out) if (out / "zarr.json").exists() else ():
            assert check_session(out, key, index(out)[key]) == [], f"{key} indexed complete before intact"
            seen_complete.add(key)
        return bool(seen_complete)

    _wait_for(first_session_done, "a first complete session", every_s=0.05)
    assert job.poll() is None, "the run ended before it could be killed"
    job.send_signal(signal.SIGKILL)
    job.wait(30)
    before = complete_sessions(out)
    assert before and before < complete_sessions(local_store)
    assert lock_path(out).exists()  # left behind by the killed run: stale, replaced by the rerun
    code, stdout, stderr = _finish(_skyprep(tiny_archive, out, "--scheduler", cluster.address))
    assert code == 0, stderr
    report = {
        s["key"]: s["status"] for s in json.loads(out.with_name(out.name + ".report.json").read_text())["sessions"]
    }
    assert {k for k, s in report.items() if s == "skipped"} == before
    assert {k for k, s in report.items() if s == "ok"} == complete_sessions(local_store) - before
    assert_same_store(local_store, out)
    shutil.rmtree(out)
