"""Region writes straight to the chunk files of a local Zarr v3 array, as zarr-python would write them.

The store's arrays (docs/store-layout.md) have a regular chunk grid, no shards, and the
``bytes`` codec (little-endian) alone or followed by ``zstd``. A chunk file is then the chunk's
values in C order, zstd-compressed or not; an edge chunk is padded with the fill value to the
full chunk shape, and a chunk holding only the fill value is not written (zarr's
``write_empty_chunks`` off, its default). Writing those files here costs one copy and one
``write`` per chunk, with the GIL released, where zarr-python's asynchronous codec pipeline
holds the GIL for much of each chunk's bookkeeping (benchmarks/README.md). Arrays in any other
layout are written by zarr-python.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import BytesCodec, ZstdCodec

Encoder = Callable[[np.ndarray], "bytes | memoryview"]


def encoder(array: zarr.Array) -> Encoder | None:
    """The function from a chunk's values (C order, little-endian) to its file's bytes, for the
    layouts written here; None for any other (shards, other codecs, big-endian)."""
    codecs = array.metadata.codecs
    if array.shards is not None or not codecs or not isinstance(codecs[0], BytesCodec):
        return None
    if array.dtype.itemsize > 1 and (codecs[0].endian is None or codecs[0].endian.value != "little"):
        return None
    if len(codecs) == 1:
        return lambda values: memoryview(values).cast("B")
    if len(codecs) == 2 and isinstance(codecs[1], ZstdCodec):
        zstd = Zstd(level=codecs[1].level, checksum=codecs[1].checksum)
        return zstd.encode
    return None


def only_fill(values: np.ndarray, fill) -> bool:
    """Whether every value equals ``fill`` as zarr-python tests it: NaN equals NaN, and a zero
    fill of a float array is compared bit for bit (so ``-0.0`` is not the fill)."""
    flat = values.reshape(-1)
    if values.dtype.kind == "f" and np.isnan(fill):
        return bool(np.isnan(flat[0]) and np.isnan(flat).all())
    if values.dtype.kind == "f" and fill == 0:
        bits = flat.view(f"u{values.dtype.itemsize}")
        return bool(bits[0] == 0 and not bits.any())
    return bool(flat[0] == fill and (flat == fill).all())


def write_region(array: zarr.Array, directory: Path, region: tuple[slice, ...], block: np.ndarray,
                 encode: Encoder) -> None:  # fmt: skip
    """Write ``block`` to ``array[region]`` through the chunk files under ``directory`` (the
    array's own). ``region`` starts on chunk boundaries and ends on them or at the array's edge:
    each chunk it touches is written whole (``encode``: ``encoder(array)``)."""
    chunks, shape = array.chunks, array.shape
    for start, stop, size, n in zip((s.start for s in region), (s.stop for s in region), chunks, shape, strict=True):
        if start % size or (stop % size and stop != n):
            raise ValueError(f"{directory}: region {region} is not aligned to the chunks {chunks}")
    fill = array.fill_value
    values = np.empty(chunks, array.dtype.newbyteorder("<"))  # one chunk's buffer, reused for every chunk
    grid = [range(s.start // c, -(-s.stop // c)) for s, c in zip(region, chunks)]
    made: set[Path] = set()
    for coords in np.ndindex(*(len(axis) for axis in grid)):
        chunk = tuple(axis[i] for axis, i in zip(grid, coords))
        inside = tuple(slice(k * c - s.start, min((k + 1) * c, s.stop) - s.start)
                       for k, c, s in zip(chunk, chunks, region))  # fmt: skip
        part = block[inside]
        if part.shape != chunks:
            values.fill(fill)
        values[tuple(slice(0, n) for n in part.shape)] = part
        path = directory / array.metadata.encode_chunk_key(chunk)
        if only_fill(values, fill):
            path.unlink(missing_ok=True)
            continue
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(encode(values))
