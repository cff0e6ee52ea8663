"""The e91 frames of one session: their offsets (from the WCSs, or from central cutouts), and one strip of rows of
every frame moved onto the session grid and stacked.

Pure of any reader: the callers pass the function that reads rows (``read_rows(image, y0, y1)``)
or a cutout (``read_cutout(image, y0, y1, x0, x1)``) of an image handle, which only needs a
``shape``. The job passes the FITS edge's lazy readers over ``ImageRef``; the tests pass numpy
arrays and slicing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from astropy.io.fits import Header

from .masks import MASK_DTYPE, Flag
from .register import Offset, RegisterParams, celestial_wcs, measure_offsets, wcs_offset
from .resample import bpm_flags, shift_rows
from .stack import ClipParams, sigma_clip_stack


class Image(Protocol):
    """A handle on a 2-D image that a reader can read (an ``ImageRef``, or a numpy array)."""

    @property
    def shape(self) -> tuple[int, ...]: ...


RowReader = Callable[[Image, int, int], np.ndarray]  # (image, y0, y1) -> rows [y0, y1)
CutoutReader = Callable[[Image, int, int, int, int], np.ndarray]  # (image, y0, y1, x0, x1) -> cutout


@dataclass(frozen=True)
class Frame:
    """An e91 exposure's images (handles with a ``shape``) and the factors that bring its values
    (and ERR) to ADU."""

    sci: Image
    bpm: Image | None
    err: Image | None
    factor: float
    err_factor: float


@dataclass(frozen=True)
class StackedStrip:
    """Session rows ``[y0, y1)`` of every frame on the grid (ADU), their masks, and the stack."""

    e91: np.ndarray  # (frame, y, x) float32, ADU
    e91_mask: np.ndarray  # (frame, y, x) MASK_DTYPE
    mean: np.ndarray  # (y, x) float32, ADU
    std: np.ndarray  # (y, x) float32, ADU
    count: np.ndarray  # (y, x) uint16


def central_window(shape: tuple[int, int], side_px: int) -> tuple[slice, slice]:
    """The central square (rows, columns) of side ``side_px`` (at most the frame) of a ``shape`` frame."""
    cut = min(side_px, *shape)
    return tuple(slice((n - cut) // 2, (n - cut) // 2 + cut) for n in shape)


def applied(offset: Offset, subpixel: bool) -> tuple[float, float]:
    """The offset a frame is moved by (pixels): measured (rounded unless ``subpixel``), 0 when refused."""
    if not offset.ok:
        return 0, 0
    return (offset.dy, offset.dx) if subpixel else (round(offset.dy), round(offset.dx))


def applied_shifts(offsets: list[Offset], subpixel: bool) -> np.ndarray:
    """(dy, dx) translation applied to each frame, pixels: minus the offset (rounded unless
    ``subpixel``); NaN when refused. float32 ``(frame, 2)``."""
    return np.array(
        [tuple(-v for v in applied(o, subpixel)) if o.ok else (np.nan, np.nan) for o in offsets], np.float32
    )


def wcs_offsets(
    reference_header: Header,
    headers: list[tuple[str, Header]],
    shape: tuple[int, int],
    method: str,
    params: RegisterParams,
) -> tuple[list[Offset] | None, str]:
    """The WCS-or-phase choice: offsets of the frames (``(file name, header)`` pairs) from their
    WCSs when ``method`` is ``wcs`` and every header has a valid celestial WCS; else ``None``
    (phase correlation) and, for ``wcs``, why not (for the registration records)."""
    if method != "wcs":
        return None, ""
    reference, why = celestial_wcs(reference_header)
    if reference is None:
        return None, f"WCS not used: raw frame: {why}"
    found = []
    for name, header in headers:
        wcs, why = celestial_wcs(header)
        if wcs is None:
            return None, f"WCS not used: {name}: {why}"
        found.append(wcs)
    return [wcs_offset(reference, wcs, shape, params) for wcs in found], ""


def measure(
    reference_adu: np.ndarray,
    reference_bad: np.ndarray,
    frames: list[Frame],
    rows: slice,
    cols: slice,
    params: RegisterParams,
    note: str,
    read_cutout: CutoutReader,
) -> list[Offset]:
    """Offsets of ``frames`` from the reference cutout ``reference_adu`` (session ``rows``,
    ``cols``; ``reference_bad`` true where unusable); each frame's cutout is read here, one
    frame at a time. ``note`` goes into every offset."""

    def cutouts() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for frame in frames:
            values = read_cutout(frame.sci, rows.start, rows.stop, cols.start, cols.stop) * np.float32(frame.factor)
            bad = (
                None if frame.bpm is None else read_cutout(frame.bpm, rows.start, rows.stop, cols.start, cols.stop) != 0
            )
            yield values, bad

    offsets = measure_offsets(reference_adu, cutouts(), reference_bad, params)
    return [dataclasses.replace(offset, note=note) for offset in offsets] if note else offsets


def stack_strip(
    frames: list[Frame],
    offsets: list[Offset],
    y0: int,
    y1: int,
    subpixel: bool,
    params: ClipParams,
    read_rows: RowReader,
) -> StackedStrip:
    """Session rows ``[y0, y1)`` of every frame moved onto the grid, and their stack.

    Each frame's rows are read here: those the offset (rounded unless ``subpixel``) brings onto
    the strip. A frame that failed registration is left in place and flagged NOT_REGISTERED."""

    def read(image: Image, a: int, b: int, factor: float = 1.0) -> np.ndarray:
        values = read_rows(image, a, b)
        return values if factor == 1.0 else values * np.float32(factor)

    nx = frames[0].sci.shape[1]
    values = np.empty((len(frames), y1 - y0, nx), np.float32)
    masks = np.empty(values.shape, MASK_DTYPE)
    variance = np.empty(values.shape, np.float32) if params.weighted else None
    for k, (frame, offset) in enumerate(zip(frames, offsets)):
        dy, dx = applied(offset, subpixel)
        a, b = max(0, y0 + math.floor(dy)), min(frame.sci.shape[0], y1 + math.ceil(dy))
        b = max(a, b)
        window = read(frame.sci, a, b, frame.factor)
        flags = bpm_flags(read(frame.bpm, a, b)) if frame.bpm is not None else np.zeros(window.shape, MASK_DTYPE)
        window_var = None if frame.err is None else np.square(read(frame.err, a, b, frame.err_factor))
        out, mask, var = shift_rows(window, flags, window_var, a, y0, y1, dy, dx)
        values[k], masks[k] = out, mask
        if variance is not None:
            variance[k] = var
        if not offset.ok:
            masks[k] |= MASK_DTYPE(Flag.NOT_REGISTERED)
    result = sigma_clip_stack(values, masks, variance, params, parallel=False)  # Dask parallelises
    masks[result.clipped] |= MASK_DTYPE(Flag.CLIPPED)  # in place: no cube-sized temporaries
    return StackedStrip(values, masks, result.mean, result.std, result.count)
