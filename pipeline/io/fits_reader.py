"""Lazy, tile-aligned reads of FITS images: row strips, cutouts, whole images, Dask arrays.

Each read decodes only the compression tiles it touches, by the decoder its ``ImageRef`` names
(``fits_decoders``), and returns native byte order with BZERO/BSCALE applied and BLANK pixels
as NaN, bit-identical to ``fits.getdata``. Every error names the image and the reason.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from .fits_decoders import decode
from .fits_files import FitsError
from .fits_headers import ImageRef


def read_rows(ref: ImageRef, y0: int, y1: int) -> np.ndarray:
    """Rows ``[y0, y1)`` of the image, decoding only the compression tiles they touch."""
    return read_cutout(ref, y0, y1, 0, ref.shape[1])


def read_cutout(ref: ImageRef, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Pixels ``[y0:y1, x0:x1]``, decoding only the compression tiles they touch (with 2-D tiles
    a small cutout is far cheaper than its full-width rows)."""
    where = f"rows {y0}:{y1}" if (x0, x1) == (0, ref.shape[1]) else f"pixels [{y0}:{y1}, {x0}:{x1}]"
    rows, cols = range(ref.shape[0])[y0:y1], range(ref.shape[1])[x0:x1]
    try:
        pixels = decode(ref.path, ref.index, ref.decoder, ref.dtype, rows, cols)
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
