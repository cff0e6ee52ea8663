"""The HDU model of a FITS file: its image extensions, their headers and their IRAF addresses.

``list_images`` describes each 2-D image of a file as an ``ImageRef`` (shape, decoded dtype,
tiling, the decoder chosen for its layout, and the effective header: the primary's keywords
inherited when ``INHERIT = T``); ``image`` picks one by IRAF-style address (``file[SCI,2]``).
Pixels are read by ``fits_reader``. Every error names the file and the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from .fits_decoders import choose_decoder, tile_shape
from .fits_files import FitsError, Source, is_local, open_fits, source
from .objects import ObjectPath

# Keywords that describe an HDU's own structure and never pass from primary to extension.
STRUCTURAL_KEYWORDS = {
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "PCOUNT",
    "GCOUNT", "BZERO", "BSCALE", "BLANK", "EXTNAME", "EXTVER", "INHERIT", "CHECKSUM", "DATASUM",
    "COMMENT", "HISTORY", "",
}  # fmt: skip


@dataclass(frozen=True)
class ImageRef:
    """One image extension of one file: enough to read it anywhere (it pickles to workers)."""

    path: Source  # a local file's path, or an object of an object store
    index: int  # HDU index in the file
    name: str  # EXTNAME, or "" when absent
    shape: tuple[int, int]  # (ny, nx) pixels
    dtype: np.dtype  # dtype astropy decodes to
    tile_rows: int  # rows per compression tile (the image height when uncompressed)
    header: fits.Header  # effective header (primary inherited when INHERIT = T)
    blank: float | None = None  # decoded value of BLANK pixels (become NaN, like astropy)
    rescaled: bool = False  # BSCALE/BZERO scaling to floats: astropy's float32 arithmetic is used
    version: int = 1  # EXTVER (1 when absent)
    decoder: str = "cfitsio"  # "rice", "plio", "astropy", "hcompress" or "cfitsio" (fits_decoders)

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


def list_images(path: os.PathLike | str | ObjectPath) -> list[ImageRef]:
    """All 2-D image extensions of ``path`` (tables and empty HDUs skipped), in file order."""
    path = source(path)
    with open_fits(path) as hdul:
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
                    tile_rows=tile_shape(hdu)[0],
                    header=header,
                    blank=_blank(hdu),
                    rescaled=rescaled,
                    version=int(hdu.header.get("EXTVER", 1)),
                    decoder=choose_decoder(hdu, rescaled, is_local(path)),
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


def primary_header(path: os.PathLike | str | ObjectPath) -> fits.Header:
    """The primary header of ``path`` (global keywords of a multi-extension file)."""
    with open_fits(source(path)) as hdul:
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


def split_address(address: os.PathLike | str | ObjectPath) -> tuple[Source, str | None]:
    """``"file.fits.fz[SCI,2]"`` -> ``("file.fits.fz", "SCI,2")``; no brackets -> ``(address, None)``
    (an object is never split: its name is its own)."""
    if isinstance(address, ObjectPath):
        return address, None
    text = str(address)
    if text.endswith("]") and "[" in text and not os.path.exists(text):
        cut = text.rindex("[")
        return text[:cut], text[cut + 1 : -1].strip()
    return text, None


def image(path: os.PathLike | str | ObjectPath, name: str | None = None) -> ImageRef:
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
    found = ", ".join(r.label[len(str(path)) :].strip("[]") for r in refs)
    raise FitsError(path, f"no image extension {name!r} (found: {found})")


def _matches(ref: ImageRef, selector: str) -> bool:
    extname, _, extver = (part.strip() for part in selector.partition(","))
    if extname.isdigit() and not extver:
        return ref.index == int(extname)
    if ref.name.upper() != extname.upper():
        return False
    return not extver or (extver.isdigit() and ref.version == int(extver))
