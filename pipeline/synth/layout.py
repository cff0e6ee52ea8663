"""Amplifier geometry and how a raw frame is laid out in FITS.

The amplifier grid has ``rows x cols`` amplifiers (``spec.AMP_GRIDS``); row 0 is the bottom
(low numpy y), column 0 the left. Amplifiers are named ``im1..imN`` row by row from the bottom
left (a lone amplifier's HDU is ``SCI``, as in LCO raws). Each amplifier's raw array is
``(size/rows, size/cols + overscan)``: data columns first, overscan columns last. Amplifiers in
the right half read out flipped in x, those in the top row of a two-row grid flipped in y, so

    detector[detsec.slices] = detsec.orient(raw[datasec.slices])

places every amplifier (``pipeline.io.sections.Section``; ``orient`` is its own inverse).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from ..io.sections import Section
from .ccd import Readout
from .files import compressed_image
from .spec import AMP_GRIDS

Card = tuple[str, object, str]  # (keyword, value, comment)


@dataclass(frozen=True)
class AmpSections:
    """IRAF sections of one amplifier: ``datasec``/``biassec`` in its raw array, ``detsec`` on the detector."""

    name: str
    datasec: Section
    biassec: Section
    detsec: Section

    @property
    def trimsec(self) -> Section:
        return self.datasec

    @property
    def raw_shape(self) -> tuple[int, int]:
        """(rows, columns) of the raw array: data plus overscan."""
        return self.datasec.shape[0], max(self.biassec.x1, self.biassec.x2)


def amp_sections(size: int, amps: int, overscan: int) -> tuple[AmpSections, ...]:
    """Sections of the ``amps`` amplifiers of a ``size`` x ``size`` detector, in ``im1..imN`` order."""
    rows, cols = AMP_GRIDS[amps]
    ny, nx = size // rows, size // cols
    datasec = Section(1, nx, 1, ny)
    biassec = Section(nx + 1, nx + overscan, 1, ny)
    sections = []
    for row in range(rows):
        for col in range(cols):
            x = (col * nx + 1, (col + 1) * nx)
            y = (row * ny + 1, (row + 1) * ny)
            if cols > 1 and 2 * col >= cols:  # right half
                x = x[::-1]
            if rows > 1 and row == rows - 1:  # top row
                y = y[::-1]
            name = "SCI" if amps == 1 else f"im{len(sections) + 1}"
            sections.append(AmpSections(name, datasec, biassec, Section(*x, *y)))
    return tuple(sections)


def amp_map(amps: Sequence[AmpSections], values: Sequence[float], size: int) -> np.ndarray:
    """Detector-frame float32 map holding each amplifier's scalar ``values`` over its DETSEC."""
    image = np.empty((size, size), dtype=np.float32)
    for amp, value in zip(amps, values, strict=True):
        image[amp.detsec.slices] = value
    return image


def read_out(detector: np.ndarray, amp: AmpSections) -> np.ndarray:
    """The amplifier's data pixels in readout order (the inverse of the DETSEC placement)."""
    return amp.detsec.orient(detector[amp.detsec.slices])


def amp_cards(amp: AmpSections, readout: Readout) -> list[Card]:
    """The keywords that differ between amplifiers."""
    return [
        ("GAIN", readout.gain_e_per_adu, "[e-/ADU] amplifier gain"),
        ("RDNOISE", readout.rdnoise_e, "[e-] amplifier read noise"),
        ("BIASSEC", str(amp.biassec), "overscan region of the raw array"),
        ("DATASEC", str(amp.datasec), "illuminated region of the raw array"),
        ("TRIMSEC", str(amp.trimsec), "region kept after trimming"),
        ("DETSEC", str(amp.detsec), "where DATASEC lands on the detector"),
    ]


def raw_hdus(
    shared: Sequence[Card],
    amps: Sequence[AmpSections],
    readouts: Sequence[Readout],
    arrays: Sequence[np.ndarray],
    size: int,
) -> tuple[fits.PrimaryHDU, list[fits.CompImageHDU]]:
    """(primary, extensions) of a raw frame.

    One amplifier (MuSCAT): an empty primary and one compressed HDU holding every keyword.
    Several (Mosaic): the primary holds the shared keywords; each ``imN`` extension has
    ``INHERIT = T`` and only its own ``GAIN``, ``RDNOISE`` and sections; the primary adds
    ``DETSIZE`` and ``NEXTEND``.
    """
    if len(amps) == 1:
        header = fits.Header(list(shared))
        header.update(amp_cards(amps[0], readouts[0]))
        return fits.PrimaryHDU(), [compressed_image(arrays[0], header, amps[0].name)]
    primary = fits.Header(list(shared))
    primary.update(
        [("DETSIZE", str(Section(1, size, 1, size)), "detector size"), ("NEXTEND", len(amps), "amplifier extensions")]
    )
    extensions = []
    for amp, readout, data in zip(amps, readouts, arrays, strict=True):
        header = fits.Header([("INHERIT", True, "primary keywords apply"), *amp_cards(amp, readout)])
        extensions.append(compressed_image(data, header, amp.name))
    return fits.PrimaryHDU(header=primary), extensions
