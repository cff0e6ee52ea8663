"""Windows of uncompressed local Zarr v3 arrays, copied straight out of their chunk files.

The store's image variables (docs/store-layout.md, store version 2) are written with the
``bytes`` codec alone on a regular chunk grid: a chunk file is then the chunk's values in C
order, and a missing file is a chunk of the fill value (zarr writes none for those). A window is
copied out of the memory maps of the chunk files it touches, with no decoding and no copy of the
rest of the chunk. This module is the Zarr chunk edge, as ``fits_files.py`` is the FITS edge: the
only two modules that map files (tests/test_fits_files.py).
"""

from __future__ import annotations

import mmap
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BytesCodec

from ..errors import InputError


def readable(array: zarr.Array) -> bool:
    """Whether ``array`` is in the layout read here: no shards and the ``bytes`` codec alone,
    little-endian (or one byte per value)."""
    codecs = array.metadata.codecs
    if array.shards is not None or len(codecs) != 1 or not isinstance(codecs[0], BytesCodec):
        return False
    return array.dtype.itemsize == 1 or (codecs[0].endian is not None and codecs[0].endian.value == "little")


MAX_MAPS = 4096  # chunk files kept mapped per process (virtual address space only; the kernel allows 65530)


class ChunkMaps:
    """Memory maps of chunk files, two bounds: at most ``max_maps`` maps (the least recently used
    unmapped), and at most ``budget_bytes`` of them resident in this process (the least recently
    used released with ``MADV_DONTNEED``; one map always stays resident).

    The mapped pages are the page cache's, shared with every process, but a process's resident
    set counts those it has touched: the budget bounds that share. Releasing pages keeps the map
    (no ``open``/``mmap``/``munmap`` when the chunk is read again, only page faults).
    """

    def __init__(self, budget_bytes: int, max_maps: int = MAX_MAPS):
        self.budget, self.max_maps, self.mapped = budget_bytes, max_maps, 0
        self._maps: OrderedDict[str, tuple[mmap.mmap, np.ndarray]] = OrderedDict()
        self._resident: OrderedDict[str, int] = OrderedDict()  # path -> bytes, least recently used first

    def __len__(self) -> int:
        return len(self._maps)

    def get(self, path: str, dtype: np.dtype, shape: tuple[int, ...], nbytes: int) -> np.ndarray | None:
        """The chunk file at ``path`` as a read-only array of ``shape`` (``nbytes`` bytes; None when
        there is no file)."""
        entry = self._maps.get(path)
        if entry is None:
            entry = self._map(path, dtype, shape, nbytes)
            if entry is None:
                return None
        else:
            self._maps.move_to_end(path)
        if path in self._resident:
            self._resident.move_to_end(path)
        else:
            self._resident[path] = nbytes
            self.mapped += nbytes
            while self.mapped > self.budget and len(self._resident) > 1:
                old, size = self._resident.popitem(last=False)
                self._maps[old][0].madvise(mmap.MADV_DONTNEED)
                self.mapped -= size
        return entry[1]

    def _map(self, path: str, dtype: np.dtype, shape: tuple[int, ...], nbytes: int):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size != nbytes:
                raise InputError(path, f"chunk file of {size} bytes, expected {nbytes} (truncated or not this layout)")
            mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        entry = self._maps[path] = (mapped, np.frombuffer(mapped, dtype=dtype).reshape(shape))
        if len(self._maps) > self.max_maps:
            old, _ = self._maps.popitem(last=False)  # unmapped once its array is freed
            self.mapped -= self._resident.pop(old, 0)
        return entry


class ChunkFileArray:
    """One array in the layout of ``readable``, read by windows of its last two axes."""

    def __init__(self, array: zarr.Array, directory: Path, maps: ChunkMaps):
        if not readable(array):
            raise ValueError(f"{directory}: compressed or sharded, not readable from its chunk files")
        self.directory, self.maps = str(directory), maps
        self.chunks, self.dtype, self.fill = array.chunks, array.dtype.newbyteorder("<"), array.fill_value
        self.nbytes = int(np.prod(self.chunks)) * self.dtype.itemsize  # of one chunk file
        self._encode = array.metadata.encode_chunk_key
        self._paths: dict[tuple[int, ...], str] = {}

    def _path(self, coords: tuple[int, ...]) -> str:
        path = self._paths.get(coords)
        if path is None:
            path = self._paths[coords] = f"{self.directory}/{self._encode(coords)}"
        return path

    def window(self, lead: tuple[int, ...], y: int, x: int, out: np.ndarray) -> None:
        """Copy ``array[*lead, y:y+P_y, x:x+P_x]`` into ``out`` (P_y, P_x), cast to its dtype;
        ``y``, ``x`` in pixels, the window inside the array."""
        p_y, p_x = out.shape
        *lead_chunks, c_y, c_x = self.chunks
        lead_chunk = tuple(k // c for k, c in zip(lead, lead_chunks))
        within = tuple(k % c for k, c in zip(lead, lead_chunks))
        for iy in range(y // c_y, (y + p_y - 1) // c_y + 1):
            y0, y1 = max(y, iy * c_y), min(y + p_y, (iy + 1) * c_y)
            for ix in range(x // c_x, (x + p_x - 1) // c_x + 1):
                x0, x1 = max(x, ix * c_x), min(x + p_x, (ix + 1) * c_x)
                chunk = self.maps.get(self._path((*lead_chunk, iy, ix)), self.dtype, self.chunks, self.nbytes)
                target = out[y0 - y : y1 - y, x0 - x : x1 - x]
                if chunk is None:
                    target[...] = self.fill
                else:
                    target[...] = chunk[
                        (*within, slice(y0 - iy * c_y, y1 - iy * c_y), slice(x0 - ix * c_x, x1 - ix * c_x))
                    ]
