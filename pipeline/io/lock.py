"""One run per store: a lock next to the store, ``<store>.lock``, holding the owner's pid and host.

The lock is taken with an atomic create that fails when the lock exists, so two runs that start
together cannot both get it: an exclusive file create (``O_EXCL``) on a filesystem, a conditional
PUT (``If-None-Match: *``) of a lock object in an object store. A lock left by a run that died is
stale: when it names this host and a pid that is no longer alive it is replaced (in an object
store by a PUT conditional on the stale lock's ETag, so of two runs replacing it one wins); a
lock from another host is never broken automatically (delete it once you know that run is gone).
"""

from __future__ import annotations

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


def _owner(text: str | None) -> dict:
    try:
        owner = json.loads(text or "")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _is_stale(owner: dict) -> bool:
    return owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) and not _alive(owner["pid"])


def _record() -> bytes:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex,
                       "started": datetime.now(UTC).isoformat(timespec="seconds")}).encode()  # fmt: skip


def _refusal(store, path, owner: dict) -> StoreError:
    return StoreError(
        f"{store}: in use by another skyprep run (pid {owner.get('pid', '?')} on host "
        f"{owner.get('host', '?')} since {owner.get('started', '?')}); if that run is gone, delete {path}"
    )


def _take_file(store: Path, path: Path) -> None:
    def create() -> None:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(_record())

    try:
        create()
    except FileExistsError:
        try:
            owner = _owner(path.read_text())
        except OSError:
            owner = {}
        if not _is_stale(owner):
            raise _refusal(store, path, owner) from None
        path.unlink(missing_ok=True)
        create()
    if store.exists():  # an existing store must take new files (a new one is created where the lock is)
        probe = store / f".skyprep-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()


def _take_object(store: ObjectPath, path: ObjectPath) -> bytes:
    record = _record()
    if not path.create(record):
        etag = path.etag()
        owner = _owner(path.read_text()) if etag else {}
        if etag is None:  # released between the create and the look: try once more
            if path.create(record):
                return record
            raise _refusal(store, path, _owner(path.read_text()))
        if not _is_stale(owner) or not path.replace(record, etag):
            raise _refusal(store, path, owner)
    if path.create(record):  # a server that ignores If-None-Match cannot keep runs apart: refuse it
        path.unlink(missing_ok=True)
        raise StoreError(f"{store}: the object store does not honour conditional writes (If-None-Match), so one "
                         "run per store cannot be guaranteed there")  # fmt: skip
    probe = store / f".skyprep-write-probe-{uuid.uuid4().hex}"  # credentials that may read but not write
    probe.write_bytes(b"")
    probe.unlink()
    return record


@contextmanager
def store_lock(store: Path | ObjectPath | str) -> Iterator[Path | ObjectPath]:
    """Hold the store's lock for the duration of a run; raise :class:`StoreError` when it cannot be had."""
    store = location(store)
    path = lock_path(store)
    mine = None
    try:
        if isinstance(store, ObjectPath):
            mine = _take_object(store, path)
        else:
            _take_file(store, path)
    except StoreError:
        raise
    except Exception as err:  # OSError on a filesystem; obstore's errors (permissions, network) on a bucket
        if _owner(_read(path)).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
        reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0] or type(err).__name__
        raise StoreError(f"{store}: cannot write the store here ({reason})") from None
    try:
        yield path
    finally:
        if mine is None:
            path.unlink(missing_ok=True)
        elif _read(path) == mine.decode():  # still ours: not broken by hand and retaken by another run
            path.unlink(missing_ok=True)


def _read(path: Path | ObjectPath) -> str | None:
    try:
        return path.read_text()
    except Exception:
        return None
