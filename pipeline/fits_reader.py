"""The FITS edge: image extensions, header inheritance and tile-aligned lazy reads.

Structure and headers come from astropy; pixels from fitsio (cfitsio), whose row-range reads
decode only the compression tiles they touch at C speed (astropy's ``section`` loops over tiles
in Python and costs about twice as much per pixel). Both decode bit-identically, except integer
images scaled to floats by BSCALE/BZERO (astropy scales in float32, cfitsio in float64): those
are read through astropy so every reader of the file sees the same values. Every error
names the file and the reason. Arrays are scaled by ``BZERO``/``BSCALE``, native byte order.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import dask.array as da
import fitsio
import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

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


def _open(path: str) -> fits.HDUList:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)  # "file may have been truncated"
            return fits.open(path, memmap=False, lazy_load_hdus=False)
    except FileNotFoundError:
        raise FitsError(path, "file not found") from None
    except AstropyUserWarning as warning:
        raise FitsError(path, f"truncated or damaged ({warning})") from None
    except OSError as err:
        raise FitsError(path, f"not a readable FITS file ({err})") from None
    except Exception as err:  # astropy raises a zoo of types on corrupt headers
        raise FitsError(path, f"unreadable FITS structure ({type(err).__name__}: {err})") from None


def _tile_rows(hdu) -> int:
    if isinstance(hdu, fits.CompImageHDU):
        return int(hdu._bintable.header.get("ZTILE2", 1))
    return int(hdu.shape[0])


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
            refs.append(
                ImageRef(
                    path=path,
                    index=index,
                    name=str(hdu.header.get("EXTNAME", "")).strip(),
                    shape=(int(hdu.shape[0]), int(hdu.shape[1])),
                    dtype=_decoded_dtype(hdu),
                    tile_rows=_tile_rows(hdu),
                    header=header,
                    blank=_blank(hdu),
                    rescaled=_decoded_dtype(hdu).kind == "f" and hdu.header["BITPIX"] > 0,
                    version=int(hdu.header.get("EXTVER", 1)),
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


def read_rows(ref: ImageRef, y0: int, y1: int) -> np.ndarray:
    """Rows ``[y0, y1)`` of the image, decoding only the compression tiles they touch."""
    return read_cutout(ref, y0, y1, 0, ref.shape[1])


def read_cutout(ref: ImageRef, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Pixels ``[y0:y1, x0:x1]``, decoding only the compression tiles they touch (with 2-D tiles
    a small cutout is far cheaper than its full-width rows)."""
    where = f"rows {y0}:{y1}" if (x0, x1) == (0, ref.shape[1]) else f"pixels [{y0}:{y1}, {x0}:{x1}]"
    try:
        if ref.rescaled:
            with _open(ref.path) as hdul:
                pixels = hdul[ref.index].section[y0:y1, x0:x1]
        else:
            with fitsio.FITS(ref.path) as fits_file:
                pixels = fits_file[ref.index][y0:y1, x0:x1]
    except FitsError:
        raise
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FitsError(ref.label, f"cannot decode {where} ({reason})") from None
    pixels = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("="))
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
