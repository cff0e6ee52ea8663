"""The FITS edge: image extensions, header inheritance and tile-aligned lazy reads.

Structure and headers come from astropy. Pixels come from the decoder that is fastest for the
HDU's layout, chosen once per HDU (``ImageRef.decoder``; figures in benchmarks/README.md,
"FITS reading"), each reading only the compression tiles a request touches:

* ``"rice"``: RICE_1 tiles of any shape, lossless 16/32-bit integers (raw CCD frames) or floats
  quantized by fpack (reduced frames' SCI and ERR): each tile's bytes from the memory-mapped
  heap through astropy's C Rice decoder and, for floats, its C unquantizer (the dither sequence
  of ZDITHER0 and the tile's index, ZSCALE/ZZERO, ZBLANK codes -> NaN, tiles kept losslessly by
  GZIP_1), the functions ``fits.getdata`` calls, without astropy's per-tile Python overhead (a
  whole integer frame in strips: 0.8-0.95x one astropy read; a quantized float frame with
  one-row tiles: ~0.6x one astropy or cfitsio read);
* ``"plio"``: PLIO_1 integer tiles (masks) the same way through astropy's C PLIO decoder
  (a one-row-tiled 2048 x 2048 mask: ~0.65x cfitsio's time, ~0.35x astropy's);
* ``"astropy"``: other tiles of more than one row, which cfitsio decodes 1.5-1.9x slower than
  astropy (quantized GZIP_2 floats excepted: cfitsio ~10% faster), and integer images scaled to
  floats by BSCALE/BZERO (astropy scales in float32, cfitsio in float64: one decoder keeps every
  reader of the file on the same values);
* ``"hcompress"``: HCOMPRESS_1 tiles of more than one row through astropy as above, one thread
  of the process at a time (astropy's C H-decoder keeps its state in static variables: threads
  decoding at once corrupt each other's tiles);
* ``"cfitsio"`` (fitsio): other one-row tiles and plain images.

All of them decode bit-identically to ``fits.getdata``. Every error names the file and the
reason. Arrays are scaled by ``BZERO``/``BSCALE``, native byte order.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
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

from ..errors import InputError

# astropy's private C codecs, the very functions its own reads call: astropy >= 7, astropy 6.
_CODEC_MODULES = ("astropy.io.fits.hdu.compressed._compression", "astropy.io.fits._tiled_compression._compression")


def _astropy_codec(name: str):
    """astropy's C function ``name``, or None once it moves (its layouts go to the other decoders)."""
    for module in _CODEC_MODULES:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return None


decompress_rice_1_c = _astropy_codec("decompress_rice_1_c")
decompress_plio_1_c = _astropy_codec("decompress_plio_1_c")
unquantize_float_c = _astropy_codec("unquantize_float_c")
unquantize_double_c = _astropy_codec("unquantize_double_c")
if unquantize_float_c is not None:  # fill the C dither table now: its fill on first use, outside the GIL, races
    unquantize_float_c(bytes(4), 1, 1, 1.0, 0.0, 1, 0, 0, 0.0, 4)

# ZQUANTIZ -> astropy's dither method code (its _quantization.DITHER_METHODS; no keyword: NO_DITHER).
DITHER_METHODS = {"NO_DITHER": -1, "SUBTRACTIVE_DITHER_1": 1, "SUBTRACTIVE_DITHER_2": 2}

# Keywords that describe an HDU's own structure and never pass from primary to extension.
STRUCTURAL_KEYWORDS = {
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "PCOUNT",
    "GCOUNT", "BZERO", "BSCALE", "BLANK", "EXTNAME", "EXTVER", "INHERIT", "CHECKSUM", "DATASUM",
    "COMMENT", "HISTORY", "",
}  # fmt: skip


class FitsError(InputError):
    """A FITS file that cannot be used, with the file and the reason."""


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
    decoder: str = "cfitsio"  # "rice", "plio", "astropy", "hcompress" or "cfitsio" (_decoder)

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
    if isinstance(hdu, fits.CompImageHDU) and (codec := _tile_codec(hdu._bintable.header, hdu.header)):
        return codec
    if rescaled or (isinstance(hdu, fits.CompImageHDU) and _tile_shape(hdu)[0] > 1):
        hcompress = isinstance(hdu, fits.CompImageHDU) and hdu._bintable.header.get("ZCMPTYPE") == "HCOMPRESS_1"
        return "hcompress" if hcompress else "astropy"
    return "cfitsio"


def _columns(table: fits.Header) -> dict[str, str]:
    """The table's column names -> their TFORM type: ``"PB"`` for ``1PB(2404)``, ``"D"`` for ``1D``."""
    forms = {}
    for i in range(1, table.get("TFIELDS", 0) + 1):
        form = str(table.get(f"TFORM{i}", "")).strip().upper().removeprefix("1")
        forms[str(table.get(f"TTYPE{i}", "")).strip()] = form[:2] if form[:1] in ("P", "Q") else form
    return forms


def _tile_codec(table: fits.Header, image_header: fits.Header) -> str | None:
    """``"rice"`` or ``"plio"`` when astropy's C functions decode every tile of this layout as
    ``fits.getdata`` does, else None. Both: 2-D, no BLANK, no BSCALE, the heap descriptor of the
    codes the only column but those named below. RICE_1: 16/32-bit integers with no blank value,
    at most the unsigned offset as BZERO; or floats quantized with a dither method of astropy's,
    ZSCALE and ZZERO columns, optionally a ZBLANK column or keyword and a GZIP_COMPRESSED_DATA
    column (tiles quantization could not code). PLIO_1: 8/16/32-bit integers, no BZERO."""
    columns, bitpix, bzero = _columns(table), table.get("ZBITPIX"), image_header.get("BZERO", 0)
    if table.get("ZNAXIS") != 2 or "BLANK" in image_header or image_header.get("BSCALE", 1) != 1:
        return None
    if table.get("ZCMPTYPE") == "PLIO_1":
        plain = columns in ({"COMPRESSED_DATA": "PI"}, {"COMPRESSED_DATA": "QI"}) and "ZBLANK" not in table
        return "plio" if decompress_plio_1_c is not None and plain and bitpix in (8, 16, 32) and bzero == 0 else None
    if decompress_rice_1_c is None or table.get("ZCMPTYPE") not in ("RICE_1", "RICE_ONE"):
        return None
    if columns.pop("COMPRESSED_DATA", None) not in ("PB", "QB"):
        return None
    if bitpix in (16, 32):
        return "rice" if not columns and "ZBLANK" not in table and bzero in (0, 2 ** (bitpix - 1)) else None
    quantized = (
        bitpix in (-32, -64)
        and unquantize_float_c is not None
        and unquantize_double_c is not None
        and bzero == 0
        and table.get("ZQUANTIZ", "NO_DITHER") in DITHER_METHODS
        and columns.pop("ZSCALE", None) == "D"
        and columns.pop("ZZERO", None) == "D"
        and columns.pop("ZBLANK", "J") == "J"
        and columns.pop("GZIP_COMPRESSED_DATA", "PB") in ("PB", "QB")
        and not columns
    )
    return "rice" if quantized else None


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
    found = ", ".join(r.label[len(path) :].strip("[]") for r in refs)
    raise FitsError(path, f"no image extension {name!r} (found: {found})")


def _matches(ref: ImageRef, selector: str) -> bool:
    extname, _, extver = (part.strip() for part in selector.partition(","))
    if extname.isdigit() and not extver:
        return ref.index == int(extname)
    if ref.name.upper() != extname.upper():
        return False
    return not extver or (extver.isdigit() and ref.version == int(extver))


# Images kept open by each thread (a descriptor and ~70 kB each): more than a strip task reads
# (SCI and BPM, and ERR when weighting, of each e91 frame: 40 frames fit), or the cache would
# reopen every image for every strip (with 32, a 20-frame strip spent a third of its time so).
_OPEN_FILES_PER_THREAD = 128
_open_files = threading.local()
_HCOMPRESS_LOCK = threading.Lock()  # the "hcompress" decoder's: one thread at a time


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


_HEAP_TYPES = {"B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8"}  # TFORM type -> dtype


def _row_dtype(table: fits.Header) -> np.dtype:
    """One row of the tile table: heap descriptors as (count, offset) pairs, other columns scalars."""
    fields = []
    for name, form in _columns(table).items():
        if form[:1] in ("P", "Q"):
            fields.append((name, ">i4" if form[0] == "P" else ">i8", (2,)))
        else:
            fields.append((name, _HEAP_TYPES[form]))
    dtype = np.dtype(fields)
    if dtype.itemsize != table["NAXIS1"]:
        raise ValueError(f"tile table rows of {table['NAXIS1']} bytes, columns of {dtype.itemsize}")
    return dtype


def _extents(descriptors: np.ndarray, form: str, heap: int) -> np.ndarray:
    """(bytes, file offset) of each tile's codes, an (n, 2) int64 array, from a column's heap descriptors."""
    counts, offsets = descriptors.astype(np.int64).T
    return np.stack([counts * np.dtype(_HEAP_TYPES[form[1]]).itemsize, offsets + heap], axis=1)


@dataclass(frozen=True)
class _Tiles:
    """Where the compressed tiles of one image lie in its memory-mapped file, and how they decode."""

    file: mmap.mmap
    codec: str  # "rice" or "plio"
    extents: np.ndarray  # (n, 2): bytes and file offset of each tile's codes, row-major
    tile_shape: tuple[int, int]  # (rows, columns) of a full tile
    dtype: np.dtype  # ZBITPIX's type, integers signed: the image as stored, before BZERO
    blocksize: int = 32  # Rice block, pixels
    bytepix: int = 4  # bytes per pixel the Rice codes carry
    scales: np.ndarray | None = None  # ZSCALE of each tile of a quantized image, None for integers
    zeros: np.ndarray | None = None  # ZZERO of each tile
    blanks: np.ndarray | None = None  # ZBLANK code of each tile (column, else keyword), None if neither
    dither: int = -1  # DITHER_METHODS code
    seed: int = 0  # ZDITHER0: the dither sequence of tile i starts at seed + i
    lossless: np.ndarray | None = None  # GZIP_1 extents of float tiles kept unquantized

    def close(self) -> None:
        self.file.close()


def _open_tiles(path: str, index: int) -> _Tiles:
    """HDU ``index`` of ``path`` seen as its table of tiles (``_tile_codec`` layouts only): the
    HDU located by cfitsio, its header parsed by astropy (together half the cost of ``fits.open``)."""
    with fitsio.FITS(path) as fits_file:
        offsets = fits_file[index].get_offsets()
    with open(path, "rb") as handle:
        file = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    start = offsets["data_start"]
    table = fits.Header.fromstring(file[offsets["header_start"] : start])
    forms, bitpix = _columns(table), table["ZBITPIX"]
    rows = np.frombuffer(file, _row_dtype(table), table["NAXIS2"], start)
    heap = start + table.get("THEAP", table["NAXIS1"] * table["NAXIS2"])
    settings = {table.get(f"ZNAME{i}"): table.get(f"ZVAL{i}") for i in range(1, 5)}
    return _Tiles(
        file=file,
        codec="plio" if table["ZCMPTYPE"] == "PLIO_1" else "rice",
        extents=_extents(rows["COMPRESSED_DATA"], forms["COMPRESSED_DATA"], heap),
        tile_shape=(table.get("ZTILE2", 1), table.get("ZTILE1", table["ZNAXIS1"])),
        dtype=np.dtype({8: "u1", 16: "i2", 32: "i4", -32: "f4", -64: "f8"}[bitpix]),
        blocksize=settings.get("BLOCKSIZE", 32),
        bytepix=settings.get("BYTEPIX", 4),
        **(_quantization(table, forms, rows, heap) if bitpix < 0 else {}),
    )


def _quantization(table: fits.Header, forms: dict[str, str], rows: np.ndarray, heap: int) -> dict:
    """The ``_Tiles`` fields of a quantized float image, from its header, column types and tile
    table ``rows`` (``heap``: file offset of the heap)."""
    blanks = rows["ZBLANK"].astype(np.int64) if "ZBLANK" in forms else None
    if blanks is None and "ZBLANK" in table:
        blanks = np.full(len(rows), table["ZBLANK"], np.int64)
    gzip_column = forms.get("GZIP_COMPRESSED_DATA")
    return {
        "scales": rows["ZSCALE"].astype(np.float64),
        "zeros": rows["ZZERO"].astype(np.float64),
        "blanks": blanks,
        "dither": DITHER_METHODS[table.get("ZQUANTIZ", "NO_DITHER")],
        "seed": table.get("ZDITHER0", 0),
        "lossless": _extents(rows["GZIP_COMPRESSED_DATA"], gzip_column, heap) if gzip_column else None,
    }


def _heap(tiles: _Tiles, extent: np.ndarray, index: int) -> bytes:
    """The bytes at ``extent`` (bytes, file offset) of tile ``index``."""
    size, offset = extent.tolist()
    if size == 0 or offset + size > len(tiles.file):
        raise ValueError(f"tile {index} is empty or past the end of the file")
    return tiles.file[offset : offset + size]


def _tile(tiles: _Tiles, index: int, npix: int) -> np.ndarray:
    """Tile ``index`` of ``npix`` pixels, decoded as astropy does, 1-D, row-major (integers as
    stored, floats unquantized)."""
    extent = tiles.extents[index]
    if extent[0] == 0 and tiles.lossless is not None:
        return _lossless_tile(tiles, index, npix)
    coded = _heap(tiles, extent, index)
    if tiles.codec == "plio":
        words = np.frombuffer(coded, ">i2").astype("=i2").tobytes()
        return np.frombuffer(decompress_plio_1_c(words, npix), "i4", npix)
    codes = decompress_rice_1_c(coded, tiles.blocksize, tiles.bytepix, npix)
    if tiles.scales is not None:
        return _unquantize(tiles, index, codes, npix)
    return np.frombuffer(codes, f"i{tiles.bytepix}", npix)


def _unquantize(tiles: _Tiles, index: int, codes: bytes, npix: int) -> np.ndarray:
    """Quantized tile ``index`` (``npix`` integer ``codes``) as floats, as astropy computes them:
    NO_DITHER in numpy float64, the dithered methods in its C unquantizer with the dither
    sequence ``seed + index``; codes equal to the tile's ZBLANK become NaN."""
    scale, zero = float(tiles.scales[index]), float(tiles.zeros[index])
    if tiles.dither == DITHER_METHODS["NO_DITHER"]:
        values = np.frombuffer(codes, f"i{tiles.bytepix}", npix) * scale + zero
    else:
        unquantize = unquantize_float_c if tiles.dtype.itemsize == 4 else unquantize_double_c
        floats = unquantize(codes, tiles.seed + index, npix, scale, zero, tiles.dither, 0, 0, 0.0, tiles.bytepix)
        values = np.frombuffer(floats, tiles.dtype, npix)
    if tiles.blanks is not None:
        blank = np.frombuffer(codes, f"i{tiles.bytepix}", npix) == tiles.blanks[index]
        if blank.any():
            values = values.copy()
            values[blank] = np.nan
    return values


def _lossless_tile(tiles: _Tiles, index: int, npix: int) -> np.ndarray:
    """Float tile ``index`` that quantization could not code, stored as GZIP_1 big-endian floats."""
    raw = gzip.decompress(_heap(tiles, tiles.lossless[index], index))
    if len(raw) != npix * tiles.dtype.itemsize:
        raise ValueError(f"lossless tile {index} holds {len(raw)} bytes for {npix} pixels")
    return np.frombuffer(raw, tiles.dtype.newbyteorder(">"), npix)


def _spans(start: int, stop: int, size: int, extent: int) -> list[tuple[int, int, slice, slice]]:
    """The tiles of ``size`` pixels along an axis of ``extent`` that ``[start, stop)`` touches:
    (tile number, tile length, its part of the request, the request's part of it)."""
    spans = []
    for number in range(start // size, -(-stop // size)):
        t0, t1 = number * size, min(number * size + size, extent)
        a, b = max(t0, start), min(t1, stop)
        spans.append((number, t1 - t0, slice(a - start, b - start), slice(a - t0, b - t0)))
    return spans


def _decode_tiles(tiles: _Tiles, shape: tuple[int, int], rows: range, cols: range) -> np.ndarray:
    """Pixels ``[rows, cols]`` (unit steps inside ``shape``), before BZERO, in ``tiles.dtype``."""
    (ny, nx), (th, tw) = shape, tiles.tile_shape
    out = np.empty((len(rows), len(cols)), tiles.dtype)
    if not out.size:
        return out
    tiles_per_row = -(-nx // tw)
    if th == 1 and tw >= nx:  # one-row tiles (fpack's default): a tile is an image row
        x0, x1 = cols.start, cols.stop
        for k, index in enumerate(rows):
            out[k] = _tile(tiles, index, nx)[x0:x1]
    else:
        col_spans = _spans(cols.start, cols.stop, tw, nx)
        for ty, height, out_rows, tile_rows in _spans(rows.start, rows.stop, th, ny):
            for tx, width, out_cols, tile_cols in col_spans:
                tile = _tile(tiles, ty * tiles_per_row + tx, height * width).reshape(height, width)
                out[out_rows, out_cols] = tile[tile_rows, tile_cols]
    _release(tiles, rows.start // th * tiles_per_row, ((rows.stop - 1) // th + 1) * tiles_per_row)
    return out


def _release(tiles: _Tiles, first: int, stop: int) -> None:
    """Drop the file pages of tiles ``[first, stop)`` from this process's resident set (they stay
    in the page cache). Files kept mapped and read strip by strip would otherwise end up counted
    whole in the worker's memory (40 e91 frames of 4096 x 4096: ~300 MB more)."""
    extents = tiles.extents[first:stop]
    start = min(int(extents[:, 1].min()), len(tiles.file)) // mmap.PAGESIZE * mmap.PAGESIZE
    end = min(int((extents[:, 1] + extents[:, 0]).max()), len(tiles.file))  # damaged tables stay in bounds
    tiles.file.madvise(mmap.MADV_DONTNEED, start, end - start)


def _read_tiles(ref: ImageRef, rows: range, cols: range) -> np.ndarray:
    """Pixels ``[rows, cols]`` of a ``"rice"`` or ``"plio"`` image, unsigned types offset like astropy's."""
    pixels = _decode_tiles(_open_cached(ref.path, ref.index, _open_tiles), ref.shape, rows, cols)
    if ref.dtype.kind == "u" and pixels.dtype.kind == "i":  # BZERO = 2**(bits-1): adding it flips the sign bit
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
        if ref.decoder in ("rice", "plio"):
            pixels = _read_tiles(ref, rows, cols)
        elif ref.decoder in ("astropy", "hcompress"):
            with _HCOMPRESS_LOCK if ref.decoder == "hcompress" else contextlib.nullcontext():
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


def strip_bounds(n_rows: int, strip_rows: int) -> list[tuple[int, int]]:
    """Row strips ``[(y0, y1), ...]`` of ``strip_rows`` covering ``n_rows``.

    Every image of a session is cut at the same rows, whatever its compression tiles (an
    uncompressed image or one whose tiles do not divide the strip would otherwise give chunks
    that neither match the frame's nor the store's); a tile across a strip edge is decoded by
    both strips."""
    return [(y0, min(y0 + strip_rows, n_rows)) for y0 in range(0, n_rows, strip_rows)]


def lazy_image(ref: ImageRef, strip_rows: int, name: str) -> da.Array:
    """The image as a Dask array of full-width row strips, one task per strip named ``name``."""
    bounds = strip_bounds(ref.shape[0], strip_rows)
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
