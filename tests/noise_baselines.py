"""The two baseline noise models the realism test compares skyprep's model with (ADU in, ADU out).

``authors_model``: the released ``gen_synth.py`` of *Denoising the Deep Sky* as published (BRIEF
section 7), with its NameError fixed and given the session's own masters and measured read and
row variance (its pooled, test-contaminated statistics are not reproduced: this is the most
favourable reading): flat times ``GAIN * mean``, Poisson; dark ``EXPTIME * dark`` with no shot
noise; bias plus row banding (white noise per row smoothed by a Gaussian of 16 rows) plus white
Gaussian noise; back to ADU; 0.01% of the pixels replaced by uniform 5000-10000 ADU; no
quantisation, no base-noise correction.

``gaussian_poisson_model``: ``(Poisson(GAIN * mean) + N(0, RDNOISE)) / GAIN``: no flat, dark,
bias, row noise or outliers.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

AUTHORS_OUTLIER_FRACTION = 1e-4
AUTHORS_ROW_SMOOTHING_ROWS = 16.0


def authors_model(mean_adu, flat, dark_e_per_s, bias_e, gain, exptime_s, white_e, row_e, rng) -> np.ndarray:
    electrons = rng.poisson(np.clip(np.nan_to_num(gain * mean_adu * flat), 0, None)).astype(np.float64)
    electrons += exptime_s * dark_e_per_s
    rows = ndimage.gaussian_filter1d(rng.standard_normal(mean_adu.shape[0]), AUTHORS_ROW_SMOOTHING_ROWS)
    rows *= row_e / rows.std()
    electrons += bias_e + rows[:, None] + white_e * rng.standard_normal(mean_adu.shape)
    adu = electrons / gain
    outliers = rng.random(adu.shape) < AUTHORS_OUTLIER_FRACTION
    adu[outliers] = rng.uniform(5000.0, 10000.0, int(outliers.sum()))
    return adu.astype(np.float32)


def gaussian_poisson_model(mean_adu, gain, rdnoise_e, rng) -> np.ndarray:
    electrons = rng.poisson(np.clip(np.nan_to_num(gain * mean_adu), 0, None)) + rdnoise_e * rng.standard_normal(
        mean_adu.shape
    )
    return (electrons / gain).astype(np.float32)
