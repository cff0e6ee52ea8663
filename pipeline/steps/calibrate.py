"""Calibration of an overscan-corrected frame, in electrons, and its variance and mask.

Order (the observatory's): gain (ADU -> electrons), bias, Poisson variance, dark scaled by the
dark time, flat; back to ADU at the end by dividing by the nominal gain. Uncertainty follows
BANZAI: read noise, plus the bias error in quadrature, plus Poisson ``|data|`` after bias, plus
the dark error scaled by the dark time, then ``sigma_out = |D/F| sqrt((sD/D)^2 + (sF/F)^2)``.
All functions are pure and work on any block of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .masks import MASK_DTYPE, Flag
from .params import CalibParams


@dataclass(frozen=True)
class Masters:
    """Master calibration blocks for the same rows, detector orientation, electrons."""

    bias_e: np.ndarray
    dark_e_per_s: np.ndarray
    flat: np.ndarray
    bpm: np.ndarray  # non-zero = bad pixel
    bias_err_e: np.ndarray | float = 0.0
    dark_err_e_per_s: np.ndarray | float = 0.0
    flat_err: np.ndarray | float = 0.0


def calibrated_e(os_e: np.ndarray, masters: Masters, darktime_s: float) -> np.ndarray:
    """``(os - bias - dark * darktime) / flat``, electrons."""
    return (os_e - masters.bias_e - masters.dark_e_per_s * darktime_s) / masters.flat


def variance_e2(os_e: np.ndarray, rdnoise_e: np.ndarray | float, masters: Masters, darktime_s: float) -> np.ndarray:
    """Variance of :func:`calibrated_e`, electrons^2 (BANZAI's propagation)."""
    after_bias = os_e - masters.bias_e
    var = rdnoise_e**2 + np.square(masters.bias_err_e) + np.abs(after_bias)
    var = var + np.square(np.multiply(masters.dark_err_e_per_s, darktime_s))
    signal = after_bias - masters.dark_e_per_s * darktime_s
    flat = masters.flat
    return var / flat**2 + signal**2 * np.square(masters.flat_err) / flat**4


def quality_mask(
    raw_flags: np.ndarray,
    masters: Masters,
    calibrated: np.ndarray,
    rdnoise_e: np.ndarray | float,
    darktime_s: float,
    params: CalibParams,
) -> np.ndarray:
    """Bit mask (uint16, :class:`~pipeline.steps.masks.Flag`) of a calibrated block."""
    mask = np.asarray(raw_flags, MASK_DTYPE).copy()
    mask[np.asarray(masters.bpm) != 0] |= Flag.BAD_PIXEL.value
    mask[~(masters.flat >= params.low_flat)] |= Flag.LOW_FLAT.value
    mask[masters.dark_e_per_s * darktime_s > params.hot_pixel_rdnoise * rdnoise_e] |= Flag.HOT_PIXEL.value
    mask[~np.isfinite(calibrated)] |= Flag.NO_DATA.value
    return mask


def calibrate_block(
    os_adu: np.ndarray,
    raw_flags: np.ndarray,
    gain_e_per_adu: np.ndarray | float,
    rdnoise_e: np.ndarray | float,
    masters: Masters,
    darktime_s: float,
    gain_nominal: float,
    params: CalibParams,
) -> dict[str, np.ndarray]:
    """Calibrated frame (ADU), its variance (ADU^2) and mask for one block of rows."""
    os_e = os_adu.astype(np.float64) * gain_e_per_adu
    with np.errstate(divide="ignore", invalid="ignore"):
        calib_e = calibrated_e(os_e, masters, darktime_s)
        var_e2 = variance_e2(os_e, rdnoise_e, masters, darktime_s)
    return {
        "calib": (calib_e / gain_nominal).astype(np.float32),
        "variance": (var_e2 / gain_nominal**2).astype(np.float32),
        "mask": quality_mask(raw_flags, masters, calib_e, rdnoise_e, darktime_s, params),
    }
