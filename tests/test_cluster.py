"""A real Dask cluster on 127.0.0.1 (``dask scheduler`` + ``dask worker`` processes), and faults.

The store written through the cluster must equal, array by array, the one written by a local
run; a worker SIGKILLed mid-run and the ``skyprep run`` process SIGKILLed mid-run must not change
the final store; no session is ever indexed complete before its arrays are intact.

Part of the default test run (CI): one cluster per module, tiny sessions, every wait bounded, and
every process this module starts is stopped at teardown, whether the test passed or not. Should
pytest itself die, the scheduler shuts down once idle and the workers once it is gone.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import Client

from pipeline.io.index import complete_sessions, index
from pipeline.io.lock import lock_path
from pipeline.io.objects import zarr_store
from pipeline.tools.verify import check_session

DASK = str(Path(sys.executable).with_name("dask"))
TIMEOUT_S = 120  # any one wait: a process starting, a worker joining, a run finishing
ORPHAN_S = 600  # an orphaned scheduler's idle timeout (longer than any test)
pytestmark = pytest.mark.timeout(3 * TIMEOUT_S, method="signal")  # raises in the test: teardown still runs


def _start(command, stdout, stderr=subprocess.STDOUT, env=None) -> subprocess.Popen:
    """``command`` in its own process group (so that stopping it stops its children too)."""
    return subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, start_new_session=True)


def _stop(processes, grace_s: float = 5.0) -> None:
    """SIGTERM every live process group at once, SIGKILL whatever is left after ``grace_s``."""
    live = [p for p in processes if p.poll() is None]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in live:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(TIMEOUT_S)


def _wait_for(condition, what, timeout_s=TIMEOUT_S, every_s=0.05):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


class Cluster:
    """``dask scheduler`` and single-threaded workers as subprocesses, listening on 127.0.0.1 on
    ports the system picks free; ``client`` observes it."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.scheduler_file = directory / "scheduler.json"
        self.log = open(directory / "cluster.log", "w")
        self.workers: list[subprocess.Popen] = []
        self.client = None
        listen = ["--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0"]
        files = ["--scheduler-file", str(self.scheduler_file)]
        self.scheduler = _start([DASK, "scheduler", *listen, *files, "--idle-timeout", f"{ORPHAN_S}s"], self.log)
        try:
            _wait_for(lambda: self._address() or self.scheduler.poll() is not None, "the scheduler file")
            assert self.scheduler.poll() is None, f"the scheduler exited: {self.log_text()}"
            self.address = self._address()
            self.client = Client(self.address, timeout=TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def _address(self) -> str | None:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
            return json.loads(self.scheduler_file.read_text())["address"]
        return None

    def add_worker(self) -> subprocess.Popen:
        name = f"w{len(self.workers)}"
        single = ["--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"]
        files = ["--local-directory", str(self.directory / name), "--death-timeout", "60s"]
        worker = _start([DASK, "worker", self.address, "--name", name, *single, *files], self.log)
        self.workers.append(worker)
        self.client.wait_for_workers(sum(w.poll() is None for w in self.workers), timeout=TIMEOUT_S)
        return worker

    def busy(self, worker_name: str) -> bool:
        """Whether the worker named ``worker_name`` has tasks assigned."""
        info = self.client.scheduler_info()["workers"]
        processing = self.client.processing()
        return any(w.get("name") == worker_name and processing.get(a) for a, w in info.items())

    def log_text(self) -> str:
        self.log.flush()
        return (self.directory / "cluster.log").read_text()[-4000:]

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        _stop([*self.workers, self.scheduler])
        self.log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.add_worker()
        cluster.add_worker()
        yield cluster
    finally:
        cluster.close()


class Runs:
    """``skyprep run`` subprocesses (output in files: a full pipe cannot stall them), all stopped at teardown."""

    def __init__(self, archive: Path, directory: Path):
        self.archive, self.directory = archive, directory
        self.started: list[subprocess.Popen] = []
        self._outputs: dict[subprocess.Popen, tuple[Path, Path]] = {}

    def start(self, out: Path, *where: str, env: dict | None = None) -> subprocess.Popen:
        n = len(self.started)
        command = [sys.executable, "-m", "pipeline", "run", str(self.archive), "--out", str(out), *where]
        outputs = (self.directory / f"run{n}.out", self.directory / f"run{n}.err")
        with open(outputs[0], "w") as stdout, open(outputs[1], "w") as stderr:
            process = _start(command, stdout, stderr, env={**os.environ, **(env or {})})
        self.started.append(process)
        self._outputs[process] = outputs
        return process

    def finish(self, process: subprocess.Popen) -> tuple[int, str, str]:
        """Exit code, stdout and stderr of ``process`` once it has ended."""
        code = process.wait(TIMEOUT_S)
        return code, *(path.read_text() for path in self._outputs[process])

    def run(self, out: Path, *where: str, env: dict | None = None) -> tuple[int, str, str]:
        return self.finish(self.start(out, *where, env=env))


@pytest.fixture
def runs(tiny_archive, tmp_path):
    runs = Runs(tiny_archive, tmp_path)
    yield runs
    _stop(runs.started)


def assert_same_store(a, b, keys=None):
    """Every complete session of ``a`` (or ``keys``, at least one) is complete in ``b`` with identical arrays."""
    keys = keys or complete_sessions(a)
    assert keys, f"no complete session to compare in {a}"
    assert keys <= complete_sessions(b)
    for key in keys:
        ga, gb = (zarr.open_group(zarr_store(s), path=key, mode="r") for s in (a, b))
        names = set(ga.array_keys())
        assert names and names == set(gb.array_keys()), key
        for name in names:
            va, vb = ga[name][...], gb[name][...]
            assert va.dtype == vb.dtype and va.shape == vb.shape, (key, name)
            np.testing.assert_array_equal(va, vb, err_msg=f"{key}/{name}")


def test_cluster_run_equals_local_run(cluster, local_store, runs, tmp_path):
    out = tmp_path / "cluster.zarr"
    code, _, stderr = runs.run(out, "--scheduler", cluster.address)
    assert code == 0, stderr
    assert "dashboard: http://127.0.0.1:" in stderr
    assert_same_store(local_store, out)
    assert complete_sessions(out) == complete_sessions(local_store)


def test_scheduler_file_and_environment_address(cluster, local_store, runs, tmp_path):
    key = sorted(complete_sessions(local_store))[0]
    by_file, by_env = tmp_path / "file.zarr", tmp_path / "env.zarr"
    pick = ("--sessions", key)
    code, _, stderr = runs.run(by_file, "--scheduler-file", str(cluster.scheduler_file), *pick)
    assert code == 0, stderr
    code, _, stderr = runs.run(by_env, *pick, env={"DASK_SCHEDULER_ADDRESS": cluster.address})
    assert code == 0, stderr
    assert "dashboard: http://127.0.0.1:" in stderr
    assert_same_store(local_store, by_file, {key})
    assert_same_store(local_store, by_env, {key})
    assert complete_sessions(by_file) == complete_sessions(by_env) == {key}


def test_worker_killed_mid_run_changes_nothing(cluster, local_store, runs, tmp_path):
    victim = cluster.add_worker()
    name = f"w{len(cluster.workers) - 1}"
    out = tmp_path / "killed-worker.zarr"
    job = runs.start(out, "--scheduler", cluster.address)
    _wait_for(lambda: cluster.busy(name) or job.poll() is not None, "work on the victim")
    assert job.poll() is None, "the run ended before the worker could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait(TIMEOUT_S)
    code, _, stderr = runs.finish(job)
    assert code == 0, stderr
    assert_same_store(local_store, out)
    assert complete_sessions(out) == complete_sessions(local_store)


def test_killed_run_resumes_to_the_same_store(cluster, local_store, runs, tmp_path):
    out = tmp_path / "resumed.zarr"
    job = runs.start(out, "--scheduler", cluster.address)
    seen_complete = set()

    def first_session_done():
        if job.poll() is not None:
            return True
        for key in complete_sessions(out) if (out / "zarr.json").exists() else ():
            assert check_session(out, key, index(out)[key]) == [], f"{key} indexed complete before intact"
            seen_complete.add(key)
        return bool(seen_complete)

    _wait_for(first_session_done, "a first complete session", every_s=0.02)
    assert job.poll() is None, "the run ended before it could be killed"
    job.send_signal(signal.SIGKILL)
    job.wait(TIMEOUT_S)
    before = complete_sessions(out)
    assert before and before < complete_sessions(local_store)
    assert lock_path(out).exists()  # left behind by the killed run: stale, replaced by the rerun
    code, _, stderr = runs.run(out, "--scheduler", cluster.address)
    assert code == 0, stderr
    report = {
        s["key"]: s["status"] for s in json.loads(out.with_name(out.name + ".report.json").read_text())["sessions"]
    }
    assert {k for k, s in report.items() if s == "skipped"} == before
    assert {k for k, s in report.items() if s == "ok"} == complete_sessions(local_store) - before
    assert_same_store(local_store, out)
