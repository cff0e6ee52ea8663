"""Shared pieces of the job benchmarks: a Dask cluster on this machine, memory sampling, the
``skyprep`` command as a user runs it, machine facts."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from distributed import Client, LocalCluster

MB = 2**20
REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def local_client(workers: int, memory_limit: str | None = None) -> Iterator[Client]:
    """A LocalCluster of ``workers`` single-threaded worker processes (as ``skyprep run`` starts)."""
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, memory_limit=memory_limit, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


class PeakRSS:
    """Samples the resident set size of the client's worker processes every ``interval_s``.

    ``peak_mb`` maps each worker's address to the highest RSS seen (MiB), ``baseline_mb`` to its
    RSS when sampling started (an idle worker: Python, numpy, numba, dask)."""

    def __init__(self, client: Client, interval_s: float = 0.02):
        pids = client.run(os.getpid)
        self._procs = {addr: psutil.Process(pid) for addr, pid in pids.items()}
        self.baseline_mb = {addr: p.memory_info().rss / MB for addr, p in self._procs.items()}
        self.peak_mb = dict(self.baseline_mb)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for addr, proc in self._procs.items():
                with contextlib.suppress(psutil.Error):
                    self.peak_mb[addr] = max(self.peak_mb[addr], proc.memory_info().rss / MB)
            time.sleep(self._interval_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Command:
    """One finished command: wall seconds, CPU seconds of its process tree (user + system, the
    processes it waited for included: less sensitive to a loaded machine than the wall time),
    exit status, output, and the peak resident memory of its process tree (``peak_total_mb``:
    all its processes together; ``peak_process_mb``: the largest one), sampled every 50 ms."""

    argv: tuple[str, ...]
    seconds: float
    cpu_seconds: float
    returncode: int
    stdout: str
    stderr: str
    peak_total_mb: float
    peak_process_mb: float


def _checkout_env() -> dict[str, str]:
    """This process's environment with ``PYTHONPATH`` pointing at this checkout first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def timed_command(argv: Sequence[str], cwd: Path | None = None, sample_s: float = 0.05) -> Command:
    """Run ``argv`` (``PYTHONPATH`` pointing at this checkout) and time it from spawn to exit."""
    env = _checkout_env()
    peaks = [0.0, 0.0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample() -> None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(proc.pid)
            while proc.poll() is None:
                sizes = []
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        sizes.append(p.memory_info().rss / MB)
                peaks[:] = max(peaks[0], sum(sizes)), max([peaks[1], *sizes])
                time.sleep(sample_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Command(tuple(argv), seconds, cpu, proc.returncode, stdout, stderr, *peaks)


def skyprep(*args: str) -> list[str]:
    """The ``skyprep`` command line as a user runs it (``python -m pipeline``, this interpreter)."""
    return [sys.executable, "-m", "pipeline", *args]


def warm_kernels_command() -> float:
    """``skyprep compile`` once (the image build's step), so no timed command pays numba's first
    compile; its seconds."""
    t0 = time.perf_counter()
    subprocess.run(skyprep("compile"), env=_checkout_env(), check=True, capture_output=True)
    return time.perf_counter() - t0


def machine() -> dict:
    """Facts about the machine a figure was measured on."""
    return {
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_at_end": list(os.getloadavg()),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def publish(report: dict, table: str, json_path: Path | None) -> dict:
    """Print a benchmark's table and, when ``json_path`` is given, write its report there as JSON."""
    print(table)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
        print(f"wrote {json_path}")
    return report
