"""Shared pieces of the job benchmarks: a Dask cluster on this machine, worker memory sampling,
machine facts."""

from __future__ import annotations

import contextlib
import os
import platform
import threading
import time
from collections.abc import Iterator

import psutil
from distributed import Client, LocalCluster

MB = 2**20


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
