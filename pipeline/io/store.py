"""The Zarr edge: the store contract (v1), session writes and the completeness index.

Layout: one group per session at ``/<instrument>_<band>/<obs_id>``. A session is written in
two steps: its arrays (region writes aligned to whole chunks, computed once by Dask), then its
provenance and ``complete = true`` in the root's index. Only the client writes the index, so a
crash leaves at most an incomplete session, which the next run rewrites.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import dask
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize
from zarr.codecs import BloscCodec, ZstdCodec

from .lock import StoreError

STORE_VERSION = 1
INDEX_KEY = "skyprep"


# Codecs by dtype (docs/store-layout.md). Noisy float pixels: blosc-lz4 on shuffled bytes writes
# 1.5-2x faster, reads 1.4-1.7x faster and is 8% smaller than zarr's default zstd (level 3). Bit
# masks and counts: zstd at level 1, as fast as level 3 or faster and as small, 2-4x smaller
# than blosc-lz4.
FLOAT_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
INTEGER_CODEC = ZstdCodec(level=1)


def encoding(dataset: xr.Dataset, chunk_px: int) -> dict:
    """Zarr chunks for every variable: ``chunk_px`` squares (no larger than the frame), one frame
    deep for cubes; float variables compressed with ``FLOAT_CODEC``, integers with ``INTEGER_CODEC``."""
    result = {}
    for name, variable in dataset.data_vars.items():
        if variable.dims[-2:] == ("y", "x"):
            lead = (1,) * (variable.ndim - 2)
            result[name] = {"chunks": (*lead, *(min(chunk_px, n) for n in variable.shape[-2:]))}
        else:
            result[name] = {"chunks": variable.shape}
        result[name]["compressors"] = [FLOAT_CODEC if np.issubdtype(variable.dtype, np.floating) else INTEGER_CODEC]
    return result


def write_session(dataset: xr.Dataset, store: Path | str, key: str, chunk_px: int):
    """Write the session's metadata now and return the Delayed that writes its arrays and gives
    the SHA-256 of each array's files, ``{name: hex digest}`` (``array_files_sha256``).

    Any earlier (incomplete) version of the group is replaced. Dask chunks are whole multiples
    of the Zarr chunks along every axis, so each Zarr chunk is written by exactly one task: one
    region write per Dask block, which takes the block's own key (so a task elsewhere in the
    session's graph that uses the same block shares its computation rather than repeating it).
    Each array is hashed as soon as its own blocks are written.
    """
    _check_alignment(dataset, chunk_px)
    if _index_document(store) is None:  # a new store gets its (empty) index before any group
        open_index(store)
    _unmark(store, key)
    dataset.to_zarr(
        str(store),
        group=key,
        mode="w",
        compute=False,
        consolidated=False,
        zarr_format=3,
        encoding=encoding(dataset, chunk_px),
    )  # the template: metadata and coordinates
    digests, token, label = {}, tokenize(dataset)[:8], key.replace("/", "-")
    with dask.annotate(priority=1):  # a block is written (and freed) as soon as it is computed
        for name, variable in dataset.data_vars.items():
            starts = [np.cumsum((0,) + c) for c in variable.chunks]
            blocks = variable.data.to_delayed(optimize_graph=False)
            writes = []
            for index in np.ndindex(blocks.shape):
                region = tuple(slice(int(s[i]), int(s[i + 1])) for s, i in zip(starts, index))
                writes.append(
                    dask.delayed(_write_region, pure=True)(
                        blocks[index],
                        str(store),
                        f"{key}/{name}",
                        region,
                        dask_key_name=(f"write-{name}-{label}-{token}", *index),
                    )
                )
            digests[name] = dask.delayed(_digest_after, pure=True)(writes, str(Path(store) / key / name),
                                                                   dask_key_name=f"sha256-{name}-{label}-{token}")  # fmt: skip
    return dask.delayed(dict, pure=True)(digests, dask_key_name=f"written-{label}-{token}")


def _write_region(block: np.ndarray, store: str, path: str, region: tuple[slice, ...]) -> None:
    zarr.open_array(store, path=path, mode="r+", zarr_format=3)[region] = block


def _digest_after(_writes, array_dir: str) -> str:
    return array_files_sha256(Path(array_dir))


def array_files_sha256(array_dir: Path) -> str:
    """SHA-256 of an array's files: its ``zarr.json`` and every chunk file in key order, each as
    its name relative to ``array_dir`` and a NUL, then its bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in array_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(array_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _check_alignment(dataset: xr.Dataset, chunk_px: int) -> None:
    for name, variable in dataset.data_vars.items():
        if variable.chunks is None or variable.dims[-2:] != ("y", "x"):
            continue
        for size in variable.chunks[-2][:-1]:
            if size % chunk_px:
                raise ValueError(f"{name}: Dask row chunks {variable.chunks[-2]} are not multiples of {chunk_px}")


class StoreIndexError(StoreError):
    """A store skyprep cannot use: not a Zarr v3 store, another tool's, a malformed index or another version."""


_NO_MEMBERS = {"kind": "inline", "must_understand": False, "metadata": {}}


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise StoreIndexError(f"{path}: unreadable metadata ({err})") from None
    if not isinstance(value, dict):
        raise StoreIndexError(f"{path}: metadata is not a JSON object")
    return value


def _root_document(store: Path | str) -> dict | None:
    """The root ``zarr.json``; ``None`` for a missing store or an empty directory."""
    store = Path(store)
    if not store.exists():
        return None
    if not store.is_dir():
        raise StoreIndexError(f"{store}: not a directory, so not a Zarr store")
    path = store / "zarr.json"
    if not path.is_file():
        if any(not p.name.startswith(".skyprep-") for p in store.iterdir()):
            raise StoreIndexError(f"{store}: not a Zarr v3 store (no zarr.json) and not empty; choose another store")
        return None
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


def _index_document(store: Path | str) -> dict | None:
    """The store's index ``{store_version, sessions, split}``, ``None`` when it has none yet; raise
    :class:`StoreIndexError` for another tool's store, a malformed index or another store version."""
    document = _root_document(store)
    if document is None:
        return None
    attributes = document.get("attributes", {})
    if not isinstance(attributes, dict) or INDEX_KEY not in attributes:
        if _members(store):
            raise StoreIndexError(
                f"{store}: a Zarr store written by another tool (its root has no skyprep index); "
                "skyprep does not write into it: choose another store"
            )
        return None
    meta = attributes[INDEX_KEY]
    problem = _index_problem(meta)
    if problem:
        raise StoreIndexError(f"{store}: malformed skyprep index in zarr.json ({problem})")
    if meta["store_version"] != STORE_VERSION:
        raise StoreIndexError(
            f"{store}: written as store version {meta['store_version']}; this skyprep reads and writes "
            f"version {STORE_VERSION}"
        )
    return meta


def _members(store: Path | str) -> list[str]:
    """Names of the root's child nodes (folders holding a ``zarr.json``)."""
    return sorted(p.name for p in Path(store).iterdir() if (p / "zarr.json").is_file())


def index(store: Path | str) -> dict[str, dict]:
    """The root's session index: ``{key: record}`` (empty for a new or missing store or an empty
    directory); raise :class:`StoreIndexError` when the store cannot be a skyprep store."""
    meta = _index_document(store)
    return dict(meta["sessions"]) if meta else {}


def is_complete(record: dict) -> bool:
    """Whether an index record says complete: ``"complete": true`` exactly (``"false"`` is not)."""
    return record.get("complete") is True


def complete_sessions(store: Path | str) -> set[str]:
    """Keys of the sessions whose every array has been written."""
    return {key for key, record in index(store).items() if is_complete(record)}


def open_index(store: Path | str) -> None:
    """Make ``store`` ready for a run: refuse a store skyprep cannot use (:class:`StoreIndexError`),
    create the index of a new one, and rebuild the consolidated metadata from the index (a store
    left by an older version or a killed run is consistent again)."""
    meta = _index_document(store) or {"store_version": STORE_VERSION, "sessions": {}}
    Path(store).mkdir(parents=True, exist_ok=True)
    _write_index(store, meta, rebuild=True)


def _write_index(store: Path | str, meta: dict, rebuild: bool = False) -> None:
    """Write the index and the consolidated metadata of exactly its complete sessions, together
    in the root's ``zarr.json``, atomically (a reader sees the old file or the new one)."""
    root = Path(store) / "zarr.json"
    document = _root_document(store) or {"zarr_format": 3, "node_type": "group", "attributes": {}}
    document["attributes"] = {**document.get("attributes", {}), INDEX_KEY: meta}
    previous = {} if rebuild else document.get("consolidated_metadata", {}).get("metadata", {})
    document["consolidated_metadata"] = {**_NO_MEMBERS, "metadata": _consolidated(store, meta, previous)}
    tmp = root.with_name(f".zarr.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, indent=2))
    os.replace(tmp, root)


def _consolidated(store: Path | str, meta: dict, previous: dict) -> dict:
    """Every node's metadata under the complete sessions (and their instrument groups), by path;
    entries of sessions already consolidated are kept from ``previous``, the others read."""
    entries = {}
    for key in sorted(k for k, record in meta["sessions"].items() if is_complete(record)):
        kept = {path: entry for path, entry in previous.items() if path == key or path.startswith(key + "/")}
        entries.update(kept or _node_entries(store, key))
        parent = key.rsplit("/", 1)[0]
        if "/" in key and parent not in entries:
            entries[parent] = previous.get(parent) or _entry(Path(store) / parent / "zarr.json")
    return dict(sorted(entries.items()))


def _entry(path: Path) -> dict:
    document = _read_json(path)
    return {**document, "consolidated_metadata": _NO_MEMBERS} if document.get("node_type") == "group" else document


def _node_entries(store: Path | str, key: str) -> dict:
    base = Path(store)
    return {p.parent.relative_to(base).as_posix(): _entry(p) for p in sorted((base / key).rglob("zarr.json"))}


def _update_index(store: Path | str, key: str, record: dict | None) -> None:
    meta = _index_document(store) or {"store_version": STORE_VERSION, "sessions": {}}
    sessions = dict(meta["sessions"])
    if record is None:
        sessions.pop(key, None)
    else:
        split = meta.get("split", {}).get("sessions", {}).get(key)
        sessions[key] = {**record, "split": split} if split else record
    _write_index(store, {**meta, "sessions": dict(sorted(sessions.items()))})


def splits(store: Path | str) -> dict[str, str]:
    """The recorded train/test split, ``{key: 'train' | 'test'}`` (empty when none is recorded)."""
    meta = _index_document(store)
    return dict(meta.get("split", {}).get("sessions", {})) if meta else {}


def record_split(store: Path | str, assignment: dict[str, str], how: dict) -> None:
    """Record a split (``{key: 'train' | 'test'}`` and how it was made) in the root index.

    The split outlives rewrites of its sessions: ``_update_index`` copies it into each record.
    """
    meta = _index_document(store) or {"store_version": STORE_VERSION, "sessions": {}}
    sessions = {key: {**record, "split": assignment.get(key)} for key, record in meta["sessions"].items()}
    split = {**_jsonable(how), "sessions": dict(sorted(assignment.items()))}
    _write_index(store, {**meta, "split": split, "sessions": sessions})


def _unmark(store: Path | str, key: str) -> None:
    if key in index(store):
        _update_index(store, key, None)


def mark_complete(store: Path | str, key: str, attrs: dict, summary: dict) -> None:
    """Record the session's provenance in its group, then mark it complete in the root index."""
    group = zarr.open_group(str(store), path=key, mode="r+", zarr_format=3)
    group.attrs.update(_jsonable(attrs))
    record = {
        "complete": True,
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "shape": list(group["calib"].shape),
        "n_frames": int(group["e91"].shape[0]) if "e91" in group else 0,
        "instrument": attrs.get("instrument"),
        "band": attrs.get("band"),
        "obs_id": attrs.get("obs_id"),
    }
    _update_index(store, key, _jsonable({**record, **summary}))


def consolidate(store: Path | str) -> None:
    """Rebuild the consolidated metadata (``xarray.open_datatree`` opens the store with one read)
    from the index: it lists exactly the complete sessions. Every index write keeps it so; this
    repairs a store whose consolidated copy was written otherwise."""
    meta = _index_document(store)
    if meta is not None:
        _write_index(store, meta, rebuild=True)


def open_store(store: Path | str) -> xr.DataTree:
    """The whole store as a DataTree (lazy)."""
    return xr.open_datatree(str(store), engine="zarr", consolidated=None, chunks={})


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
