"""Opening FITS files: the one module that opens them, and each thread's cache of open files.

Every read of a FITS file starts here: ``open_fits`` (astropy, for headers and astropy's
decoders), ``open_cfitsio`` (fitsio), ``MappedFile`` (the raw bytes, for the tile decoders) and
``locate_hdu`` (where an HDU's header and data start). Each turns the failures of its library
into a ``FitsError`` naming the file and the reason. ``cached`` keeps what a thread opened for
its next reads, reopening a file that changed (``file_signature``).

The readers above see a file only through these functions and ``MappedFile``'s ``read``,
``release``, ``close`` and ``len`` (and ``RangedFile``'s ``prefetch``). A file in an object store (an
:class:`~pipeline.io.objects.ObjectPath`) plugs in here: ``RangedFile`` serves the same reads from
ranged GETs (the tiles a read needs fetched together, never the whole object), astropy reads it
through a buffered ranged reader, ``locate_hdu`` walks its headers, and cfitsio is not used for it
(it opens local files only). Local paths are strings, read exactly as before.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TypeVar

import fitsio
import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from ..errors import InputError
from .objects import OBJECT_SCHEMES, ObjectPath, location

T = TypeVar("T")
Source = str | ObjectPath  # a local file's path, or an object in an object store

BLOCK = 2880  # FITS header and data records are multiples of this, bytes
READAHEAD_BYTES = 1 << 16  # the least a RangedFile fetches for an unprefetched read (headers, tile tables)


class FitsError(InputError):
    """A FITS file that cannot be used, with the file and the reason."""


def source(path: os.PathLike | str | ObjectPath) -> Source:
    """``path`` as the readers keep it: an :class:`ObjectPath` for an object, else the local path as a string."""
    if isinstance(path, ObjectPath):
        return path
    text = str(path)
    if text.partition("://")[0].lower() in OBJECT_SCHEMES:
        return location(text)
    return text


def is_local(path: Source) -> bool:
    """Whether ``path`` is a local file (which cfitsio and memory maps can open)."""
    return not isinstance(path, ObjectPath)


def open_fits(path: Source, memmap: bool | None = False, **options) -> fits.HDUList:
    """``path`` opened by astropy (``options`` go to ``fits.open``); ``memmap=None`` maps it
    without astropy's strict mode, which refuses to scale (BZERO/BSCALE) mapped data. An object
    is read through a buffered ranged reader (``ObjectPath.open``), never mapped."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)  # "file may have been truncated"
            if isinstance(path, ObjectPath):
                return fits.open(path.open(), memmap=False, lazy_load_hdus=False, **options)
            return fits.open(path, memmap=memmap, lazy_load_hdus=False, **options)
    except FileNotFoundError:
        raise FitsError(path, "file not found") from None
    except AstropyUserWarning as warning:
        raise FitsError(path, f"truncated or damaged ({warning})") from None
    except OSError as err:
        raise FitsError(path, f"not a readable FITS file ({err})") from None
    except Exception as err:  # astropy raises a zoo of types on corrupt headers
        raise FitsError(path, f"unreadable FITS structure ({type(err).__name__}: {err})") from None


@contextlib.contextmanager
def open_cfitsio(path: str) -> Iterator[fitsio.FITS]:
    """``path`` opened by cfitsio (fitsio), closed on exit."""
    with fitsio.FITS(path) as fits_file:
        yield fits_file


def locate_hdu(path: Source, index: int, file: RangedFile | None = None) -> tuple[int, int]:
    """(header start, data start) of HDU ``index`` of ``path``, byte offsets: found by cfitsio in
    a local file, by walking the headers (``file``'s ranged reads) of an object."""
    if isinstance(path, ObjectPath):
        return _walk_headers(file or RangedFile(path), index)
    with open_cfitsio(path) as fits_file:
        offsets = fits_file[index].get_offsets()
    return offsets["header_start"], offsets["data_start"]


def _walk_headers(file: RangedFile, index: int) -> tuple[int, int]:
    """(header start, data start) of HDU ``index``: each header read block by block up to its END
    card, its data skipped by the size the header gives (FITS standard, section 4.4.1)."""
    start = 0
    for hdu in range(index + 1):
        end = start
        while True:
            block = file.read(end, BLOCK)
            if len(block) < BLOCK:
                raise FitsError(str(file.path), f"truncated or damaged (HDU {hdu}'s header ends early)")
            end += BLOCK
            if any(block[i : i + 8] == b"END     " for i in range(0, BLOCK, 80)):
                break
        if hdu == index:
            return start, end
        header = fits.Header.fromstring(file.read(start, end - start).decode("ascii", "replace"))
        axes = [header.get(f"NAXIS{i}", 0) for i in range(1, header.get("NAXIS", 0) + 1)]
        cells = int(np.prod(axes)) if axes else 0
        size = abs(header.get("BITPIX", 8)) // 8 * header.get("GCOUNT", 1) * (header.get("PCOUNT", 0) + cells)
        start = end + -(-size // BLOCK) * BLOCK
    raise AssertionError("unreachable")


class MappedFile:
    """The bytes of one file, memory-mapped read-only: what the tile decoders read tiles from."""

    def __init__(self, path: str):
        with open(path, "rb") as handle:
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)

    def __len__(self) -> int:
        return len(self._map)

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes from byte ``offset`` (fewer past the end)."""
        return self._map[offset : offset + size]

    def release(self, start: int, stop: int) -> None:
        """Drop the pages of bytes ``[start, stop)`` from this process's resident set (they stay
        in the page cache): files kept mapped and read strip by strip would otherwise end up
        counted whole in the worker's memory."""
        start = min(start, len(self._map)) // mmap.PAGESIZE * mmap.PAGESIZE
        stop = min(stop, len(self._map))  # damaged tables stay in bounds
        self._map.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def close(self) -> None:
        self._map.close()


class RangedFile:
    """The bytes of one object, fetched by ranged GETs: the tile decoders' reads in an object store.

    ``prefetch`` fetches the tiles a read is about to decode, the ranges together (one GET for
    contiguous tiles, as a strip's are); ``read`` serves them, or fetches at least
    ``READAHEAD_BYTES`` from the offset (headers, the tile table); ``release`` drops what a read
    fetched, so a file kept open holds at most one strip's tiles.
    """

    def __init__(self, path: ObjectPath):
        self.path = path
        try:
            self._size = path.size()
        except FileNotFoundError:
            raise FitsError(str(path), "file not found") from None
        self._held: list[tuple[int, bytes]] = []  # (offset, bytes) fetched by prefetch
        self._window = (0, b"")  # the last unprefetched read and its read-ahead

    def __len__(self) -> int:
        return self._size

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes from byte ``offset`` (fewer past the end)."""
        stop = min(offset + size, self._size)
        for start, data in (*self._held, self._window):
            if start <= offset and stop <= start + len(data):
                return data[offset - start : stop - start]
        self._window = (offset, self.path.read_range(offset, min(self._size, offset + max(size, READAHEAD_BYTES))))
        return self._window[1][: stop - offset]

    def prefetch(self, extents: np.ndarray) -> None:
        """Fetch the byte ranges ``extents`` ((n, 2): bytes and offset), adjacent ones as one range."""
        runs: list[list[int]] = []
        for offset, size in sorted((int(o), int(n)) for n, o in extents if n > 0):
            end = min(offset + size, self._size)
            if runs and offset <= runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], end)
            elif offset < end:
                runs.append([offset, end])
        if runs:
            data = self.path.read_ranges([a for a, _ in runs], [b for _, b in runs])
            self._held = [(a, d) for (a, _), d in zip(runs, data)]

    def release(self, start: int, stop: int) -> None:
        """Forget the prefetched bytes (the next read fetches again)."""
        self._held = []

    def close(self) -> None:
        self._held, self._window = [], (0, b"")


def open_bytes(path: Source) -> MappedFile | RangedFile:
    """The raw bytes of ``path`` for the tile decoders: memory-mapped locally, ranged GETs in an object store."""
    return RangedFile(path) if isinstance(path, ObjectPath) else MappedFile(path)


def file_signature(path: Source) -> tuple:
    """What identifies the current content of ``path`` for the cache: this process (a forked
    child reopens), the inode, size, mtime and ctime (a file rewritten in place reopens). An
    object is not looked at again while a process keeps it open (that would cost a request per
    read): replace archive objects under new names, or restart the workers."""
    if isinstance(path, ObjectPath):
        return os.getpid(), str(path)
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise FitsError(path, "file not found") from None
    return os.getpid(), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


# Images kept open by each thread (a descriptor and a parsed header each): more than a strip task
# reads (SCI and BPM, and ERR when weighting, of each e91 frame), or the cache would reopen every
# image for every strip.
_OPEN_FILES_PER_THREAD = 128
_open_files = threading.local()


def cached(path: Source, index: int | None, opener: Callable[[Source, int | None], T]) -> T:
    """``opener(path, index)`` for ``path``, from this thread's small LRU cache of open files (an
    open costs more than decoding a small cutout). Reopened when ``file_signature`` changes; one
    cache per thread, since astropy's file objects are not thread-safe. The opened object must
    have ``close()``."""
    signature = file_signature(path)
    cache = getattr(_open_files, "lru", None)
    if cache is None:
        cache = _open_files.lru = OrderedDict()
    key = (path, index, opener)
    entry = cache.pop(key, None)
    if entry is not None and entry[0] != signature:
        entry[1].close()
        entry = None
    if entry is None:
        entry = (signature, opener(path, index))
        while len(cache) >= _OPEN_FILES_PER_THREAD:
            cache.popitem(last=False)[1][1].close()
    cache[key] = entry
    return entry[1]


def close_open_files() -> None:
    """Close the files this thread keeps open for reading (they reopen on the next read)."""
    cache = getattr(_open_files, "lru", None)
    while cache:
        cache.popitem()[1][1].close()
