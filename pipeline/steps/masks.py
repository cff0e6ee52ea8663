"""Bit-mask codes of skyprep's uint16 masks.

The low four bits keep the LCO/BANZAI meanings; higher bits add what skyprep knows.
Written to the store as CF ``flag_masks`` / ``flag_meanings`` attributes.
"""

from __future__ import annotations

from enum import IntFlag

import numpy as np

MASK_DTYPE = np.uint16


class Flag(IntFlag):
    """One bit per reason a pixel is not to be trusted."""

    BAD_PIXEL = 1  # from the bad-pixel map (BPM)
    SATURATED = 2  # raw value >= SATURATE
    LOW_FLAT = 4  # sky flat below the low-flat threshold (0.2)
    COSMIC_RAY = 8  # cosmic-ray hit
    NONLINEAR = 16  # raw value >= MAXLIN
    NO_DATA = 32  # no data here (outside the frame after a shift, NaN/inf input)
    HOT_PIXEL = 64  # dark current far above the frame's typical value
    CLIPPED = 128  # rejected by the sigma-clipped stack
    NOT_REGISTERED = 256  # frame could not be registered and is left out of the stack


def cf_attrs() -> dict:
    """CF flag attributes decoding the mask for xarray and other readers."""
    return {
        "flag_masks": [int(f) for f in Flag],
        "flag_meanings": " ".join(f.name.lower() for f in Flag),
    }
