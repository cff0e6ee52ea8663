"""Running the job: a Dask client, a bounded window of sessions in flight, the run report.

One place for orchestration. Each session is built into its own subgraph on the client and
submitted as one future; new sessions are submitted as earlier ones finish, so the scheduler
never holds more than ``window`` sessions. A failing session is reported and the rest go on.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import dask
import yaml
from dask.base import tokenize
from distributed import Client, Future, LocalCluster, as_completed, wait

from . import DASK_YAML, __version__
from .config import Config
from .errors import Interrupted, SkyprepError, UsageError
from .graph import build_session, load_kernels
from .io.discover import Session, find_sessions
from .io.index import IndexWriter, open_index
from .io.objects import ObjectPath, location
from .io.provenance import Provenance, SessionSummary
from .io.store import write_session

dask.config.update_defaults(yaml.safe_load(DASK_YAML.read_text()))


@dataclass
class SessionResult:
    """How one session went."""

    key: str
    status: str  # "ok", "failed", "skipped" (already complete) or "stopped" (the run was interrupted)
    reason: str = ""
    seconds: float = 0.0
    frames: int = 0


@dataclass
class RunReport:
    """Every session of a run with its status, reason and timing."""

    store: str
    results: list[SessionResult] = field(default_factory=list)
    seconds: float = 0.0
    dashboard: str = ""
    stopped_by: str = ""  # the signal that interrupted the run, "" when it ran to the end

    @property
    def failed(self) -> list[SessionResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def exit_code(self) -> int:
        """0 when every session succeeded (or was already complete), 1 when any failed, 128 + the
        signal number when the run was interrupted (the shells' convention)."""
        if self.stopped_by:
            return 128 + signal.Signals[self.stopped_by].value
        return 1 if self.failed else 0

    def stop_line(self) -> str:
        """The one line said when the run was interrupted."""
        done = sum(r.status in ("ok", "failed") for r in self.results)
        left = sum(r.status == "stopped" for r in self.results)
        return (f"stopped by {self.stopped_by}: {done} session(s) finished, {left} not (left incomplete; "
                "the store is consistent: rerun the same command to continue)")  # fmt: skip

    def table(self) -> str:
        """A plain-text table for the terminal."""
        width = max([len(r.key) for r in self.results] + [7])
        lines = [f"{'session':<{width}}  {'status':<7}  {'frames':>6}  {'seconds':>8}  reason"]
        for r in self.results:
            lines.append(f"{r.key:<{width}}  {r.status:<7}  {r.frames:>6}  {r.seconds:>8.1f}  {r.reason}")
        counts = {s: sum(r.status == s for r in self.results) for s in ("ok", "skipped", "failed", "stopped")}
        lines.append(
            f"{counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed"
            + (f", {counts['stopped']} stopped" if counts["stopped"] else "")
            + f" in {self.seconds:.1f} s"
        )
        return "\n".join(lines)

    def write_json(self, path: Path | ObjectPath) -> None:
        """The report as JSON at ``path``, replaced whole (a renamed file; one PUT of an object)."""
        payload = {"store": self.store, "software": f"skyprep {__version__}", "seconds": self.seconds,
                   "stopped_by": self.stopped_by, "sessions": [asdict(r) for r in self.results]}  # fmt: skip
        if isinstance(path, ObjectPath):
            path.write_text(json.dumps(payload, indent=2))
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, path)


@dataclass(frozen=True)
class KernelCache:
    """What numba did for the kernels of this process: signatures loaded from its on-disk cache
    (``loaded``) and compiled (``compiled``, then written to the cache), and where that cache is."""

    directory: str
    loaded: int
    compiled: int


def kernel_cache() -> KernelCache:
    """Numba's cache statistics over every compiled kernel skyprep has imported in this process."""
    from numba.core.dispatcher import Dispatcher

    kernels = {id(k): k for name, module in list(sys.modules.items()) if name.startswith("pipeline.")
               for k in vars(module).values() if isinstance(k, Dispatcher)}.values()  # fmt: skip
    stats = [k.stats for k in kernels]
    directory = next((s.cache_path for s in stats if s.cache_path), "")
    return KernelCache(str(Path(directory).parent) if directory else "", sum(sum(s.cache_hits.values()) for s in stats),
                       sum(sum(s.cache_misses.values()) for s in stats))  # fmt: skip


def warm_kernels() -> KernelCache:
    """Load every kernel the session tasks call, compiling into numba's cache (``NUMBA_CACHE_DIR``,
    else next to the sources) what is not there yet: run once per image or environment so that
    new workers start without compiling."""
    load_kernels()
    return kernel_cache()


def report_path(store: Path | ObjectPath | str) -> Path | ObjectPath:
    """Where the run report of ``store`` is written: next to it, ``<store>.report.json``."""
    store = location(store)
    return store.with_name(store.name + ".report.json")


@contextmanager
def make_client(
    scheduler: str | None = None,
    workers: int | None = None,
    scheduler_file: str | None = None,
    processes: bool = False,
) -> Iterator[Client]:
    """A client of ``scheduler``, of the cluster a ``scheduler_file`` describes, or of Dask's configured
    ``scheduler-address`` (``DASK_SCHEDULER_ADDRESS``); else of a new LocalCluster shut down on exit.

    The LocalCluster runs ``workers`` (default: cores, at most 4) threads in this process, or with
    ``processes`` as many single-threaded worker processes. Threads are the default: the steps'
    heavy work releases the GIL (numpy, the numba kernels, the decoders, the codecs), and a worker
    process costs the job seconds of CPU on a laptop (its own imports and kernel loading, the
    tasks' data pickled between processes); benchmarks/README.md has the figures.

    Raise :class:`~pipeline.errors.UsageError` for ``workers`` < 1 or a missing ``scheduler_file``,
    :class:`SchedulerError` at once for a scheduler nothing listens on."""
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if scheduler_file and not Path(scheduler_file).is_file():
        raise UsageError(f"scheduler file {scheduler_file} does not exist (start the scheduler first)")
    address = None if scheduler_file else scheduler or dask.config.get("scheduler-address", None)
    if address:
        _check_reachable(address)
    logger = logging.getLogger("distributed")
    with ExitStack() as stack:
        stack.callback(logger.setLevel, logger.level)  # restored once everything is closed
        if scheduler_file:
            client = stack.enter_context(_connected(str(scheduler_file), scheduler_file=str(scheduler_file)))
        elif address:
            client = stack.enter_context(_connected(address, address))
        else:
            n = workers or min(os.cpu_count() or 1, 4)
            shape = (
                {"n_workers": n, "threads_per_worker": 1} if processes else {"n_workers": 1, "threads_per_worker": n}
            )
            cluster = stack.enter_context(LocalCluster(processes=processes, dashboard_address=":0", **shape))
            client = stack.enter_context(Client(cluster))
        # closing comms and cancelling what an interrupted run left is expected: no tracebacks then
        stack.callback(logger.setLevel, logging.CRITICAL)
        yield client


CONNECT_TIMEOUT_S = 10.0


class SchedulerError(SkyprepError):
    """The Dask scheduler named on the command line cannot be reached."""


def _check_reachable(address: str) -> None:
    """Refuse at once a TCP scheduler address nothing listens on (a client would otherwise retry until its connect timeout)."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.scheme not in ("tcp", "tls") or not parsed.hostname or not parsed.port:
        return
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise SchedulerError(f"cannot reach the Dask scheduler at {address} ({err.strerror or err})") from None


@contextmanager
def _connected(where: str, *args, **kwargs) -> Iterator[Client]:
    try:
        client = Client(*args, timeout=CONNECT_TIMEOUT_S, **kwargs)
    except (OSError, TimeoutError) as err:
        raise SchedulerError(f"cannot reach the Dask scheduler of {where} ({err})") from None
    with client:
        yield client


@dataclass
class StopRequest:
    """The signal :func:`stop_on_signals` received, if any. Its handler raises
    :class:`~pipeline.errors.Interrupted` wherever the main thread is; raised inside a finalizer or
    a callback, whose exceptions Python ignores, that exception is lost, so ``run`` also calls
    ``check`` after each session."""

    signum: int | None = None

    def check(self) -> None:
        """Raise :class:`~pipeline.errors.Interrupted` if a signal was received."""
        if self.signum is not None:
            raise Interrupted(self.signum)


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Turn SIGINT and SIGTERM into :class:`~pipeline.errors.Interrupted` in the main thread, once
    (a second signal while stopping is ignored), and record it in the :class:`StopRequest` yielded.
    A Python handler is what makes SIGTERM reach a process running as pid 1 (a container's
    entrypoint), which ignores it by default."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, _frame):
        if request.signum is None:
            request.signum = signum
            raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run(
    input_root: Path | str,
    store: Path | str,
    config: Config,
    client: Client,
    pattern: str | None = None,
    window: int | None = None,
    echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    redo: str | None = None,
    stop: Callable[[], None] = lambda: None,
) -> RunReport:
    """Process every session under ``input_root`` into ``store``; sessions already complete are
    skipped, except those whose key matches the glob ``redo``, which are rewritten.

    Raise :class:`~pipeline.errors.UsageError` when ``pattern`` or ``redo`` selects nothing. On
    :class:`~pipeline.errors.Interrupted` (raised by a signal handler, or by ``stop``, called after
    each finished session: ``StopRequest.check``) the sessions in flight are cancelled (left
    incomplete, so the store stays consistent) and the report says what finished (``stopped_by``)."""
    started = time.perf_counter()
    sessions, problems = find_sessions(input_root, pattern)
    if pattern and not sessions and not problems:
        raise UsageError(f"--sessions {pattern!r} matches no session under {input_root}")
    index = open_index(store)
    done = index.complete_keys()
    if redo is not None:
        chosen = {s.key for s in sessions if s.key in done and fnmatch.fnmatchcase(s.key, redo)}
        if not chosen:
            raise UsageError(f"--redo {redo!r} matches no complete session of {store} found under {input_root}")
        done -= chosen
    report = RunReport(store=str(store), dashboard=client.dashboard_link or "")
    report.results += [SessionResult(f"{d.parent.name}/{d.name}", "failed", reason) for d, reason in problems]
    todo = []
    for session in sessions:
        if session.key in done:
            report.results.append(SessionResult(session.key, "skipped", "already complete", frames=len(session.e91)))
        else:
            todo.append(session)
    workers = list(client.scheduler_info().get("workers", {}))
    # while the first graphs are built; waited for at the end, so no task is cancelled at shutdown
    kernels = [client.submit(load_kernels, workers=[w], pure=False, priority=10) for w in workers if todo]
    window = window or 2 * max(1, sum(client.nthreads().values()))
    echo(f"{len(todo)} session(s) to process, {len(done & {s.key for s in sessions})} already complete, "
         f"{len(problems)} unusable; dashboard: {report.dashboard}")  # fmt: skip
    pending = list(reversed(todo))
    inflight: dict = {}
    completed = as_completed()

    finished = itertools.count(1)

    def finish(result: SessionResult) -> None:
        report.results.append(result)
        echo(f"[{next(finished)}/{len(todo)}] {result.key}: {result.status} in {result.seconds:.1f} s"
             + (f": {result.reason}" if result.reason else ""))  # fmt: skip

    def submit_next() -> None:
        while pending:
            session = pending[-1]  # popped once built: an interruption meanwhile finds it not started
            t0 = time.perf_counter()
            try:
                future, attrs = _submit(session, store, config, client, index)
            except Exception as err:  # bad input found while building: report, go on
                pending.pop()
                finish(SessionResult(session.key, "failed", _reason(err), time.perf_counter() - t0))
                continue
            pending.pop()
            inflight[future] = (session, attrs, t0)
            completed.add(future)
            return

    try:
        for _ in range(min(window, len(pending))):
            submit_next()
        for future in completed:
            session, attrs, t0 = inflight[future]
            try:
                provenance = future.result()
                index.complete(session.key, attrs, provenance)
                notes = "; ".join(provenance.warnings())  # e.g. a measured gain far from the header's
                result = SessionResult(session.key, "ok", notes, time.perf_counter() - t0, len(session.e91))
            except Exception as err:
                result = SessionResult(session.key, "failed", _reason(err), time.perf_counter() - t0, len(session.e91))
            finally:
                del inflight[future]
                future.release()
            finish(result)
            stop()
            submit_next()
        alive = set(client.scheduler_info().get("workers", {}))  # a lost worker's kernel task never runs
        try:
            wait([f for f, w in zip(kernels, workers, strict=False) if w in alive], timeout=60)
        except TimeoutError:
            pass  # a slow worker's kernels: nothing of the run depends on them
    except Interrupted as stop:
        report.stopped_by = stop.name
        for future, (session, _, t0) in inflight.items():
            future.cancel()
            report.results.append(SessionResult(session.key, "stopped", f"interrupted by {stop.name} while running",
                                                time.perf_counter() - t0, len(session.e91)))  # fmt: skip
        report.results += [SessionResult(s.key, "stopped", f"not started: interrupted by {stop.name}",
                                         frames=len(s.e91)) for s in pending]  # fmt: skip
    index.flush(rebuild=any(r.status == "ok" for r in report.results))
    report.seconds = time.perf_counter() - started
    report.results.sort(key=lambda r: r.key)
    return report


def _submit(session: Session, store: Path | str, config: Config, client: Client,
            index: IndexWriter) -> tuple[Future, dict]:  # fmt: skip
    graph = build_session(session, config)
    write = write_session(graph.dataset, store, session.key, config.chunks.store_chunk_px, index)
    name = f"done-{session.key.replace('/', '-')}-{tokenize(write)[:8]}"
    files = [path.name for path in session.e91]
    done = dask.delayed(_provenance, pure=True)(write, graph.summary, files, config.to_dict(), dask_key_name=name)
    return client.compute(done), dict(graph.dataset.attrs)


def _provenance(written: dict[str, str], summary: SessionSummary, files: list[str], config: dict) -> Provenance:
    """The session's provenance once its arrays are written (``written``: the SHA-256 of each
    array's files, from ``write_session``)."""
    return summary.provenance(files, written, config)


def _reason(err: BaseException) -> str:
    """The message of an input error (it names the file); other errors with their type."""
    text = str(err).strip()
    return text if isinstance(err, SkyprepError) else f"{type(err).__name__}: {text}"
