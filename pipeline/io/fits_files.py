"""Opening FITS files: the one module that opens them, and each thread's cache of open files.

Every read of a FITS file starts here: ``open_fits`` (astropy, for headers and astropy's
decoders), ``open_cfitsio`` (fitsio), ``MappedFile`` (the raw bytes, for the tile decoders) and
``locate_hdu`` (where an HDU's header and data start). Each turns the failures of its library
into a ``FitsError`` naming the file and the reason. ``cached`` keeps what a thread opened for
its next reads, reopening a file that changed (``file_signature``).

The readers above see a file only through these functions and ``MappedFile``'s ``read``,
``release``, ``close`` and ``len``, so another byte source (a file-like object, byte
ranges of an object store) plugs in here, with its own signature for the cache.
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
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from ..errors import InputError

T = TypeVar("T")


class FitsError(InputError):
    """A FITS file that cannot be used, with the file and the reason."""


def open_fits(path: str, memmap: bool | None = False, **options) -> fits.HDUList:
    """``path`` opened by astropy (``options`` go to ``fits.open``); ``memmap=None`` maps it
    without astropy's strict mode, which refuses to scale (BZERO/BSCALE) mapped data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)  # "file may have been truncated"
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


def locate_hdu(path: str, index: int) -> tuple[int, int]:
    """(header start, data start) of HDU ``index`` of ``path``, byte offsets found by cfitsio."""
    with open_cfitsio(path) as fits_file:
        offsets = fits_file[index].get_offsets()
    return offsets["header_start"], offsets["data_start"]


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


def file_signature(path: str) -> tuple[int, ...]:
    """What identifies the current content of ``path`` for the cache: this process (a forked
    child reopens), the inode, size, mtime and ctime (a file rewritten in place reopens)."""
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


def cached(path: str, index: int | None, opener: Callable[[str, int | None], T]) -> T:
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
