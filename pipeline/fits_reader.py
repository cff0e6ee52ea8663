"""The FITS edge: image extensions, header inheritance and tile-aligned lazy reads.

Structure and headers come from astropy. Pixels come from the decoder that is fastest for the
HDU's layout, chosen once per HDU (``ImageRef.decoder``; figures in benchmarks/README.md,
"FITS reading"), each reading only the compression tiles a request touches:

* ``"rice"``: lossless RICE_1 integer tiles of any shape (raw CCD frames): each tile's bytes
  from the memory-mapped heap through astropy's C Rice decoder, the one ``fits.getdata`` calls,
  without astropy's per-call header checks (a whole frame in strips: 0.8-0.95x one astropy read);
* ``"astropy"``: other tiles of more than one row, which cfitsio decodes 1.5-1.9x slower than
  astropy (quantized GZIP_2 floats excepted: cfitsio ~10% faster), and integer images scaled to
  floats by BSCALE/BZERO (astropy scales in float32, cfitsio in float64: one decoder keeps every
  reader of the file on the same values);
* ``"cfitsio"`` (fitsio): other one-row tiles and plain images.

All three decode bit-identically to ``fits.getdata``. Every error names the file and the
reason. Arrays are scaled by ``BZERO``/``BSCALE``, native byte order.
"""

from __future__ import annotations

import mmap
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import dask.array as da
import fitsio
import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

try:  # astropy >= 7; private module, but the very decoder astropy's own reads call
    from astropy.io.fits.hdu.compressed._compression import decompress_rice_1_c
except ImportError:
    try:  # astropy 6
        from astropy.io.fits._tiled_compression._compression import decompress_rice_1_c
    except ImportError:  # moved again: Rice tiles go to the other decoders
        decompress_rice_1_c = None

# Keywords that describe an HDU's own structure and never pass from primary to extension.
STRUCTURAL_KEYWORDS = {
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "PCOUNT",
    "GCOUNT", "BZERO", "BSCALE", "BLANK", "EXTNAME", "EXTVER", "INHERIT", "CHECKSUM", "DATASUM",
    "COMMENT", "HISTORY", "",
}  # fmt: skip


class FitsError(Exception):
    """A FITS file that cannot be used, with the file and the reason."""

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class ImageRef:
    """One image extension of one file: enough to read it anywhere (it pickles to workers)."""

    path: str
    index: int  # HDU index in the file
    name: str  # EXTNAME, or "" when absent
    shape: tuple[int, int]  # (ny, nx) pixels
    dtype: np.dtype  # dtype astropy decodes to
    tile_rows: int  # rows per compression tile (the image height when uncompressed)
    header: fits.Header  # effective header (primary inherited when INHERIT = T)
    blank: float | None = None  # decoded value of BLANK pixels (become NaN, like astropy)
    rescaled: bool = False  # BSCALE/BZERO scaling to floats: astropy's float32 arithmetic is used
    version: int = 1  # EXTVER (1 when absent)
    decoder: str = "cfitsio"  # "rice", "astropy" or "cfitsio": the fastest for this layout (_decoder)

    @property
    def label(self) -> str:
        """``file[EXTNAME]``, ``file[EXTNAME,EXTVER]`` or ``file[index]``: the IRAF-style address."""
        if not self.name:
            return f"{self.path}[{self.index}]"
        return f"{self.path}[{self.name}{f',{self.version}' if self.version != 1 else ''}]"


def effective_header(primary: fits.Header, extension: fits.Header) -> fits.Header:
    """Extension header with the primary's keywords inherited when ``INHERIT = T`` (extension wins)."""
    if not extension.get("INHERIT", False):
        return extension.copy()
    merged = fits.Header()
    for card in primary.cards:
        if card.keyword not in STRUCTURAL_KEYWORDS and card.keyword not in extension:
            merged.append(card)
    for card in extension.cards:
        merged.append(card)
    return merged


def _open(path: str, memmap: bool | None = False, **options) -> fits.HDUList:
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


def _tile_shape(hdu) -> tuple[int, int]:
    """(rows, columns) of one compression tile; the whole image when uncompressed."""
    if isinstance(hdu, fits.CompImageHDU):
        header = hdu._bintable.header
        return int(header.get("ZTILE2", 1)), int(header.get("ZTILE1", hdu.shape[1]))
    return int(hdu.shape[0]), int(hdu.shape[1])


def _decoder(hdu, rescaled: bool) -> str:
    """The decoder for ``hdu``'s layout (module docstring)."""
    if decompress_rice_1_c is not None and isinstance(hdu, fits.CompImageHDU) and _plain_rice(hdu._bintable.header, hdu.header):
        return "rice"
    if rescaled or (isinstance(hdu, fits.CompImageHDU) and _tile_shape(hdu)[0] > 1):
        return "astropy"
    return "cfitsio"


def _plain_rice(table: fits.Header, image_header: fits.Header) -> bool:
    """Lossless RICE_1 16/32-bit integers, the heap descriptor the table's only column, no blank
    value, at most the unsigned offset as scaling: every tile is Rice bytes, decoded as is."""
    bitpix = table.get("ZBITPIX")
    return (
        table.get("ZCMPTYPE") in ("RICE_1", "RICE_ONE")
        and table.get("ZNAXIS") == 2
        and bitpix in (16, 32)
        and table.get("TFIELDS") == 1
        and table.get("TTYPE1") == "COMPRESSED_DATA"
        and str(table.get("TFORM1", "")).upper().lstrip("1")[:2] in ("PB", "QB")  # heap descriptor of bytes
        and "ZBLANK" not in table
        and "BLANK" not in image_header
        and image_header.get("BSCALE", 1) == 1
        and image_header.get("BZERO", 0) in (0, 2 ** (bitpix - 1))
    )


def list_images(path: os.PathLike | str) -> list[ImageRef]:
    """All 2-D image extensions of ``path`` (tables and empty HDUs skipped), in file order."""
    path = str(path)
    with _open(path) as hdul:
        primary = hdul[0].header
        refs = []
        for index, hdu in enumerate(hdul):
            if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
                continue
            if hdu.header.get("NAXIS", 0) != 2 or 0 in hdu.shape:
                continue
            header = effective_header(primary, hdu.header) if index else hdu.header.copy()
            rescaled = _decoded_dtype(hdu).kind == "f" and hdu.header["BITPIX"] > 0
            refs.append(
                ImageRef(
                    path=path,
                    index=index,
                    name=str(hdu.header.get("EXTNAME", "")).strip(),
                    shape=(int(hdu.shape[0]), int(hdu.shape[1])),
                    dtype=_decoded_dtype(hdu),
                    tile_rows=_tile_shape(hdu)[0],
                    header=header,
                    blank=_blank(hdu),
                    rescaled=rescaled,
                    version=int(hdu.header.get("EXTVER", 1)),
                    decoder=_decoder(hdu, rescaled),
                )
            )
    if not refs:
        raise FitsError(path, "no 2-D image extension")
    return refs


def _blank(hdu) -> float | None:
    """The decoded value that marks undefined pixels of an integer image, if any."""
    if isinstance(hdu, fits.CompImageHDU) or hdu.header["BITPIX"] < 0 or "BLANK" not in hdu.header:
        return None
    return hdu.header["BLANK"] * hdu.header.get("BSCALE", 1) + hdu.header.get("BZERO", 0)


def primary_header(path: os.PathLike | str) -> fits.Header:
    """The primary header of ``path`` (global keywords of a multi-extension file)."""
    with _open(str(path)) as hdul:
        return hdul[0].header.copy()


def _decoded_dtype(hdu) -> np.dtype:
    bitpix = hdu.header["BITPIX"]
    bzero, bscale = hdu.header.get("BZERO", 0), hdu.header.get("BSCALE", 1)
    if _blank(hdu) is not None:
        return np.dtype(np.float64 if bitpix > 16 else np.float32)
    if bscale == 1 and bitpix == 16 and bzero == 32768:
        return np.dtype(np.uint16)
    if bscale == 1 and bitpix == 32 and bzero == 2**31:
        return np.dtype(np.uint32)
    if bscale == 1 and bitpix == 8 and bzero == -128:
        return np.dtype(np.int8)
    if bscale != 1 or (bzero != 0 and bitpix > 0):
        return np.dtype(np.float32 if abs(bitpix) <= 32 else np.float64)
    return np.dtype({8: np.uint8, 16: np.int16, 32: np.int32, 64: np.int64, -32: np.float32,
                     -64: np.float64}[bitpix])  # fmt: skip


def split_address(address: os.PathLike | str) -> tuple[str, str | None]:
    """``"file.fits.fz[SCI,2]"`` -> ``("file.fits.fz", "SCI,2")``; no brackets -> ``(address, None)``."""
    text = str(address)
    if text.endswith("]") and "[" in text and not os.path.exists(text):
        cut = text.rindex("[")
        return text[:cut], text[cut + 1 : -1].strip()
    return text, None


def image(path: os.PathLike | str, name: str | None = None) -> ImageRef:
    """One image extension, addressed IRAF style, in ``path`` (``file.fits.fz[im3]``) or ``name``.

    ``name`` is an EXTNAME (case-insensitive; the first of that name), ``EXTNAME,EXTVER``
    (``SCI,2``) or an HDU number (``3``, the primary being 0); ``None`` is the first image.
    """
    path, selector = split_address(path)
    name = selector if name is None else name
    refs = list_images(path)
    if name is None or name == "":
        return refs[0]
    for ref in refs:
        if _matches(ref, name):
            return ref
    found = ", ".join(r.label[len(path):].strip("[]") for r in refs)
    raise FitsError(path, f"no image extension {name!r} (found: {found})")


def _matches(ref: ImageRef, selector: str) -> bool:
    extname, _, extver = (part.strip() for part in selector.partition(","))
    if extname.isdigit() and not extver:
        return ref.index == int(extname)
    if ref.name.upper() != extname.upper():
        return False
    return not extver or (extver.isdigit() and ref.version == int(extver))


_OPEN_FILES_PER_THREAD = 32  # memory-mapped files kept open by each thread (a descriptor each)
_open_files = threading.local()


def _open_cached(path: str, index: int | None, opener):
    """``opener(path, index)`` for ``path``, from this thread's small LRU cache of open files
    (an open costs 0.4-2 ms, more than decoding a small cutout). Reopened when the
    file changes (inode, size, mtime or ctime) or in a forked child; one cache per thread, since
    astropy's file objects are not thread-safe. The opened object must have ``close()``."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise FitsError(path, "file not found") from None
    signature = (os.getpid(), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
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


def _open_mapped(path: str, index: None) -> fits.HDUList:
    """All of ``path``, memory-mapped (``index`` unused: one handle serves every HDU)."""
    return _open(path, memmap=None)


@dataclass(frozen=True)
class _RiceTiles:
    """Where the Rice-compressed tiles of one image lie in its memory-mapped file."""

    file: mmap.mmap
    extents: np.ndarray  # (tiles, 2) int64: bytes and file offset of each tile, row-major
    tile_shape: tuple[int, int]  # (rows, columns) of a full tile
    blocksize: int  # Rice block, pixels
    bytepix: int  # bytes per pixel the tiles were coded with
    dtype: np.dtype  # signed integer type of ZBITPIX

    def close(self) -> None:
        self.file.close()


def _open_rice(path: str, index: int) -> _RiceTiles:
    """HDU ``index`` of ``path`` seen as its table of tiles (``_plain_rice`` layouts only): the
    HDU located by cfitsio, its header parsed by astropy (together half the cost of ``fits.open``)."""
    with fitsio.FITS(path) as fits_file:
        offsets = fits_file[index].get_offsets()
    with open(path, "rb") as handle:
        file = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    start = offsets["data_start"]
    table = fits.Header.fromstring(file[offsets["header_start"] : start])
    width = 8 if str(table["TFORM1"]).upper().lstrip("1").startswith("Q") else 4
    descriptors = np.frombuffer(file, f">i{width}", 2 * table["NAXIS2"], start).reshape(-1, 2)
    heap = start + table.get("THEAP", table["NAXIS1"] * table["NAXIS2"])
    settings = {table.get(f"ZNAME{i}"): table.get(f"ZVAL{i}") for i in (1, 2)}
    return _RiceTiles(
        file=file,
        extents=descriptors.astype(np.int64) + np.array([0, heap]),
        tile_shape=(table.get("ZTILE2", 1), table.get("ZTILE1", table["ZNAXIS1"])),
        blocksize=settings.get("BLOCKSIZE", 32),
        bytepix=settings.get("BYTEPIX", 4),
        dtype=np.dtype(f"i{table['ZBITPIX'] // 8}"),
    )


def _decode_rice(tiles: _RiceTiles, shape: tuple[int, int], rows: range, cols: range) -> np.ndarray:
    """Pixels ``[rows, cols]`` (unit steps inside ``shape``), as stored: signed, unscaled."""
    (ny, nx), (th, tw) = shape, tiles.tile_shape
    out = np.empty((len(rows), len(cols)), tiles.dtype)
    if not out.size:
        return out
    tiles_per_row = -(-nx // tw)
    for ty in range(rows.start // th, -(-rows.stop // th)):
        r0, r1 = ty * th, min(ty * th + th, ny)
        ya, yb = max(r0, rows.start), min(r1, rows.stop)
        for tx in range(cols.start // tw, -(-cols.stop // tw)):
            c0, c1 = tx * tw, min(tx * tw + tw, nx)
            xa, xb = max(c0, cols.start), min(c1, cols.stop)
            size, offset = tiles.extents[ty * tiles_per_row + tx]
            if size == 0 or offset + size > len(tiles.file):
                raise ValueError(f"tile {ty * tiles_per_row + tx} is empty or past the end of the file")
            coded = decompress_rice_1_c(tiles.file[offset : offset + size], tiles.blocksize, tiles.bytepix,
                                        (r1 - r0) * (c1 - c0))  # fmt: skip
            tile = np.frombuffer(coded, f"i{tiles.bytepix}", (r1 - r0) * (c1 - c0)).reshape(r1 - r0, c1 - c0)
            out[ya - rows.start : yb - rows.start, xa - cols.start : xb - cols.start] = (
                tile[ya - r0 : yb - r0, xa - c0 : xb - c0])  # fmt: skip
    return out


def _read_rice(ref: ImageRef, rows: range, cols: range) -> np.ndarray:
    """Pixels ``[rows, cols]`` of a ``"rice"`` image, unsigned types offset like astropy's."""
    pixels = _decode_rice(_open_cached(ref.path, ref.index, _open_rice), ref.shape, rows, cols)
    if ref.dtype.kind == "u":  # BZERO = 2**(bits-1): adding it flips the sign bit
        unsigned = pixels.view(ref.dtype)
        unsigned ^= np.array(1 << (8 * ref.dtype.itemsize - 1), ref.dtype)
        return unsigned
    return pixels


def read_rows(ref: ImageRef, y0: int, y1: int) -> np.ndarray:
    """Rows ``[y0, y1)`` of the image, decoding only the compression tiles they touch."""
    return read_cutout(ref, y0, y1, 0, ref.shape[1])


def read_cutout(ref: ImageRef, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Pixels ``[y0:y1, x0:x1]``, decoding only the compression tiles they touch (with 2-D tiles
    a small cutout is far cheaper than its full-width rows)."""
    where = f"rows {y0}:{y1}" if (x0, x1) == (0, ref.shape[1]) else f"pixels [{y0}:{y1}, {x0}:{x1}]"
    rows, cols = range(ref.shape[0])[y0:y1], range(ref.shape[1])[x0:x1]
    try:
        if ref.decoder == "rice":
            pixels = _read_rice(ref, rows, cols)
        elif ref.decoder == "astropy":
            pixels = _open_cached(ref.path, None, _open_mapped)[ref.index].section[y0:y1, x0:x1]
        else:
            with fitsio.FITS(ref.path) as fits_file:
                pixels = fits_file[ref.index][y0:y1, x0:x1]
    except FitsError:
        raise
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FitsError(ref.label, f"cannot decode {where} ({reason})") from None
    pixels = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("=")).reshape(len(rows), len(cols))
    if ref.blank is not None:
        pixels = np.where(pixels == ref.blank, np.nan, pixels).astype(ref.dtype)
    return pixels


def read_image(ref: ImageRef) -> np.ndarray:
    """The whole image."""
    return read_rows(ref, 0, ref.shape[0])


def strip_bounds(n_rows: int, strip_rows: int, tile_rows: int = 1) -> list[tuple[int, int]]:
    """Row strips ``[(y0, y1), ...]`` covering ``n_rows``, each a whole number of tiles."""
    step = max(tile_rows, (strip_rows // tile_rows) * tile_rows)
    return [(y0, min(y0 + step, n_rows)) for y0 in range(0, n_rows, step)]


def lazy_image(ref: ImageRef, strip_rows: int, name: str) -> da.Array:
    """The image as a Dask array of full-width row strips, one task per strip named ``name``."""
    bounds = strip_bounds(ref.shape[0], strip_rows, ref.tile_rows)
    chunks = (tuple(y1 - y0 for y0, y1 in bounds), (ref.shape[1],))
    return da.map_blocks(
        _read_block,
        ref,
        chunks=chunks,
        dtype=ref.dtype,
        name=name,
        meta=np.empty((0, 0), ref.dtype),
    )


def _read_block(ref: ImageRef, block_info=None) -> np.ndarray:
    (y0, y1), _ = block_info[None]["array-location"]
    return read_rows(ref, y0, y1)
