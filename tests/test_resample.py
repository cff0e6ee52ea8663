"""Tests of pipeline.steps.resample against scipy.ndimage, Monte Carlo noise and analytic truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.steps.masks import MASK_DTYPE, Flag
from pipeline.steps.resample import bilinear_weights, bpm_flags, shift_rows


def _shift_whole(frame, dy, dx, flags=None, variance=None):
    flags = np.zeros(frame.shape, MASK_DTYPE) if flags is None else flags
    return shift_rows(frame, flags, variance, 0, 0, frame.shape[0], dy, dx)


def _stars(shape, shift, rng_seed=3, n=40, sigma_px=1.6):
    """Noiseless Gaussian stars on a flat sky evaluated at pixel centres; content moved by ``shift``."""
    rng = np.random.default_rng(rng_seed)
    ys, xs = rng.uniform(4, shape[0] - 4, n) + shift[0], rng.uniform(4, shape[1] - 4, n) + shift[1]
    flux = rng.uniform(1e3, 1e5, n)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 100.0)
    for y, x, f in zip(ys, xs, flux):
        image += f / (2 * np.pi * sigma_px**2) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma_px**2))
    return image


@pytest.mark.parametrize("dy, dx", [(0.3, -1.7), (-2.5, 0.25), (1.0, 2.0), (-3.9, -0.01)])
def test_values_match_scipy_linear_shift_where_covered(dy, dx):
    frame = np.random.default_rng(0).normal(100.0, 10.0, (40, 50))
    out, mask, _ = _shift_whole(frame, dy, dx)
    reference = ndimage.shift(frame, (-dy, -dx), order=1, mode="constant", cval=np.nan)
    covered = (mask & Flag.NO_DATA) == 0
    assert covered.sum() >= (40 - 5) * (50 - 5)
    np.testing.assert_allclose(out[covered], reference[covered], rtol=1e-6)
    # every pixel scipy fills from inside the frame is covered, the others are NaN, not made up
    assert np.all(np.isnan(out[~covered]))
    assert np.all(covered == np.isfinite(ndimage.shift(frame, (-dy, -dx), order=1, cval=np.nan, prefilter=False)))


def test_integer_offset_copies_pixels_unchanged():
    frame = np.random.default_rng(1).normal(0, 1, (30, 30)).astype(np.float32)
    out, mask, _ = _shift_whole(frame, 2, -3)
    np.testing.assert_array_equal(out[:-2, 3:], frame[2:, :-3])
    assert np.all(mask[-2:] & Flag.NO_DATA) and np.all(mask[:, :3] & Flag.NO_DATA)
    assert not np.any(mask[:-2, 3:])


def test_strip_of_a_window_equals_the_whole_frame_result():
    frame = np.random.default_rng(2).normal(0, 1, (64, 20))
    whole, whole_mask, _ = _shift_whole(frame, 1.4, -0.6)
    window_y0 = 20 - 4
    strip, strip_mask, _ = shift_rows(
        frame[window_y0 : 44 + 4], np.zeros((32, 20), MASK_DTYPE), None, window_y0, 20, 44, 1.4, -0.6
    )
    np.testing.assert_array_equal(strip, whole[20:44])
    np.testing.assert_array_equal(strip_mask, whole_mask[20:44])


def test_variance_propagation_matches_monte_carlo():
    """Independent noise of known per-pixel variance, shifted by scipy: the empirical variance
    of the shifted realisations is the propagated variance."""
    rng = np.random.default_rng(4)
    shape, dy, dx = (12, 14), 0.35, -1.8
    variance = rng.uniform(1.0, 9.0, shape)
    _, mask, propagated = _shift_whole(np.zeros(shape), dy, dx, variance=variance)
    draws = rng.standard_normal((4000, *shape)) * np.sqrt(variance)
    shifted = np.stack([ndimage.shift(d, (-dy, -dx), order=1, mode="nearest") for d in draws])
    empirical = shifted.var(axis=0)
    covered = (mask & Flag.NO_DATA) == 0
    # 4000 draws: relative standard error of a variance ~ sqrt(2 / 4000) = 2.2 %
    np.testing.assert_allclose(propagated[covered], empirical[covered], rtol=0.1)
    assert np.all(np.isnan(propagated[~covered]))
    assert propagated[covered].mean() < variance.mean()  # interpolation averages noise down


def test_mask_spreads_to_every_pixel_a_flagged_pixel_contributes_to():
    frame = np.ones((10, 10))
    flags = np.zeros((10, 10), MASK_DTYPE)
    flags[5, 5] = Flag.BAD_PIXEL
    _, mask, _ = _shift_whole(frame, 0.5, 0.25, flags)
    # out[y, x] uses frame[y + 0 or 1, x + 0 or 1]: (5, 5) feeds (4..5, 4..5)
    hit = np.argwhere(mask & Flag.BAD_PIXEL)
    assert sorted(map(tuple, hit)) == [(4, 4), (4, 5), (5, 4), (5, 5)]
    _, mask, _ = _shift_whole(frame, 0.5, 0.0, flags)  # no x weight on the neighbour column
    assert sorted(map(tuple, np.argwhere(mask & Flag.BAD_PIXEL))) == [(4, 5), (5, 5)]


def test_non_finite_input_gives_no_data_not_a_value():
    frame = np.ones((8, 8))
    frame[3, 3] = np.nan
    out, mask, _ = _shift_whole(frame, 0.5, 0.5)
    bad = np.argwhere(mask & Flag.NO_DATA)
    assert {(2, 2), (2, 3), (3, 2), (3, 3)} <= set(map(tuple, bad))
    assert np.all(np.isnan(out[2:4, 2:4]))


def test_bilinear_weights_sum_to_one_and_drop_zeros():
    for dy, dx in [(0.2, 0.7), (-1.5, 3.0), (2.0, -4.0)]:
        weights = bilinear_weights(dy, dx)
        assert abs(sum(w for *_, w in weights) - 1) < 1e-12
        assert all(w > 0 for *_, w in weights)
    assert bilinear_weights(2.0, -4.0) == [(2, -4, 1.0)]


def test_bpm_flags_map_observatory_bits():
    assert list(bpm_flags(np.array([0, 1, 2, 3, 4], np.uint8))) == [
        0,
        Flag.BAD_PIXEL,
        Flag.SATURATED,
        Flag.BAD_PIXEL | Flag.SATURATED,
        0,
    ]


def test_subpixel_resampling_matches_the_truth_better_than_integer_shift():
    shape, drift = (96, 96), (1.4, -2.35)
    reference = _stars(shape, (0.0, 0.0))
    frame = _stars(shape, drift)  # content of the reference at (y, x) is at (y + dy, x + dx)
    resampled, mask_r, _ = _shift_whole(frame, *drift)
    integer, mask_i, _ = _shift_whole(frame, round(drift[0]), round(drift[1]))
    both = ((mask_r | mask_i) & Flag.NO_DATA) == 0
    err_resampled = np.abs(resampled - reference)[both].mean()
    err_integer = np.abs(integer - reference)[both].mean()
    assert err_resampled < 0.5 * err_integer
