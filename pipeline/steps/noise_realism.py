"""How realistic a synthetic frame is: statistics compared between ``os`` and ``syn`` (ADU).

Pure functions on arrays. ``use`` selects background pixels (no source, no mask bit). The
expected value of an overscan-corrected frame is ``(g_nom * mean * flat + dark * DARKTIME +
bias) / g`` (``mean`` in ADU of the nominal gain ``g_nom``, ``os`` in its amplifier's, gain ``g``);
both ``os`` and ``syn`` are compared about it. Against real data that expectation carries the
stack's own noise (``base_variance_adu2``), which adds to ``os``'s scatter about it and is
already part of ``syn``'s scatter about the truth, so ``matched_variances`` corrects both.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .noise_fit import CLIP_SIGMAS, robust_variance, smoothed_periodogram


@dataclass(frozen=True)
class BinnedVariance:
    """Per flux bin: mean expected signal (ADU) and robust variance about the expectation (ADU^2)."""

    signal_adu: np.ndarray
    variance_adu2: np.ndarray
    pixels: np.ndarray


@dataclass(frozen=True)
class RowPower:
    """Row-correlated power of a residual: variance of row means above the white floor (ADU^2)
    and the smoothed spectrum of the row means (cycles per row, ADU^2)."""

    row_var_adu2: float
    freq: np.ndarray
    psd_adu2: np.ndarray


def expected_os_adu(
    mean_adu: np.ndarray,
    flat: np.ndarray,
    dark_e_per_s: np.ndarray,
    bias_e: np.ndarray,
    gain_e_per_adu: np.ndarray | float,
    darktime_s: float,
    gain_nominal_e_per_adu: float,
) -> np.ndarray:
    """Expected overscan-corrected frame (its amplifiers' ADU, float64; ``gain_e_per_adu`` their
    header gains) of a clean stack ``mean_adu`` (ADU of the nominal gain)."""
    return (gain_nominal_e_per_adu * mean_adu * flat + dark_e_per_s * darktime_s + bias_e) / gain_e_per_adu


def base_variance_adu2(std_adu: np.ndarray, count: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Variance (os ADU^2) the stack ``mean`` still carries: ``flat^2 * std^2 / (count - 1)``
    (``std`` the population standard deviation of the ``count`` kept frame values); NaN below 2."""
    count = np.asarray(count, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count >= 2, flat**2 * np.square(std_adu, dtype=np.float64) / (count - 1), np.nan)


def smooth_signal_adu(expected_adu: np.ndarray, use: np.ndarray, size_px: int = 15) -> np.ndarray:
    """The box mean (``size_px``) of ``expected_adu`` over ``use`` pixels: a binning variable whose
    own noise is negligible. Binning on the noisy expectation itself would select on its noise,
    which ``os - expected`` shares and ``syn - expected`` does not."""
    weights = ndimage.uniform_filter(use.astype(np.float64), size_px, mode="nearest")
    values = ndimage.uniform_filter(np.where(use, np.nan_to_num(expected_adu), 0.0), size_px, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weights > 0, values / weights, np.nan)


def flux_bin_edges(signal_adu: np.ndarray, use: np.ndarray, bins: int) -> np.ndarray:
    """Quantile edges of ``signal_adu`` over ``use``: bins of equal pixel counts."""
    return np.quantile(signal_adu[use], np.linspace(0.0, 1.0, bins + 1))


def binned_variance(residual_adu: np.ndarray, signal_adu: np.ndarray, use: np.ndarray, edges: np.ndarray,
                    offset_adu2: np.ndarray | float = 0.0) -> BinnedVariance:  # fmt: skip
    """Robust variance of ``residual_adu`` in the flux bins ``edges`` of ``signal_adu``, plus the
    bin's mean ``offset_adu2`` (a per-pixel variance correction, e.g. ``-base_variance_adu2``)."""
    which = np.searchsorted(edges, signal_adu, side="right") - 1
    which[signal_adu == edges[-1]] = len(edges) - 2
    offset = np.broadcast_to(offset_adu2, residual_adu.shape)
    signal, variance, pixels = [], [], []
    for k in range(len(edges) - 1):
        chosen = use & (which == k)
        signal.append(float(signal_adu[chosen].mean()))
        variance.append(robust_variance(residual_adu[chosen]) + float(np.nanmean(offset[chosen])))
        pixels.append(int(chosen.sum()))
    return BinnedVariance(np.array(signal), np.array(variance), np.array(pixels))


def row_power(residual_adu: np.ndarray, use: np.ndarray, min_pixels: int = 16) -> RowPower:
    """Row-correlated power of ``residual_adu`` over the ``use`` pixels of each row (rows with
    fewer than ``min_pixels`` are filled with the mean). The white floor is each row's pixel
    variance over its pixel count. Outliers (cosmic rays, ``inliers``) are left out."""
    use = use & inliers(residual_adu, use)
    data = np.where(use, residual_adu, np.nan)
    counts = use.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows without a usable pixel
        means = np.nanmean(data, axis=1)
        floors = np.nanvar(data, axis=1, ddof=1) / counts
    good = counts >= min_pixels
    means = np.where(good, means - np.nanmean(means[good]), 0.0)
    row_var = float(np.mean(means[good] ** 2) - np.mean(floors[good]))
    freq, psd = smoothed_periodogram(means)
    return RowPower(row_var, freq, psd - float(np.mean(floors[good])))


def structure_slope(
    residual_adu: np.ndarray, pattern_adu: np.ndarray, use: np.ndarray, per_row: bool = True
) -> tuple[float, float]:
    """Least-squares slope of ``residual_adu`` on a fixed ``pattern_adu`` over ``use``, both with
    each row's mean removed when ``per_row`` (so random row offsets do not project onto the
    pattern; else the mean over ``use``; sparse patterns such as hot pixels need that): 1 when the
    frame carries the pattern (bias, dark), 0 when it does not. Returns (slope, its standard
    error from the scatter about the fit)."""
    if per_row:
        use = use & inliers(residual_adu, use)
        r, p = _row_demeaned(residual_adu, use), _row_demeaned(pattern_adu, use)
    else:
        r, p = (residual_adu[use] - residual_adu[use].mean()), (pattern_adu[use] - pattern_adu[use].mean())
    weight = (p * p).sum()
    slope = (r * p).sum() / weight
    error = np.sqrt((p * p * (r - slope * p) ** 2).sum()) / weight
    return float(slope), float(error)


def inliers(values: np.ndarray, use: np.ndarray) -> np.ndarray:
    """True where ``values`` lies within ``CLIP_SIGMAS`` robust sigma (1.4826 MAD over ``use``) of the median."""
    chosen = values[use]
    centre = np.median(chosen)
    spread = 1.4826 * np.median(np.abs(chosen - centre))
    return np.abs(values - centre) <= CLIP_SIGMAS * spread


def _row_demeaned(values: np.ndarray, use: np.ndarray) -> np.ndarray:
    data = np.where(use, values, np.nan).astype(np.float64)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows without a usable pixel
        means = np.nanmean(data, axis=1, keepdims=True)
    return np.nan_to_num(data - means)
