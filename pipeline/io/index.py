"""The store's completeness index: which sessions are complete, their records and the split.

The index lives in the root group's attributes (``INDEX_KEY``); only the client writes it, and a
session is recorded complete only after all its arrays are written (:mod:`pipeline.io.store`).
Needs zarr alone (no xarray or Dask), so ``skyprep info`` and ``skyprep split`` start quickly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr

from .contract import STORE_VERSION

if TYPE_CHECKING:
    from .provenance import Provenance

INDEX_KEY = "skyprep"


def _root(store: Path | str, mode: str = "a") -> zarr.Group:
    return zarr.open_group(str(store), mode=mode, zarr_format=3)


def index(store: Path | str) -> dict[str, dict]:
    """The root's session index: ``{key: record}`` (empty for a new or missing store)."""
    if not Path(store).exists():
        return {}
    return dict(_root(store, "r").attrs.get(INDEX_KEY, {}).get("sessions", {}))


def complete_sessions(store: Path | str) -> set[str]:
    """Keys of the sessions whose every array has been written."""
    return {key for key, record in index(store).items() if record.get("complete")}


def _update_index(store: Path | str, key: str, record: dict | None) -> None:
    root = _root(store)
    meta = dict(root.attrs.get(INDEX_KEY, {"store_version": STORE_VERSION, "sessions": {}}))
    sessions = dict(meta.get("sessions", {}))
    if record is None:
        sessions.pop(key, None)
    else:
        split = meta.get("split", {}).get("sessions", {}).get(key)
        sessions[key] = {**record, "split": split} if split else record
    meta["sessions"] = dict(sorted(sessions.items()))
    root.attrs[INDEX_KEY] = meta


def splits(store: Path | str) -> dict[str, str]:
    """The recorded train/test split, ``{key: 'train' | 'test'}`` (empty when none is recorded)."""
    if not Path(store).exists():
        return {}
    return dict(_root(store, "r").attrs.get(INDEX_KEY, {}).get("split", {}).get("sessions", {}))


def record_split(store: Path | str, assignment: dict[str, str], how: dict) -> None:
    """Record a split (``{key: 'train' | 'test'}`` and how it was made) in the root index.

    The split outlives rewrites of its sessions: ``_update_index`` copies it into each record.
    """
    root = _root(store)
    meta = dict(root.attrs.get(INDEX_KEY, {"store_version": STORE_VERSION, "sessions": {}}))
    meta["split"] = {**_jsonable(how), "sessions": dict(sorted(assignment.items()))}
    meta["sessions"] = {
        key: {**record, "split": assignment.get(key)} for key, record in meta.get("sessions", {}).items()
    }
    root.attrs[INDEX_KEY] = meta


def unmark(store: Path | str, key: str) -> None:
    """Drop ``key`` from the index (before its group is rewritten)."""
    if Path(store).exists() and key in index(store):
        _update_index(store, key, None)


def mark_complete(store: Path | str, key: str, attrs: dict, provenance: Provenance) -> None:
    """Record the session's ``attrs`` and ``provenance`` in its group, then mark it complete in the root index."""
    group = zarr.open_group(str(store), path=key, mode="r+", zarr_format=3)
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
    _update_index(store, key, _jsonable({**record, **provenance.index_fields()}))


def _jsonable(value):
    """Attributes as plain JSON types (numpy scalars and arrays converted, NaN as None)."""
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
