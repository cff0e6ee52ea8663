"""Running the job: a Dask client, a bounded window of sessions in flight, the run report.

One place for orchestration. Each session is built into its own subgraph on the client and
submitted as one future; new sessions are submitted as earlier ones finish, so the scheduler
never holds more than ``window`` sessions. A failing session is reported and the rest go on.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dask
import yaml
from dask.base import tokenize
from distributed import Client, LocalCluster, as_completed, fire_and_forget

from . import DASK_YAML, __version__
from .config import Config
from .errors import SkyprepError
from .graph import build_session, load_kernels
from .io.discover import Session, find_sessions
from .io.store import complete_sessions, consolidate, mark_complete, write_session

dask.config.update_defaults(yaml.safe_load(DASK_YAML.read_text()))


@dataclass
class SessionResult:
    """How one session went."""

    key: str
    status: str  # "ok", "failed" or "skipped" (already complete)
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

    @property
    def failed(self) -> list[SessionResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def exit_code(self) -> int:
        """0 when every session succeeded (or was already complete), else 1."""
        return 1 if self.failed else 0

    def table(self) -> str:
        """A plain-text table for the terminal."""
        width = max([len(r.key) for r in self.results] + [7])
        lines = [f"{'session':<{width}}  {'status':<7}  {'frames':>6}  {'seconds':>8}  reason"]
        for r in self.results:
            lines.append(f"{r.key:<{width}}  {r.status:<7}  {r.frames:>6}  {r.seconds:>8.1f}  {r.reason}")
        counts = {s: sum(r.status == s for r in self.results) for s in ("ok", "skipped", "failed")}
        lines.append(
            f"{counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed in {self.seconds:.1f} s"
        )
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        payload = {"store": self.store, "software": f"skyprep {__version__}", "seconds": self.seconds,
                   "sessions": [asdict(r) for r in self.results]}  # fmt: skip
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, path)


def report_path(store: Path | str) -> Path:
    """Where the run report of ``store`` is written: next to it, ``<store>.report.json``."""
    store = Path(store)
    return store.with_name(store.name + ".report.json")


@contextmanager
def make_client(
    scheduler: str | None = None, workers: int | None = None, scheduler_file: str | None = None
) -> Iterator[Client]:
    """A client of ``scheduler``, of the cluster a ``scheduler_file`` describes, or of Dask's configured
    ``scheduler-address`` (``DASK_SCHEDULER_ADDRESS``); else of a new LocalCluster shut down on exit."""
    if scheduler_file:
        with Client(scheduler_file=str(scheduler_file)) as client:
            yield client
        return
    address = scheduler or dask.config.get("scheduler-address", None)
    if address:
        with Client(address) as client:
            yield client
        return
    with LocalCluster(n_workers=workers or min(os.cpu_count() or 1, 4), threads_per_worker=1,
                      dashboard_address=":0") as cluster, Client(cluster) as client:  # fmt: skip
        yield client


def run(
    input_root: Path | str,
    store: Path | str,
    config: Config,
    client: Client,
    pattern: str | None = None,
    window: int | None = None,
    echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> RunReport:
    """Process every session under ``input_root`` into ``store``; sessions already complete are skipped."""
    started = time.perf_counter()
    sessions, problems = find_sessions(input_root, pattern)
    report = RunReport(store=str(store), dashboard=client.dashboard_link or "")
    report.results += [SessionResult(f"{d.parent.name}/{d.name}", "failed", reason) for d, reason in problems]
    done = complete_sessions(store)
    todo = []
    for session in sessions:
        if session.key in done:
            report.results.append(SessionResult(session.key, "skipped", "already complete", frames=len(session.e91)))
        else:
            todo.append(session)
    workers = list(client.scheduler_info().get("workers", {}))
    for worker in workers if todo else ():  # while the first graphs are built
        fire_and_forget(client.submit(load_kernels, workers=[worker], pure=False, priority=10))
    window = window or 2 * max(1, len(workers))
    echo(f"{len(todo)} session(s) to process, {len(done & {s.key for s in sessions})} already complete, "
         f"{len(problems)} unusable; dashboard: {report.dashboard}")  # fmt: skip
    pending = list(reversed(todo))
    inflight: dict = {}
    completed = as_completed()
    total, finished = len(todo), 0

    def submit_next() -> None:
        while pending:
            session = pending.pop()
            t0 = time.perf_counter()
            try:
                future, attrs = _submit(session, store, config, client)
            except Exception as err:  # bad input found while building: report, go on
                report.results.append(SessionResult(session.key, "failed", _reason(err), time.perf_counter() - t0))
                echo(f"[{total - len(pending)}/{total}] {session.key}: failed: {_reason(err)}")
                continue
            inflight[future] = (session, attrs, t0)
            completed.add(future)
            return

    for _ in range(min(window, len(pending))):
        submit_next()
    for future in completed:
        session, attrs, t0 = inflight.pop(future)
        finished += 1
        try:
            summary = future.result()
            mark_complete(store, session.key, {**attrs, **_provenance(session, summary, config)},
                          {"registration_failures": sum(not f["ok"] for f in summary["offsets"]),
                           "reference_check": summary["reference"]})  # fmt: skip
            result = SessionResult(session.key, "ok", "", time.perf_counter() - t0, len(session.e91))
        except Exception as err:
            result = SessionResult(session.key, "failed", _reason(err), time.perf_counter() - t0, len(session.e91))
        finally:
            future.release()
        report.results.append(result)
        echo(f"[{finished}/{total}] {session.key}: {result.status} in {result.seconds:.1f} s"
             + (f": {result.reason}" if result.reason else ""))  # fmt: skip
        submit_next()
    if any(r.status == "ok" for r in report.results):
        consolidate(store)
    report.seconds = time.perf_counter() - started
    report.results.sort(key=lambda r: r.key)
    return report


def _submit(session: Session, store, config: Config, client: Client):
    graph = build_session(session, config)
    write = write_session(graph.dataset, store, session.key, config.chunks.store_chunk_px)
    name = f"done-{session.key.replace('/', '-')}-{tokenize(write)[:8]}"
    done = dask.delayed(_summary_after_write, pure=True)(write, graph.summary, dask_key_name=name)
    return client.compute(done), dict(graph.dataset.attrs)


def _summary_after_write(written: dict, summary: dict) -> dict:
    """Registration results, input checksums, agreement with the archive's products and the
    SHA-256 of each array's written files (``written``, from ``write_session``)."""
    return {
        "offsets": [
            {
                "dy": o.dy,
                "dx": o.dx,
                "quality": o.quality,
                "ok": o.ok,
                "reason": o.reason,
                "method": o.method,
                "note": o.note,
            }
            for o in summary["offsets"]
        ],
        "checksums": summary["checksums"],
        "reference": summary["reference"],
        "array_sha256": written,
    }


def _provenance(session: Session, summary: dict, config: Config) -> dict:
    registration = [{"file": path.name, **offset} for path, offset in zip(session.e91, summary["offsets"])]
    return {
        "registration": registration,
        "inputs": summary["checksums"],
        "array_sha256": summary["array_sha256"],
        "reference_check": summary["reference"],
        "config": config.to_dict(),
        "complete": True,
    }


def _reason(err: BaseException) -> str:
    """The message of an input error (it names the file); other errors with their type."""
    text = str(err).strip()
    return text if isinstance(err, SkyprepError) else f"{type(err).__name__}: {text}"
