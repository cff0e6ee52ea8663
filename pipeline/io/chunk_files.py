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
from typing import NamedTuple

import numpy as np
import zarr
from numba import carray, njit, types
from numba.extending import intrinsic
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


class Mapped(NamedTuple):
    """A chunk file's memory map and the address of its first byte (held by ``view``)."""

    mapped: mmap.mmap
    view: np.ndarray
    address: int


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
        self._maps: OrderedDict[str, Mapped] = OrderedDict()
        self._resident: OrderedDict[str, int] = OrderedDict()  # path -> bytes, least recently used first

    def __len__(self) -> int:
        return len(self._maps)

    def get(self, path: str, nbytes: int) -> Mapped | None:
        """The chunk file at ``path`` (``nbytes`` bytes) mapped, None when there is no file. The map
        stays valid while the caller holds the returned value."""
        entry = self._maps.get(path)
        if entry is None:
            entry = self._map(path, nbytes)
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
                self._maps[old].mapped.madvise(mmap.MADV_DONTNEED)
                self.mapped -= size
        return entry

    def _map(self, path: str, nbytes: int) -> Mapped | None:
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
        view = np.frombuffer(mapped, dtype=np.uint8)
        entry = self._maps[path] = Mapped(mapped, view, view.ctypes.data)
        if len(self._maps) > self.max_maps:
            old, _ = self._maps.popitem(last=False)  # unmapped once no caller holds it
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

    def path(self, coords: tuple[int, ...]) -> str:
        """The chunk file of chunk ``coords`` (chunk grid coordinates)."""
        path = self._paths.get(coords)
        if path is None:
            path = self._paths[coords] = f"{self.directory}/{self._encode(coords)}"
        return path

    def window(self, lead: tuple[int, ...], y: int, x: int, out: np.ndarray) -> None:
        """Copy ``array[*lead, y:y+P_y, x:x+P_x]`` into ``out`` (P_y, P_x), cast to its dtype;
        ``y``, ``x`` in pixels, the window inside the array."""
        copy_windows([(0, self, lead, y, x)], out[None])


def copy_windows(windows, out: np.ndarray) -> np.ndarray:
    """Copy the windows ``(j, array, lead, y, x)`` (``ChunkFileArray`` s of one dtype, ``lead``
    the leading indices, ``y``, ``x`` in pixels, each window inside its array) into ``out[j]``
    (``out`` (B, P_y, P_x), cast to its dtype) in one pass over their chunk files. Per window, in
    the order given: whether it holds no NaN and no inf (always true for integers)."""
    p_y, p_x = out.shape[1:]
    dtype = windows[0][1].dtype
    if any(array.dtype != dtype for _, array, *_ in windows):
        raise ValueError("copy_windows: windows of arrays of different dtypes")
    held, segments = [], []
    for n, (j, array, lead, y, x) in enumerate(windows):
        *lead_chunks, c_y, c_x = array.chunks
        coords = tuple(k // c for k, c in zip(lead, lead_chunks))
        plane = int(np.ravel_multi_index([k % c for k, c in zip(lead, lead_chunks)], lead_chunks)) if lead else 0
        for iy in range(y // c_y, (y + p_y - 1) // c_y + 1):
            y0, y1 = max(y, iy * c_y), min(y + p_y, (iy + 1) * c_y)
            for ix in range(x // c_x, (x + p_x - 1) // c_x + 1):
                x0, x1 = max(x, ix * c_x), min(x + p_x, (ix + 1) * c_x)
                chunk = array.maps.get(array.path((*coords, iy, ix)), array.nbytes)
                held.append(chunk)
                offset = (plane * c_y + y0 - iy * c_y) * c_x + x0 - ix * c_x  # values from the chunk's start
                segments.append(
                    (0 if chunk is None else chunk.address, offset, c_x, j, n, y0 - y, x0 - x, y1 - y0, x1 - x0)
                )
    values = np.array([windows[0][1].fill, 0], dtype=dtype)  # the fill, a zero
    finite = _copy_segments(np.array(segments, dtype=np.int64), values, out, len(windows), dtype.kind == "f")
    del held  # the maps stay valid until the copies are done
    return finite


@intrinsic
def _pointer(typingctx, address, like):
    """``address`` (an integer) as a pointer to values of ``like``'s dtype."""
    signature = types.CPointer(like.dtype)(address, like)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(sig.return_type))

    return signature, codegen


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _copy_segments(table, values, out, windows, check):
    """Copy every segment of ``table`` into ``out`` (B, P_y, P_x); a row of ``table``: the chunk's
    address (0: the fill ``values[0]``), the offset of the segment in it and the chunk's row
    stride (in values), the window in ``out`` and its number, the segment's row and column in the
    window, its rows and columns. Per window number: whether no value is NaN or inf, when
    ``check`` (``v - v`` is 0 for every finite ``v``, NaN otherwise; only reassociation is
    allowed, so their sum is NaN exactly when one is)."""
    finite = np.ones(windows, np.bool_)
    for s in range(table.shape[0]):
        address, offset, stride, j, n, y0, x0, rows, cols = table[s]
        total = values[1] - values[1]
        if address == 0:
            out[j, y0 : y0 + rows, x0 : x0 + cols] = values[0]
            total += values[0] - values[0]
        else:
            source = carray(_pointer(address, values), (offset + rows * stride,))
            for r in range(rows):
                row = out[j, y0 + r, x0 : x0 + cols]
                segment = source[offset + r * stride : offset + r * stride + cols]
                if check:
                    for c in range(cols):
                        value = segment[c]
                        row[c] = value
                        total += value - value
                else:
                    for c in range(cols):
                        row[c] = segment[c]
        if check and total != total:
            finite[n] = False
    return finite
