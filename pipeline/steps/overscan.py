"""Overscan level estimators, per amplifier, in ADU.

Each takes the amplifier's overscan pixels (rows along y, overscan columns along x) and returns
the level to subtract from every data row: shape ``(ny, 1)``, so it broadcasts over a row.
"""

from __future__ import annotations

import numpy as np

from .params import OverscanParams

ROBUST_SIGMA_PER_MAD = 1.4826


def clipped_mean_adu(overscan_adu: np.ndarray, sigma: float) -> float:
    """Mean of the pixels within ``sigma`` robust sigma of the median, one pass, ADU."""
    values = np.asarray(overscan_adu, dtype=np.float64).ravel()
    median = np.median(values)
    spread = ROBUST_SIGMA_PER_MAD * np.median(np.abs(values - median))
    if spread == 0:
        return float(median)
    return float(values[np.abs(values - median) <= sigma * spread].mean())


def row_median_adu(overscan_adu: np.ndarray) -> np.ndarray:
    """Median of each row, ADU, shape ``(ny,)``."""
    return np.median(np.asarray(overscan_adu, dtype=np.float64), axis=1)


def polynomial_adu(overscan_adu: np.ndarray, order: int) -> np.ndarray:
    """Legendre fit of degree ``order`` to the row medians, evaluated per row, ADU, shape ``(ny,)``."""
    medians = row_median_adu(overscan_adu)
    rows = np.arange(medians.size, dtype=np.float64)
    fit = np.polynomial.Legendre.fit(rows, medians, deg=min(order, medians.size - 1))
    return fit(rows)


def overscan_level_adu(overscan_adu: np.ndarray, params: OverscanParams) -> np.ndarray:
    """The level to subtract from each row, ADU, shape ``(ny, 1)``."""
    ny = overscan_adu.shape[0]
    if params.method == "clipped_mean":
        level = np.full(ny, clipped_mean_adu(overscan_adu, params.sigma))
    elif params.method == "row_median":
        level = row_median_adu(overscan_adu)
    elif params.method == "polynomial":
        level = polynomial_adu(overscan_adu, params.order)
    else:
        raise ValueError(f"unknown overscan method {params.method!r}")
    return level[:, np.newaxis]
