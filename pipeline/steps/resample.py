"""Moving an exposure onto the session's pixel grid, with its variance and mask.

Convention (``register.Offset``): content at session position ``(y, x)`` is found in the frame
at ``(y + dy, x + dx)``, so ``out[y, x] = frame(y + dy, x + dx)``.

Interpolation is bilinear (identical to ``scipy.ndimage.shift(frame, (-dy, -dx), order=1)``
wherever every contributing pixel lies inside the frame): with ``fy = floor(dy)``,
``ty = dy - fy`` (likewise x), ``out[y, x] = sum_ij w_ij frame[y + fy + i, x + fx + j]`` over
``i, j in {0, 1}`` with ``w_ij = (1 - ty or ty) (1 - tx or tx)``. Integer offsets give one
weight of 1: the frame's pixels are copied unchanged (the default, no resampling). Input pixels
are independent, so the variance is ``sum_ij w_ij**2 var[...]``; the mask is the OR of the
flags of every pixel with a non-zero weight. A pixel that needs a frame pixel outside the
frame (or a non-finite one) gets NaN value and variance and the ``NO_DATA`` flag: no value is
ever made up.
"""

from __future__ import annotations

import math

import numpy as np

from .masks import MASK_DTYPE, Flag


def bpm_flags(bpm: np.ndarray) -> np.ndarray:
    """skyprep flags (uint16) of an observatory (BANZAI) BPM: bit 1 bad pixel, bit 2 saturated
    (skyprep's low bits keep BANZAI's values, so the bits carry over; others are dropped)."""
    flags = np.asarray(bpm).astype(MASK_DTYPE)
    flags &= MASK_DTYPE(Flag.BAD_PIXEL | Flag.SATURATED)
    return flags


def bilinear_weights(dy: float, dx: float) -> list[tuple[int, int, float]]:
    """``(oy, ox, weight)`` of the (up to four) frame pixels ``(y + oy, x + ox)`` that make
    session pixel ``(y, x)`` for the offset ``(dy, dx)`` pixels; zero weights are left out."""
    fy, fx = math.floor(dy), math.floor(dx)
    ty, tx = dy - fy, dx - fx
    terms = [(fy + i, fx + j, (ty if i else 1 - ty) * (tx if j else 1 - tx)) for i in (0, 1) for j in (0, 1)]
    return [(oy, ox, w) for oy, ox, w in terms if w > 0]


def shift_rows(
    window: np.ndarray,
    flags: np.ndarray,
    variance: np.ndarray | None,
    window_y0: int,
    y0: int,
    y1: int,
    dy: float,
    dx: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Session rows ``[y0, y1)`` of a frame moved by the offset ``(dy, dx)`` pixels (module
    docstring): ``(values float32, mask uint16, variance float32 or None)``.

    ``window`` holds frame rows ``[window_y0, window_y0 + len(window))`` (full width),
    ``flags`` its uint16 mask and ``variance`` its variance (same unit squared) or ``None``.
    """
    rows, nx = y1 - y0, window.shape[1]
    terms = bilinear_weights(dy, dx)
    exact = len(terms) == 1  # an integer offset copies pixels: no float64 accumulation needed
    total = np.zeros((rows, nx), np.float32 if exact else np.float64)
    total_var = None if variance is None else np.zeros_like(total)
    mask = np.zeros((rows, nx), MASK_DTYPE)
    covered = np.ones((rows, nx), bool)
    for oy, ox, weight in terms:
        src_y0 = y0 + oy - window_y0  # window row of session row y0
        ys = slice(max(src_y0, 0), min(src_y0 + rows, window.shape[0]))
        xs = slice(max(ox, 0), min(nx + ox, nx))
        region = (slice(ys.start - src_y0, ys.stop - src_y0), slice(xs.start - ox, xs.stop - ox))
        inside = np.zeros((rows, nx), bool)
        if ys.start < ys.stop and xs.start < xs.stop:
            inside[region] = True
            if exact:
                total[region] = window[ys, xs]
            else:
                total[region] += weight * window[ys, xs]
            mask[region] |= flags[ys, xs]
            if variance is not None:
                total_var[region] += weight * weight * variance[ys, xs]
        covered &= inside
    covered &= np.isfinite(total)
    mask[~covered] |= MASK_DTYPE(Flag.NO_DATA)
    total[~covered] = np.nan
    if variance is not None:
        total_var[~covered] = np.nan
        total_var = total_var.astype(np.float32, copy=False)
    return total.astype(np.float32, copy=False), mask, total_var
