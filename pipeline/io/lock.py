"""One run per store: a lock file next to the store, ``<store>.lock``, holding the owner's pid and host.

The lock is taken with an exclusive create, so two runs that start together cannot both get it.
A lock left by a run that died is stale: when it names this host and a pid that is no longer
alive it is replaced; a lock from another host is never broken automatically (delete the file
once you know that run is gone).
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


def _owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _is_stale(owner: dict) -> bool:
    return owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) and not _alive(owner["pid"])


def _create(path: Path) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle)


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
        if path.exists() and _owner(path).get("pid") == os.getpid():
            path.unlink()
        raise StoreError(f"{store}: cannot write the store here ({err.strerror or err})") from None
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
