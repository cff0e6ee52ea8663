"""The store's completeness index: which sessions are complete, their records and the split.

The index lives in the root group's attributes (``INDEX_KEY``); only the client writes it, and a
session is recorded complete only after all its arrays are written (:mod:`pipeline.io.store`).
Every write puts the index and the consolidated metadata of exactly its complete sessions into
the root's ``zarr.json`` together, atomically: readers never see one disagree with the other.
Needs zarr alone (no xarray or Dask), so ``skyprep info`` and ``skyprep split`` start quickly.
"""

from __future__ import annotations

import json
import os
import time
from bisect import bisect_left
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .contract import STORE_VERSION
from .lock import StoreError
from .objects import ObjectPath, location, zarr_store

if TYPE_CHECKING:
    from .provenance import Provenance

INDEX_KEY = "skyprep"


class StoreIndexError(StoreError):
    """A store skyprep cannot use: not a Zarr v3 store, another tool's, a malformed index or another version."""


_NO_MEMBERS = {"kind": "inline", "must_understand": False, "metadata": {}}
_NEW_ROOT = {"zarr_format": 3, "node_type": "group", "attributes": {}}


def _read_json(path: Path | ObjectPath) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise StoreIndexError(f"{path}: unreadable metadata ({err})") from None
    if not isinstance(value, dict):
        raise StoreIndexError(f"{path}: metadata is not a JSON object")
    return value


def node_document(path: Path | ObjectPath) -> dict:
    """A node's ``zarr.json`` as read by checks that report rather than refuse: ``{}`` when it is
    missing, unreadable or not a JSON object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def names(where: Path | ObjectPath) -> list[str]:
    """What lies directly in a store folder or under a store prefix (nothing for a file or a
    missing folder)."""
    if isinstance(where, ObjectPath):
        return where.names()
    return sorted(p.name for p in where.iterdir()) if where.is_dir() else []


def members(where: Path | ObjectPath) -> list[str]:
    """Names of a group's child nodes (folders or prefixes holding a ``zarr.json``)."""
    return [name for name in names(where) if name != "zarr.json" and (where / name / "zarr.json").exists()]


def _root_document(store: Path | ObjectPath | str) -> dict | None:
    """The root ``zarr.json``; ``None`` for a missing store or an empty directory or prefix."""
    where = location(store)
    path = where / "zarr.json"
    if isinstance(where, Path):
        if not where.exists():
            return None
        if not where.is_dir():
            raise StoreIndexError(f"{where}: not a directory, so not a Zarr store")
    if not path.exists():
        others = any(not name.startswith(".skyprep-") for name in names(where))
        if not others:
            return None
        if not path.exists():  # looked again: a run writes the root's zarr.json before any other node
            raise StoreIndexError(f"{where}: not a Zarr v3 store (no zarr.json) and not empty; choose another store")
    document = _read_json(path)
    if document.get("zarr_format") != 3 or document.get("node_type") != "group":
        raise StoreIndexError(f"{path}: not the root group of a Zarr v3 store")
    return document


def _index_problem(meta) -> str:
    """What makes ``meta`` not an index (empty when it is one)."""
    if not isinstance(meta, dict):
        return "not a mapping"
    version = meta.get("store_version")
    if not isinstance(version, int) or isinstance(version, bool):
        return f"store_version {version!r} is not an integer"
    if not isinstance(meta.get("sessions"), dict):
        return "'sessions' is not a mapping"
    bad = [key for key, record in meta["sessions"].items() if not isinstance(record, dict)]
    if bad:
        return f"the record of {bad[0]!r} is not a mapping"
    if not isinstance(meta.get("split", {}), dict) or not isinstance(meta.get("split", {}).get("sessions", {}), dict):
        return "'split' is not a mapping of sessions"
    return ""


def _read_index(store: Path | ObjectPath | str) -> tuple[dict | None, dict | None]:
    """The root ``zarr.json`` and the index in it (either ``None`` when absent); raise
    :class:`StoreIndexError` for another tool's store, a malformed index or another store version."""
    document = _root_document(store)
    if document is None:
        return None, None
    attributes = document.get("attributes", {})
    if not isinstance(attributes, dict) or INDEX_KEY not in attributes:
        if members(location(store)):
            raise StoreIndexError(
                f"{store}: a Zarr store written by another tool (its root has no skyprep index); "
                "skyprep does not write into it: choose another store"
            )
        return document, None
    meta = attributes[INDEX_KEY]
    problem = _index_problem(meta)
    if problem:
        raise StoreIndexError(f"{store}: malformed skyprep index in zarr.json ({problem})")
    if meta["store_version"] != STORE_VERSION:
        raise StoreIndexError(
            f"{store}: written as store version {meta['store_version']}; this skyprep reads and writes "
            f"version {STORE_VERSION}"
        )
    return document, meta


def index_document(store: Path | ObjectPath | str) -> dict | None:
    """The store's index ``{store_version, sessions, split}``, ``None`` when it has none yet; raise
    :class:`StoreIndexError` for another tool's store, a malformed index or another store version."""
    return _read_index(store)[1]


def index(store: Path | ObjectPath | str) -> dict[str, dict]:
    """The root's session index: ``{key: record}`` (empty for a new or missing store or an empty
    directory); raise :class:`StoreIndexError` when the store cannot be a skyprep store."""
    meta = index_document(store)
    return dict(meta["sessions"]) if meta else {}


def is_complete(record: dict) -> bool:
    """Whether an index record says complete: ``"complete": true`` exactly (``"false"`` is not)."""
    return record.get("complete") is True


def complete_sessions(store: Path | ObjectPath | str) -> set[str]:
    """Keys of the sessions whose every array has been written."""
    return {key for key, record in index(store).items() if is_complete(record)}


def open_index(store: Path | ObjectPath | str) -> IndexWriter:
    """Make ``store`` ready for a run: refuse a store skyprep cannot use (:class:`StoreIndexError`),
    create the index of a new one, and rebuild the consolidated metadata from the index (a store
    left by an older version or a killed run is consistent again). Returns the run's writer."""
    return IndexWriter(store, rebuild=True)


WRITE_SPACING = 20  # queued completions wait until this many times the last write's duration has passed


class IndexWriter:
    """The root index of ``store`` held by its one writer (a run, under the store's lock): the
    root document is read once; an unmark is written at once, completions are queued.

    Queued completions are written by the next write, or once ``WRITE_SPACING`` times the last
    write's duration has passed since it, so the index's cost stays a bounded share of a run
    however many sessions the store holds. A session whose completion is still queued when the
    process dies is incomplete in the store, and the next run rewrites it. Creates the index of a
    store that has none (its root is written before any other node); with ``rebuild``, rewrites
    the consolidated metadata from the index at once (one write either way)."""

    def __init__(self, store: Path | ObjectPath | str, rebuild: bool = False):
        self.store = store
        document, meta = _read_index(store)
        self._document = document or _NEW_ROOT
        self._meta = meta or {"store_version": STORE_VERSION, "sessions": {}}
        self._queued = meta is None
        self._written_at, self._cost_s = time.perf_counter(), 0.0
        if meta is None and isinstance(location(store), Path):
            location(store).mkdir(parents=True, exist_ok=True)
        if meta is None or rebuild:
            self.flush(rebuild=rebuild)

    def complete_keys(self) -> set[str]:
        """Keys of the sessions recorded complete (queued ones included)."""
        return {key for key, record in self._meta["sessions"].items() if is_complete(record)}

    def unmark(self, key: str) -> None:
        """Drop ``key`` from the index, written before returning (before its group is rewritten)."""
        if key in self._meta["sessions"]:
            self._set(key, None)
            self.flush()

    def complete(self, key: str, attrs: dict, provenance: Provenance) -> None:
        """Record the session's ``attrs`` and ``provenance`` in its group now, and queue it complete."""
        import zarr  # here, not at the top: reading the index (``skyprep info``) needs no zarr

        group = zarr.open_group(zarr_store(self.store), path=key, mode="r+", zarr_format=3)
        group.attrs.update(_jsonable({**attrs, **provenance.attrs()}))
        record = {
            "complete": True,
            "written": datetime.now(UTC).isoformat(timespec="seconds"),
            "shape": list(group["calib"].shape),
            "n_frames": int(group["e91"].shape[0]) if "e91" in group else 0,
            "instrument": attrs.get("instrument"),
            "band": attrs.get("band"),
            "obs_id": attrs.get("obs_id"),
        }
        self._set(key, _jsonable({**record, **provenance.index_fields()}))
        if time.perf_counter() - self._written_at >= WRITE_SPACING * self._cost_s:
            self.flush()

    def flush(self, rebuild: bool = False) -> None:
        """Write what is queued (everything, and the consolidated metadata read afresh, with ``rebuild``)."""
        if not (self._queued or rebuild):
            return
        started = time.perf_counter()
        self._document = _write_index(self.store, self._meta, self._document, rebuild)
        self._queued = False
        self._written_at = time.perf_counter()
        self._cost_s = self._written_at - started

    def _set(self, key: str, record: dict | None) -> None:
        sessions = dict(self._meta["sessions"])
        if record is None:
            sessions.pop(key, None)
        else:
            split = self._meta.get("split", {}).get("sessions", {}).get(key)
            sessions[key] = {**record, "split": split} if split else record
        self._meta = {**self._meta, "sessions": dict(sorted(sessions.items()))}
        self._queued = True


def _write_index(store: Path | ObjectPath | str, meta: dict, document: dict, rebuild: bool = False) -> dict:
    """Write the index and the consolidated metadata of exactly its complete sessions, together
    in the root's ``zarr.json`` (``document``, as last read or written), atomically: a reader sees
    the old document or the new one (a local file is replaced by a rename, an object by one PUT).
    Returns the document written."""
    root = location(store) / "zarr.json"
    document = {**document, "attributes": {**document.get("attributes", {}), INDEX_KEY: meta}}
    previous = {} if rebuild else document.get("consolidated_metadata", {}).get("metadata", {})
    document["consolidated_metadata"] = {**_NO_MEMBERS, "metadata": _consolidated(store, meta, previous)}
    text = json.dumps(document, separators=(",", ":"))
    if isinstance(root, ObjectPath):
        root.write_text(text)
        return document
    tmp = root.with_name(f".zarr.json.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, root)
    return document


def _consolidated(store: Path | ObjectPath | str, meta: dict, previous: dict) -> dict:
    """Every node's metadata under the complete sessions (and their instrument groups), by path;
    entries of sessions already consolidated are kept from ``previous``, the others read."""
    paths = sorted(previous)
    entries = {}
    for key in sorted(k for k, record in meta["sessions"].items() if is_complete(record)):
        kept = _under(paths, key)
        entries.update({path: previous[path] for path in kept} if kept else _node_entries(store, key))
        parent = key.rsplit("/", 1)[0]
        if "/" in key and parent not in entries:
            entries[parent] = previous.get(parent) or _entry(location(store) / parent / "zarr.json")
    return dict(sorted(entries.items()))


def _under(paths: list[str], key: str) -> list[str]:
    """The sorted ``paths`` that are ``key`` or lie under it."""
    first = bisect_left(paths, key)
    own = paths[first : first + 1] if paths[first : first + 1] == [key] else []
    below = paths[bisect_left(paths, key + "/") : bisect_left(paths, key + "0")]  # "0" sorts right after "/"
    return own + below


def _entry(path: Path | ObjectPath) -> dict:
    document = _read_json(path)
    return {**document, "consolidated_metadata": _NO_MEMBERS} if document.get("node_type") == "group" else document


def _node_entries(store: Path | ObjectPath | str, key: str) -> dict:
    """The metadata of the group ``key`` and of every node under it, by path from the root."""
    group = location(store) / key
    if isinstance(group, ObjectPath):
        found = [name for name, _ in group.files() if name == "zarr.json" or name.endswith("/zarr.json")]
    else:
        found = [p.relative_to(group).as_posix() for p in group.rglob("zarr.json")]
    nodes = sorted(name.removesuffix("zarr.json").rstrip("/") for name in found)
    return {"/".join(filter(None, (key, node))): _entry(group / node / "zarr.json") for node in nodes}


def splits(store: Path | ObjectPath | str) -> dict[str, str]:
    """The recorded train/test split, ``{key: 'train' | 'test'}`` (empty when none is recorded)."""
    meta = index_document(store)
    return dict(meta.get("split", {}).get("sessions", {})) if meta else {}


def record_split(store: Path | ObjectPath | str, assignment: dict[str, str], how: dict) -> None:
    """Record a split (``{key: 'train' | 'test'}`` and how it was made) in the root index.

    The split outlives rewrites of its sessions: :class:`IndexWriter` copies it into each record.
    """
    document, meta = _read_index(store)
    meta = meta or {"store_version": STORE_VERSION, "sessions": {}}
    sessions = {key: {**record, "split": assignment.get(key)} for key, record in meta["sessions"].items()}
    split = {**_jsonable(how), "sessions": dict(sorted(assignment.items()))}
    _write_index(store, {**meta, "split": split, "sessions": sessions}, document or _NEW_ROOT)


def unmark(store: Path | ObjectPath | str, key: str) -> None:
    """Drop ``key`` from the index (before its group is rewritten)."""
    IndexWriter(store).unmark(key)


def mark_complete(store: Path | ObjectPath | str, key: str, attrs: dict, provenance: Provenance) -> None:
    """Record the session's ``attrs`` and ``provenance`` in its group, then mark it complete in the root index."""
    writer = IndexWriter(store)
    writer.complete(key, attrs, provenance)
    writer.flush()


def consolidate(store: Path | ObjectPath | str) -> None:
    """Rebuild the consolidated metadata (``xarray.open_datatree`` opens the store with one read)
    from the index: it lists exactly the complete sessions. Every index write keeps it so; this
    repairs a store whose consolidated copy was written otherwise."""
    if index_document(store) is not None:
        IndexWriter(store, rebuild=True)


def _jsonable(value):
    """Attributes as plain JSON types (numpy scalars and arrays converted, NaN as None)."""
    import numpy as np  # here, not at the top: reading the index needs no numpy

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
