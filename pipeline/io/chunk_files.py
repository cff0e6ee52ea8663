"""Windows of uncompressed local Zarr v3 arrays, read straight out of their chunk files.

The store's image variables (docs/store-layout.md, store version 2) are written with the
``bytes`` codec alone on a regular chunk grid: a chunk file is then the chunk's values in C
order, and a missing file is a chunk of the fill value (zarr writes none for those). A window is
read with one ``preadv`` per chunk file it touches: the rows of the window go straight into the
output and the rest of each chunk row into a small scratch buffer, with no decoding, no read of
the chunk's other rows and no memory map (so no page faults, and the page cache stays out of the
process's resident set). This module is the Zarr chunk edge, as ``fits_files.py`` is the FITS
edge: the only two modules that open files themselves (tests/test_fits_files.py).
"""

from __future__ import annotations

import ctypes
import os
import resource
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np
import zarr
from llvmlite import ir
from numba import njit, types
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


# Chunk files kept open per process: a store's chunks up to 4096, at most half the descriptors allowed.
MAX_OPEN = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2)
NO_FILE = -1  # the descriptor of a chunk that has no file: a chunk of the fill value
IOV_ROWS = os.sysconf("SC_IOV_MAX") // 2  # rows read by one preadv: two buffers a row (the row, the gap)
_PREADV = ctypes.cast(ctypes.CDLL(None).preadv, ctypes.c_void_p).value  # libc's preadv(2), called by the kernel


class ChunkFiles:
    """Open chunk files of one process: at most ``max_open`` descriptors, the least recently used
    closed once the read that took it is done (``close_evicted``)."""

    def __init__(self, max_open: int = MAX_OPEN):
        self.max_open = max_open
        self._open: OrderedDict[str, int] = OrderedDict()
        self._evicted: list[int] = []
        weakref.finalize(self, _close_all, self._open, self._evicted)  # when collected, or at exit

    def __len__(self) -> int:
        return len(self._open)

    def get(self, path: str, nbytes: int) -> int:
        """The descriptor of the chunk file at ``path`` (``nbytes`` bytes), ``NO_FILE`` when there
        is none. It stays open until the next ``close_evicted``."""
        fd = self._open.get(path)
        if fd is not None:
            self._open.move_to_end(path)
            return fd
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return NO_FILE
        size = os.fstat(fd).st_size
        if size != nbytes:
            os.close(fd)
            raise InputError(path, f"chunk file of {size} bytes, expected {nbytes} (truncated or not this layout)")
        self._open[path] = fd
        if len(self._open) > self.max_open:
            self._evicted.append(self._open.popitem(last=False)[1])
        return fd

    def close_evicted(self) -> None:
        """Close the descriptors evicted since the last call."""
        _close_all({}, self._evicted)

    def close(self) -> None:
        """Close every descriptor."""
        _close_all(self._open, self._evicted)


def _close_all(open_files: dict[str, int], evicted: list[int]) -> None:
    """Close the descriptors of ``open_files`` and ``evicted``, emptying both."""
    evicted += open_files.values()
    open_files.clear()
    while evicted:
        os.close(evicted.pop())


class ChunkFileArray:
    """One array in the layout of ``readable``, read by windows of its last two axes."""

    def __init__(self, array: zarr.Array, directory: Path, files: ChunkFiles):
        if not readable(array):
            raise ValueError(f"{directory}: compressed or sharded, not readable from its chunk files")
        self.directory, self.files = str(directory), files
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
        read_windows([(0, self, lead, y, x)], out[None])


def read_windows(windows, out: np.ndarray) -> np.ndarray:
    """Read the windows ``(j, array, lead, y, x)`` (``ChunkFileArray`` s of one dtype, ``lead``
    the leading indices, ``y``, ``x`` in pixels, each window inside its array) into ``out[j]``
    (``out`` (B, P_y, P_x), rows contiguous, cast to its dtype) with one ``preadv`` per chunk
    file and run of windows: windows of the same rows of a chunk side by side (tiles) share one.
    Per window, in the order given: whether it holds no NaN and no inf (always true for
    integers)."""
    p_y, p_x = out.shape[1:]
    first = windows[0][1]
    if any(array.dtype != first.dtype for _, array, *_ in windows):
        raise ValueError("read_windows: windows of arrays of different dtypes")
    if out.strides[2] != out.itemsize:
        raise ValueError("read_windows: the rows of out must be contiguous")
    item, paths, segments = first.dtype.itemsize, [], []
    for n, (j, array, lead, y, x) in enumerate(windows):
        *lead_chunks, c_y, c_x = array.chunks
        coords = tuple(k // c for k, c in zip(lead, lead_chunks))
        plane = int(np.ravel_multi_index([k % c for k, c in zip(lead, lead_chunks)], lead_chunks)) if lead else 0
        for iy in range(y // c_y, (y + p_y - 1) // c_y + 1):
            y0, y1 = max(y, iy * c_y), min(y + p_y, (iy + 1) * c_y)
            for ix in range(x // c_x, (x + p_x - 1) // c_x + 1):
                x0, x1 = max(x, ix * c_x), min(x + p_x, (ix + 1) * c_x)
                path = array.path((*coords, iy, ix))
                paths.append(path)
                fd = array.files.get(path, array.nbytes)
                row = (plane * c_y + y0 - iy * c_y) * c_x * item  # bytes from the chunk's start
                segments.append((fd, row, (x0 - ix * c_x) * item, c_x * item, j, n, y0 - y, x0 - x, y1 - y0, x1 - x0))
    table = np.array(segments, dtype=np.int64)
    direct = out.dtype == first.dtype
    table, order, runs = _runs(table, item, direct)
    values = np.array([first.fill, 0], dtype=first.dtype)  # the fill, a zero
    gap = np.empty(int(table[:, 3].max()), np.uint8)  # the rest of a chunk row, read and dropped
    scratch = np.empty(0 if direct else p_y * p_x, first.dtype)  # rows to be cast
    iov = np.empty(4 * IOV_ROWS, np.int64)  # struct iovec: (address, bytes) pairs
    try:
        finite, failed, got = _read_segments(table, runs, values, out, len(windows), first.dtype.kind == "f", _PREADV,
                                             gap, scratch, iov)  # fmt: skip
    finally:
        first.files.close_evicted()
    if failed >= 0:
        raise InputError(paths[order[failed]], f"preadv returned {got} (an error, or the file changed while read)")
    return finite


def _runs(table: np.ndarray, item: int, direct: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The segments of ``table`` (rows as built by ``read_windows``) sorted by file, rows and
    column, their order in ``table``, and the starts of the runs read by one ``preadv`` (then the
    end): segments of one file and the same rows, side by side without overlap, at most
    ``IOV_ROWS`` of them; alone when cast (``direct`` false) or of the fill."""
    fd, row, column, rows, cols = table[:, 0], table[:, 1], table[:, 2], table[:, 8], table[:, 9]
    order = np.lexsort((column, rows, row, fd))
    table = table[order]
    fd, row, column, rows, cols = fd[order], row[order], column[order], rows[order], cols[order]
    joins = (fd[1:] == fd[:-1]) & (row[1:] == row[:-1]) & (rows[1:] == rows[:-1])
    joins &= (column[1:] >= column[:-1] + cols[:-1] * item) & (fd[1:] != NO_FILE) & direct
    starts, size = [0], 1
    for k, joined in enumerate(joins.tolist(), start=1):
        if joined and size < IOV_ROWS:
            size += 1
        else:
            starts.append(k)
            size = 1
    return table, order, np.array(starts + [len(table)], np.int64)


@intrinsic
def _preadv(typingctx, function, fd, iov, count, offset):
    """``preadv(fd, iov, count, offset)`` through the function at address ``function``: the bytes
    read, -1 on an error (all integers; ``iov`` the address of ``count`` struct iovec)."""
    signature = types.int64(function, fd, iov, count, offset)

    def codegen(context, builder, sig, args):
        i32, i64, void = ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
        call = builder.inttoptr(args[0], ir.FunctionType(i64, [i32, void, i32, i64]).as_pointer())
        return builder.call(call, [builder.trunc(args[1], i32), builder.inttoptr(args[2], void),
                                   builder.trunc(args[3], i32), args[4]])  # fmt: skip

    return signature, codegen


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _read_segments(table, runs, values, out, windows, check, preadv, gap, scratch, iov):
    """Read every segment of ``table`` into ``out`` (B, P_y, P_x); a row of ``table``: the chunk
    file's descriptor (``NO_FILE``: the fill ``values[0]``), the byte offsets in it of the
    segment's first row and of its first column in that row, the chunk's row stride in bytes,
    the window in ``out`` and its number, the segment's row and column in the window, its rows
    and columns. The segments of a run (``runs[k]`` to ``runs[k + 1]``: one file, the same rows,
    side by side) are read together: a preadv of up to ``IOV_ROWS`` / (run length) rows puts
    each segment's row in ``out`` (or, for a run of one, in ``scratch``, then cast into ``out``,
    when ``scratch`` is not empty) and the bytes between them in ``gap``. Per window number:
    whether no value is NaN or inf, when ``check`` (``v - v`` is 0 for every finite ``v``, NaN
    otherwise; only reassociation is allowed, so their sum is NaN exactly when one is); then the
    first segment not read whole (-1: none) and what its preadv returned."""
    finite = np.ones(windows, np.bool_)
    item, direct = values.itemsize, scratch.size == 0
    base, (s_j, s_y, s_x) = out.ctypes.data, out.strides
    for k in range(runs.size - 1):
        head, end = runs[k], runs[k + 1]
        fd, row, start, stride = table[head, 0], table[head, 1], table[head, 2], table[head, 3]
        rows = table[head, 8]
        if fd != NO_FILE:
            last = end - 1
            wrap = stride - (table[last, 2] + table[last, 9] * item - start)  # to the next row's first column
            block = IOV_ROWS // (end - head)
            for r in range(0, rows, block):
                count, expected = 0, 0
                for q in range(r, min(rows, r + block)):
                    for s in range(head, end):
                        _, _, column, _, j, _, y0, x0, _, cols = table[s]
                        if direct:
                            iov[2 * count] = base + j * s_j + (y0 + q) * s_y + x0 * s_x
                        else:
                            iov[2 * count] = scratch.ctypes.data + q * cols * item
                        iov[2 * count + 1], count, expected = cols * item, count + 1, expected + cols * item
                        skip = wrap if s == last else table[s + 1, 2] - column - cols * item
                        if skip > 0 and not (s == last and q == min(rows, r + block) - 1):
                            iov[2 * count], iov[2 * count + 1] = gap.ctypes.data, skip
                            count, expected = count + 1, expected + skip
                got = _preadv(preadv, fd, iov.ctypes.data, count, row + r * stride + start)
                if got != expected:
                    return finite, head, got
        for s in range(head, end):
            _, _, _, _, j, n, y0, x0, rows, cols = table[s]
            total = values[1] - values[1]
            if fd == NO_FILE:
                out[j, y0 : y0 + rows, x0 : x0 + cols] = values[0]
                total += values[0] - values[0]
            else:
                for q in range(rows):
                    line = out[j, y0 + q, x0 : x0 + cols]
                    if direct and check:
                        for c in range(cols):
                            value = line[c]
                            total += value - value
                    elif not direct:
                        source = scratch[q * cols : (q + 1) * cols]
                        if check:
                            for c in range(cols):
                                value = source[c]
                                line[c] = value
                                total += value - value
                        else:
                            for c in range(cols):
                                line[c] = source[c]
            if check and total != total:
                finite[n] = False
    return finite, -1, 0
