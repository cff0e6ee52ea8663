"""The Zarr edge: the store contract (v2), session writes and the completeness index.

Layout: one group per session at ``/<instrument>_<band>/<obs_id>``. A session is written in
two steps: its arrays (region writes aligned to whole chunks, computed once by Dask), then its
provenance and ``complete = true`` in the root's index. Only the client writes the index, so a
crash leaves at most an incomplete session, which the next run rewrites.
"""

from __future__ import annotations

import hashlib
import warnings
from datetime import UTC, datetime
from pathlib import Path

import dask
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize
from zarr.codecs import ZstdCodec

from ..errors import InputError

STORE_VERSION = 2  # 2: uncompressed image variables (docs/store-layout.md); 1: blosc-lz4 / zstd
INDEX_KEY = "skyprep"


# Codecs (docs/store-layout.md). Image variables are stored uncompressed (the ``bytes`` codec
# alone): noisy float pixels barely compress, and uncompressed chunks let the training loader
# memory-map the windows it reads. Integer cubes (``e91_mask``) compress by two orders of magnitude
# and are read a frame at a time: zstd at level 1.
INTEGER_CUBE_CODEC = ZstdCodec(level=1)


def encoding(dataset: xr.Dataset, chunk_px: int) -> dict:
    """Zarr chunks for every variable: ``chunk_px`` squares (no larger than the frame), one frame
    deep for cubes; integer cubes compressed with ``INTEGER_CUBE_CODEC``, everything else not."""
    result = {}
    for name, variable in dataset.data_vars.items():
        if variable.dims[-2:] == ("y", "x"):
            lead = (1,) * (variable.ndim - 2)
            result[name] = {"chunks": (*lead, *(min(chunk_px, n) for n in variable.shape[-2:]))}
        else:
            result[name] = {"chunks": variable.shape}
        integer_cube = variable.ndim > 2 and not np.issubdtype(variable.dtype, np.floating)
        result[name]["compressors"] = [INTEGER_CUBE_CODEC] if integer_cube else None
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
    _check_version(store)
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


def _check_version(store: Path | str) -> None:
    """Refuse to add sessions to a store of another version (its sessions would mix layouts)."""
    if not Path(store).exists():
        return
    version = _root(store, "r").attrs.get(INDEX_KEY, {}).get("store_version", STORE_VERSION)
    if version != STORE_VERSION:
        raise InputError(store, f"store version {version}; this skyprep writes version {STORE_VERSION} "
                                "(docs/store-layout.md): write to a new store (the old one is still read)")  # fmt: skip


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


def _unmark(store: Path | str, key: str) -> None:
    if Path(store).exists() and key in index(store):
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
    """Consolidate metadata so ``xarray.open_datatree`` opens the store with one read.

    Zarr warns that consolidated metadata is not yet part of the v3 specification; the store
    stays valid without it (the index, not the consolidated copy, decides completeness).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(str(store))


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
