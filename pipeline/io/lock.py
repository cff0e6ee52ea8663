"""One run per store: a lock next to the store, ``<store>.lock``, holding the owner's pid and host.

The lock is taken with an atomic create that fails when the lock exists, so two runs that start
together cannot both get it. On a filesystem the record is written whole under a temporary name
and hard-linked into place (an exclusive create: a lock file is never seen half written); in an
object store it is a conditional PUT (``If-None-Match: *``) of a lock object.

A lock left by a run that died is stale and replaced (in an object store by a PUT conditional on
the stale lock's ETag, so of two runs replacing it one wins): when it names this host and a pid
that is no longer alive, or alive but started at another time than the owner (pids are reused: a
container's entrypoint is always pid 1), or when it holds no record at all (empty or not JSON: no
skyprep run wrote it so). A lock from another host is never broken automatically (delete it once
you know that run is gone).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from ..errors import SkyprepError
from .objects import ObjectPath, location


class StoreError(SkyprepError):
    """The output store cannot be used: locked by another run, or not writable."""


def lock_path(store: Path | ObjectPath | str) -> Path | ObjectPath:
    """Where the lock of ``store`` lives: next to it, ``<store>.lock``."""
    store = location(store)
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


def _owner(text: str | None) -> dict | None:
    """The lock's record; ``None`` when it holds none (empty or not a JSON object)."""
    try:
        record = json.loads(text or "")
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


def _record() -> bytes:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "process_start": _process_start(os.getpid()),
        "token": uuid.uuid4().hex,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return json.dumps(record).encode()


def _refusal(store, path, owner: dict | None) -> StoreError:
    owner = owner or {}
    return StoreError(
        f"{store}: in use by another skyprep run (pid {owner.get('pid', '?')} on host "
        f"{owner.get('host', '?')} since {owner.get('started', '?')}); if that run is gone, delete {path}"
    )


def _create_file(path: Path, record: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # unique per attempt, not per process
    tmp.write_bytes(record)
    try:
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _break_if_stale(store: Path, path: Path) -> None:
    """Delete the lock file when it is stale; raise the refusal when a live run holds it.

    Runs breaking the same stale lock take turns (``flock`` on it), and each judges and deletes
    the very file it opened, only while ``path`` still is that file: none deletes a lock that
    another has just taken.
    """
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        owner = _owner(handle.read().decode(errors="replace"))
        try:
            replaced = os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            return
        if replaced:
            owner = _owner(_read(path))
        if replaced or not _is_stale(owner):
            raise _refusal(store, path, owner)
        path.unlink()


def _take_file(store: Path, path: Path, record: bytes) -> None:
    try:
        _create_file(path, record)
    except FileExistsError:
        _break_if_stale(store, path)
        try:
            _create_file(path, record)
        except FileExistsError:  # another run broke the same stale lock first
            raise _refusal(store, path, _owner(_read(path))) from None
    if store.exists():  # an existing store must take new files (a new one is created where the lock is)
        probe = store / f".skyprep-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()


def _take_object(store: ObjectPath, path: ObjectPath, record: bytes) -> None:
    if not path.create(record):
        etag = path.etag()
        if etag is None:  # released between the create and the look: try once more
            if path.create(record):
                return
            raise _refusal(store, path, _owner(_read(path)))
        owner = _owner(_read(path))
        if not _is_stale(owner) or not path.replace(record, etag):
            raise _refusal(store, path, owner)
    if path.create(record):  # a server that ignores If-None-Match cannot keep runs apart: refuse it
        path.unlink(missing_ok=True)
        raise StoreError(
            f"{store}: the object store does not honour conditional writes (If-None-Match), so one "
            "run per store cannot be guaranteed there"
        )
    probe = store / f".skyprep-write-probe-{uuid.uuid4().hex}"  # credentials that may read but not write
    probe.write_bytes(b"")
    probe.unlink()


@contextmanager
def store_lock(store: Path | ObjectPath | str) -> Iterator[Path | ObjectPath]:
    """Hold the store's lock for the duration of a run; raise :class:`StoreError` when it cannot be had."""
    store = location(store)
    path, mine = lock_path(store), _record()
    try:
        (_take_object if isinstance(store, ObjectPath) else _take_file)(store, path, mine)
    except StoreError:
        raise
    except Exception as err:  # OSError on a filesystem; obstore's errors (permissions, network) on a bucket
        if _read(path) == mine.decode():
            path.unlink(missing_ok=True)
        reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0] or type(err).__name__
        raise StoreError(f"{store}: cannot write the store here ({reason})") from None
    try:
        yield path
    finally:
        if _read(path) == mine.decode():  # still ours: not broken by hand and retaken by another run
            path.unlink(missing_ok=True)


def _read(path: Path | ObjectPath) -> str | None:
    try:
        return path.read_text()
    except Exception:
        return None
