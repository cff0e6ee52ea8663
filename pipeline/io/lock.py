"""One run per store: a lock file next to the store, ``<store>.lock``, holding the owner's pid and host.

The lock is written whole under a temporary name and hard-linked into place (an exclusive
create), so two runs that start together cannot both get it and a lock file is never seen half
written. A lock left by a run that died is stale and replaced: when it names this host and a pid
that is no longer alive, or alive but started at another time than the owner (pids are reused:
a container's entrypoint is always pid 1), or when the file holds no record at all (empty or
not JSON: no skyprep run wrote it so). A lock from another host is never broken automatically
(delete the file once you know that run is gone).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from ..errors import SkyprepError


class StoreError(SkyprepError):
    """The output store cannot be used: locked by another run, or not writable."""


def lock_path(store: Path | str) -> Path:
    """Where the lock of ``store`` lives: next to it, ``<store>.lock``."""
    store = Path(store)
    return store.with_name(store.name + ".lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux), ``None`` when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _owner(path: Path) -> dict | None:
    """The lock's record; ``None`` when the file holds none (empty or not a JSON object)."""
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _is_stale(owner: dict | None) -> bool:
    if owner is None:
        return True
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    if not _alive(pid):
        return True
    recorded, now = owner.get("process_start"), _process_start(pid)
    return recorded is not None and now is not None and recorded != now


def _create(path: Path) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
              "started": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    try:
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_writable(store: Path) -> None:
    """An existing store must take new files (a new one is created where the lock file just was)."""
    if not store.exists():
        return
    probe = store / f".skyprep-write-probe-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


@contextmanager
def store_lock(store: Path | str) -> Iterator[Path]:
    """Hold the store's lock for the duration of a run; raise :class:`StoreError` when it cannot be had."""
    store = Path(store)
    path = lock_path(store)
    try:
        try:
            _create(path)
        except FileExistsError:
            owner = _owner(path)
            if not _is_stale(owner):
                raise StoreError(
                    f"{store}: in use by another skyprep run (pid {owner.get('pid', '?')} on host "
                    f"{owner.get('host', '?')} since {owner.get('started', '?')}); if that run is gone, delete {path}"
                ) from None
            path.unlink(missing_ok=True)
            _create(path)
        _check_writable(store)
    except OSError as err:
        if path.exists() and (_owner(path) or {}).get("pid") == os.getpid():
            path.unlink()
        raise StoreError(f"{store}: cannot write the store here ({err.strerror or err})") from None
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
