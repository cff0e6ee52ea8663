"""The Zarr edge: session writes (the contract: :mod:`pipeline.io.contract`; the completeness index: :mod:`pipeline.io.index`).

Layout: one group per session at ``/<instrument>_<band>/<obs_id>``. A session is written in
two steps: its arrays (region writes aligned to whole chunks, computed once by Dask), then its
provenance and ``complete = true`` in the root's index. Only the client writes the index, so a
crash leaves at most an incomplete session, which the next run rewrites.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import dask
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize
from zarr.codecs import ZstdCodec

from ..blocks import freeing
from .chunk_writes import encoder, write_region
from .index import IndexWriter
from .objects import ObjectPath, location, zarr_store

# Codecs (store version 2, docs/store-layout.md). Image variables (floats and the 2-D mask) are
# stored uncompressed (the ``bytes`` codec alone): noisy float pixels barely compress, and
# uncompressed chunks let the training loader memory-map the windows it reads. Integer cubes
# (``e91_mask``) compress by two orders of magnitude and are read a frame at a time: zstd level 1.
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


def write_session(dataset: xr.Dataset, store: Path | ObjectPath | str, key: str, chunk_px: int,
                  index: IndexWriter | None = None):  # fmt: skip
    """Write the session's metadata now and return the Delayed that writes its arrays and gives
    the SHA-256 of each array's files, ``{name: hex digest}`` (``array_files_sha256``).

    Any earlier (incomplete) version of the group is replaced. Dask chunks are whole multiples
    of the Zarr chunks along every axis, so each Zarr chunk is written by exactly one task: one
    region write per Dask block, which takes the block's own key (so a task elsewhere in the
    session's graph that uses the same block shares its computation rather than repeating it).
    Each array is hashed as soon as its own blocks are written. ``index`` is the run's writer of
    the store's index (default: one for this call, which creates the index of a new store).
    """
    _check_alignment(dataset, chunk_px)
    (index or IndexWriter(store)).unmark(key)
    where = location(store)
    _ensure_groups(where, key)
    dataset.to_zarr(
        zarr_store(where / key),
        mode="w",
        compute=False,
        consolidated=False,
        zarr_format=3,
        encoding=encoding(dataset, chunk_px),
    )  # the template: metadata and coordinates
    digests, token, label = {}, tokenize(dataset)[:8], key.replace("/", "-")
    with freeing():
        for name, variable in dataset.data_vars.items():
            starts = [np.cumsum((0,) + c) for c in variable.chunks]
            blocks = variable.data.to_delayed(optimize_graph=False)
            writes = []
            for index in np.ndindex(blocks.shape):
                region = tuple(slice(int(s[i]), int(s[i + 1])) for s, i in zip(starts, index))
                writes.append(
                    dask.delayed(_write_region, pure=True)(
                        blocks[index],
                        where,
                        f"{key}/{name}",
                        region,
                        dask_key_name=(f"write-{name}-{label}-{token}", *index),
                    )
                )
            digests[name] = dask.delayed(_digest_after, pure=True)(writes, where / key / name,
                                                                   dask_key_name=f"sha256-{name}-{label}-{token}")  # fmt: skip
    return dask.delayed(dict, pure=True)(digests, dask_key_name=f"written-{label}-{token}")


def _ensure_groups(where: Path | ObjectPath, key: str) -> None:
    """Create the groups above ``key`` that do not exist yet. The template is then written through
    a store rooted at the session's own group: zarr, creating a node, reads every parent's
    metadata, and the root's holds the index and consolidated metadata of the whole store."""
    parts = key.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        group = where / "/".join(parts[:depth])
        if not (group / "zarr.json").exists():
            zarr.open_group(zarr_store(group), mode="a", zarr_format=3)


def _write_region(block: np.ndarray, store: Path | ObjectPath, path: str, region: tuple[slice, ...]) -> None:
    """``store[path][region] = block``: straight to the chunk files where the layout allows it
    (:mod:`pipeline.io.chunk_writes`), else by zarr-python."""
    array = zarr.open_array(zarr_store(store), path=path, mode="r+", zarr_format=3)
    encode = encoder(array) if isinstance(store, Path) else None
    if encode is None:
        array[region] = block
    else:
        write_region(array, store / path, region, block, encode)


def _digest_after(_writes, array_dir: Path | ObjectPath) -> str:
    return array_files_sha256(array_dir)


def array_files_sha256(array_dir: Path | ObjectPath) -> str:
    """SHA-256 of an array's files (objects, in an object store): its ``zarr.json`` and every
    chunk in key order, each as its name relative to ``array_dir`` and a NUL, then its bytes."""
    digest = hashlib.sha256()
    if isinstance(array_dir, ObjectPath):
        files = [(name, array_dir / name) for name, _ in sorted(array_dir.files(), key=lambda f: f[0].split("/"))]
    else:
        files = [(p.relative_to(array_dir).as_posix(), p) for p in sorted(array_dir.rglob("*")) if p.is_file()]
    for name, path in files:
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _check_alignment(dataset: xr.Dataset, chunk_px: int) -> None:
    for name, variable in dataset.data_vars.items():
        if variable.chunks is None or variable.dims[-2:] != ("y", "x"):
            continue
        for size in variable.chunks[-2][:-1]:
            if size % chunk_px:
                raise ValueError(f"{name}: Dask row chunks {variable.chunks[-2]} are not multiples of {chunk_px}")


def open_store(store: Path | ObjectPath | str) -> xr.DataTree:
    """The whole store as a DataTree (lazy)."""
    return xr.open_datatree(zarr_store(store), engine="zarr", consolidated=None, chunks={})
