"""Agreement with the archive's own products (``ref_os``, ``ref_calib``): robust statistics of
the difference, small enough to travel in the session attributes."""

from __future__ import annotations

import numpy as np

MAD_TO_SIGMA = 1.4826  # robust sigma of a normal distribution per median absolute deviation


def robust_difference(ours: np.ndarray, reference: np.ndarray, good: np.ndarray | None = None) -> dict:
    """Median and robust spread (1.4826 MAD) of ``ours - reference`` over finite (and ``good``)
    pixels, in the arrays' unit, with the number of pixels used."""
    diff = np.asarray(ours, np.float64) - np.asarray(reference, np.float64)
    use = np.isfinite(diff) if good is None else np.isfinite(diff) & np.asarray(good, bool)
    values = diff[use]
    if values.size == 0:
        return {"median": None, "robust_std": None, "n": 0}
    median = float(np.median(values, overwrite_input=True))  # values is ours: reorder it in place
    np.abs(np.subtract(values, median, out=values), out=values)
    return {
        "median": median,
        "robust_std": float(MAD_TO_SIGMA * np.median(values, overwrite_input=True)),
        "n": values.size,
    }
