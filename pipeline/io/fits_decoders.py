"""The pixel decoders of FITS images, and the one choice of decoder per HDU layout.

The only module that touches astropy's private API (its C codecs and ``CompImageHDU._bintable``);
``pyproject.toml`` caps astropy below its next major version, and a codec astropy moves sends
its layouts to the other decoders (``decode`` stays bit-identical). Each decoder reads only the
compression tiles a request touches, through the files ``fits_files`` opens:

* ``"rice"``: RICE_1 tiles of any shape, lossless 16/32-bit integers (raw CCD frames) or floats
  quantized by fpack (reduced frames' SCI and ERR): each tile's bytes from the mapped file
  through astropy's C Rice decoder and, for floats, its C unquantizer (the dither sequence of
  ZDITHER0 and the tile's index, ZSCALE/ZZERO, ZBLANK codes -> NaN, tiles kept losslessly by
  GZIP_1), the functions ``fits.getdata`` calls, without astropy's per-tile Python overhead;
* ``"plio"``: PLIO_1 integer tiles (masks) the same way through astropy's C PLIO decoder;
* ``"astropy"``: other tiles of more than one row, which astropy decodes faster than cfitsio,
  and integer images scaled to floats by BSCALE/BZERO (astropy scales in float32, cfitsio in
  float64: one decoder keeps every reader of the file on the same values);
* ``"hcompress"``: HCOMPRESS_1 tiles of more than one row through astropy as above, one thread
  of the process at a time (astropy's C H-decoder keeps its state in static variables: threads
  decoding at once corrupt each other's tiles);
* ``"cfitsio"`` (fitsio): other one-row tiles and plain images.

All of them decode bit-identically to ``fits.getdata`` (figures: benchmarks/README.md, "FITS
reading").
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import threading
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from .fits_files import MappedFile, RangedFile, Source, cached, locate_hdu, open_bytes, open_cfitsio, open_fits

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

_HCOMPRESS_LOCK = threading.Lock()  # the "hcompress" decoder's: one thread at a time


def tile_shape(hdu: fits.ImageHDU | fits.PrimaryHDU | fits.CompImageHDU) -> tuple[int, int]:
    """(rows, columns) of one compression tile; the whole image when uncompressed."""
    if isinstance(hdu, fits.CompImageHDU):
        header = hdu._bintable.header
        return int(header.get("ZTILE2", 1)), int(header.get("ZTILE1", hdu.shape[1]))
    return int(hdu.shape[0]), int(hdu.shape[1])


def choose_decoder(hdu: fits.ImageHDU | fits.PrimaryHDU | fits.CompImageHDU, rescaled: bool, local: bool = True) -> str:
    """The decoder for ``hdu``'s layout (module docstring); ``rescaled``: integers scaled to floats;
    not ``local`` (an object in an object store): astropy instead of cfitsio, which opens local files only."""
    if isinstance(hdu, fits.CompImageHDU) and (codec := _tile_codec(hdu._bintable.header, hdu.header)):
        return codec
    if rescaled or (isinstance(hdu, fits.CompImageHDU) and tile_shape(hdu)[0] > 1):
        hcompress = isinstance(hdu, fits.CompImageHDU) and hdu._bintable.header.get("ZCMPTYPE") == "HCOMPRESS_1"
        return "hcompress" if hcompress else "astropy"
    return "cfitsio" if local else "astropy"


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


def decode(path: Source, index: int, decoder: str, dtype: np.dtype, rows: range, cols: range) -> np.ndarray:
    """Pixels ``[rows, cols]`` (unit steps) of HDU ``index`` of ``path`` by ``decoder``, in the
    decoded ``dtype`` (BZERO/BSCALE applied), in whatever byte order the decoder returns."""
    if decoder in ("rice", "plio"):
        return _read_tiles(path, index, dtype, rows, cols)
    y0, y1, x0, x1 = rows.start, rows.stop, cols.start, cols.stop
    if decoder in ("astropy", "hcompress"):
        with _HCOMPRESS_LOCK if decoder == "hcompress" else contextlib.nullcontext():
            return cached(path, None, _open_mapped)[index].section[y0:y1, x0:x1]
    with open_cfitsio(path) as fits_file:
        return fits_file[index][y0:y1, x0:x1]


def _open_mapped(path: Source, index: None) -> fits.HDUList:
    """All of ``path``, memory-mapped (``index`` unused: one handle serves every HDU)."""
    return open_fits(path, memmap=None)


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
    """Where the compressed tiles of one image lie in its file, and how they decode."""

    file: MappedFile | RangedFile
    codec: str  # "rice" or "plio"
    extents: np.ndarray  # (n, 2): bytes and file offset of each tile's codes, row-major
    shape: tuple[int, int]  # (ny, nx) pixels of the image
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


def _open_tiles(path: Source, index: int) -> _Tiles:
    """HDU ``index`` of ``path`` seen as its table of tiles (``_tile_codec`` layouts only): the
    HDU located by cfitsio, its header parsed by astropy (together cheaper than ``fits.open``)."""
    file = open_bytes(path)
    header_start, start = locate_hdu(path, index, file if isinstance(file, RangedFile) else None)
    table = fits.Header.fromstring(file.read(header_start, start - header_start))
    forms, bitpix = _columns(table), table["ZBITPIX"]
    row_dtype = _row_dtype(table)
    rows = np.frombuffer(file.read(start, row_dtype.itemsize * table["NAXIS2"]), row_dtype, table["NAXIS2"])
    heap = start + table.get("THEAP", table["NAXIS1"] * table["NAXIS2"])
    settings = {table.get(f"ZNAME{i}"): table.get(f"ZVAL{i}") for i in range(1, 5)}
    return _Tiles(
        file=file,
        codec="plio" if table["ZCMPTYPE"] == "PLIO_1" else "rice",
        extents=_extents(rows["COMPRESSED_DATA"], forms["COMPRESSED_DATA"], heap),
        shape=(table["ZNAXIS2"], table["ZNAXIS1"]),
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
    return tiles.file.read(offset, size)


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


def _decode_tiles(tiles: _Tiles, rows: range, cols: range) -> np.ndarray:
    """Pixels ``[rows, cols]`` (unit steps inside the image), before BZERO, in ``tiles.dtype``."""
    (ny, nx), (th, tw) = tiles.shape, tiles.tile_shape
    out = np.empty((len(rows), len(cols)), tiles.dtype)
    if not out.size:
        return out
    tiles_per_row = -(-nx // tw)
    if th == 1 and tw >= nx:  # one-row tiles (fpack's default): a tile is an image row
        _prefetch(tiles, slice(rows.start, rows.stop))
        x0, x1 = cols.start, cols.stop
        for k, index in enumerate(rows):
            out[k] = _tile(tiles, index, nx)[x0:x1]
    else:
        row_spans, col_spans = _spans(rows.start, rows.stop, th, ny), _spans(cols.start, cols.stop, tw, nx)
        _prefetch(tiles, [ty * tiles_per_row + tx for ty, *_ in row_spans for tx, *_ in col_spans])
        for ty, height, out_rows, tile_rows in row_spans:
            for tx, width, out_cols, tile_cols in col_spans:
                tile = _tile(tiles, ty * tiles_per_row + tx, height * width).reshape(height, width)
                out[out_rows, out_cols] = tile[tile_rows, tile_cols]
    _release(tiles, rows.start // th * tiles_per_row, ((rows.stop - 1) // th + 1) * tiles_per_row)
    return out


def _prefetch(tiles: _Tiles, needed: slice | list[int]) -> None:
    """Have an object's ``RangedFile`` fetch the tiles ``needed`` now, in as few ranged GETs as
    they allow (a mapped file reads its pages as they are touched: nothing to do)."""
    if isinstance(tiles.file, RangedFile):
        extents = tiles.extents[needed]
        tiles.file.prefetch(extents if tiles.lossless is None else np.concatenate([extents, tiles.lossless[needed]]))


def _release(tiles: _Tiles, first: int, stop: int) -> None:
    """Release the file pages of tiles ``[first, stop)`` (``MappedFile.release``)."""
    extents = tiles.extents[first:stop]
    tiles.file.release(int(extents[:, 1].min()), int((extents[:, 1] + extents[:, 0]).max()))


def _read_tiles(path: Source, index: int, dtype: np.dtype, rows: range, cols: range) -> np.ndarray:
    """Pixels ``[rows, cols]`` of a ``"rice"`` or ``"plio"`` image, unsigned types offset like astropy's."""
    pixels = _decode_tiles(cached(path, index, _open_tiles), rows, cols)
    if dtype.kind == "u" and pixels.dtype.kind == "i":  # BZERO = 2**(bits-1): adding it flips the sign bit
        unsigned = pixels.view(dtype)
        unsigned ^= np.array(1 << (8 * dtype.itemsize - 1), dtype)
        return unsigned
    return pixels
