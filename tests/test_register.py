"""Tests of pipeline.steps.register on synthetic star fields rendered analytically at known offsets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.steps.register import (
    Offset,
    RegisterParams,
    fill_from_neighbours,
    measure_offset,
    opening_2x2,
    smooth_background,
    tukey_window,
)

SHAPE = (512, 512)
SKY_E = 1000.0
READ_NOISE_E = 12.0
FULL_WELL_E = 70_000.0
TOLERANCE_PX = 0.1


def star_field(rng, n=150, shape=SHAPE, margin_px=20, flux_range_e=(2e3, 2e6)):
    """(y, x, flux) of ``n`` stars, uniform over the frame and ``margin_px`` beyond it so that
    stars enter and leave with the shift; fluxes (electrons) follow N(>F) ~ 1/F."""
    lo, hi = flux_range_e
    y = rng.uniform(-margin_px, shape[0] + margin_px, n)
    x = rng.uniform(-margin_px, shape[1] + margin_px, n)
    flux = lo / (1 - rng.uniform(size=n) * (1 - lo / hi))
    return y, x, flux


def render(stars, rng, shift=(0.0, 0.0), fwhm_px=4.0, beta=3.0, shape=SHAPE, full_well_e=None):
    """Moffat stars evaluated at pixel centres around their shifted positions (no resampling),
    plus sky, Poisson and read noise, in electrons; optionally clipped at ``full_well_e``."""
    alpha = fwhm_px / (2 * np.sqrt(2 ** (1 / beta) - 1))
    half = 25
    image = np.full(shape, SKY_E)
    for y, x, flux in zip(stars[0] + shift[0], stars[1] + shift[1], stars[2]):
        y0, x0 = max(int(y) - half, 0), max(int(x) - half, 0)
        y1, x1 = min(int(y) + half + 1, shape[0]), min(int(x) + half + 1, shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        r2 = ((yy - y) ** 2 + (xx - x) ** 2) / alpha**2
        image[y0:y1, x0:x1] += flux * (beta - 1) / (np.pi * alpha**2) * (1 + r2) ** -beta
    image = rng.poisson(image) + rng.normal(0.0, READ_NOISE_E, shape)
    return image if full_well_e is None else np.minimum(image, full_well_e)


def add_cosmic_rays(image, rng, n=200):
    """Single-pixel hits and straight tracks up to 6 px long, 500-30000 e-."""
    image = image.copy()
    for _ in range(n):
        y, x = rng.uniform(0, image.shape[0]), rng.uniform(0, image.shape[1])
        angle, length, amp = rng.uniform(0, np.pi), rng.integers(1, 7), rng.uniform(500, 3e4)
        for t in range(length):
            yy, xx = int(y + t * np.sin(angle)), int(x + t * np.cos(angle))
            if 0 <= yy < image.shape[0] and 0 <= xx < image.shape[1]:
                image[yy, xx] += amp
    return image


def pair(seed, shift, **kwargs):
    """Reference and shifted image of one star field, independent noise."""
    rng = np.random.default_rng(seed)
    stars = star_field(rng)
    return render(stars, rng, **kwargs), render(stars, rng, shift=shift, **kwargs), rng


def assert_recovered(offset: Offset, shift):
    assert offset.ok, offset.reason
    assert offset.reason == ""
    assert abs(offset.dy - shift[0]) < TOLERANCE_PX, (offset, shift)
    assert abs(offset.dx - shift[1]) < TOLERANCE_PX, (offset, shift)


@pytest.mark.parametrize("fwhm_px", [3.0, 5.0])
@pytest.mark.parametrize("shift", [(0.0, 0.0), (0.3, -0.7), (3.25, 5.5), (-4.6, -2.1), (-7.9, 7.6), (8.0, -8.0)])
def test_offset_recovered(shift, fwhm_px):
    reference, image, _ = pair(1, shift, fwhm_px=fwhm_px)
    assert_recovered(measure_offset(reference, image), shift)


def test_sign_convention_follows_content():
    """Stars at (y, x) in the reference and at (y + 3, x - 5) in the image: (dy, dx) = (3, -5)."""
    rng = np.random.default_rng(2)
    stars = star_field(rng)
    reference = render(stars, rng)
    image = render(stars, rng, shift=(3.0, -5.0))
    offset = measure_offset(reference, image)
    assert (round(offset.dy), round(offset.dx)) == (3, -5)
    swapped = measure_offset(image, reference)
    assert (round(swapped.dy), round(swapped.dx)) == (-3, 5)


@pytest.mark.parametrize("fwhm_px", [3.0, 5.0])
def test_cosmic_rays_in_image_only(fwhm_px):
    shift = (2.6, -6.3)
    reference, image, rng = pair(3, shift, fwhm_px=fwhm_px)
    assert_recovered(measure_offset(reference, add_cosmic_rays(image, rng)), shift)


def test_saturated_stars():
    shift = (-5.4, 3.7)
    rng = np.random.default_rng(4)
    y, x, flux = star_field(rng)
    bright = rng.uniform(60, 450, (2, 6))
    stars = np.r_[y, bright[0]], np.r_[x, bright[1]], np.r_[flux, rng.uniform(5e6, 3e7, 6)]
    reference = render(stars, rng, full_well_e=FULL_WELL_E)
    image = render(stars, rng, shift=shift, full_well_e=FULL_WELL_E)
    assert np.count_nonzero(image == FULL_WELL_E) > 50  # several flat tops
    assert_recovered(measure_offset(reference, image), shift)


def test_masked_bad_column_and_nans():
    shift = (6.2, 1.9)
    reference, image, rng = pair(5, shift, fwhm_px=5.0)
    image_mask = np.zeros(SHAPE, dtype=bool)
    image_mask[:, 200] = True
    image[:, 200] = 65_000.0
    image[300:308, 100:108] = np.nan
    image[rng.integers(0, 512, 300), rng.integers(0, 512, 300)] = np.nan
    reference[rng.integers(0, 512, 300), rng.integers(0, 512, 300)] = np.nan
    reference_mask = np.zeros(SHAPE, dtype=bool)
    reference_mask[40:44, :] = True
    assert_recovered(measure_offset(reference, image, reference_mask, image_mask), shift)


def test_bad_pixels_in_bright_star_cores():
    """A bad pixel beside the centre of each of the 15 brightest stars, in the image only: filled
    with the background it would leave a hole that drags the peak by ~0.1 px."""
    shift = (6.2, 1.9)
    rng = np.random.default_rng(8)
    stars = star_field(rng)
    reference = render(stars, rng, fwhm_px=5.0)
    image = render(stars, rng, shift=shift, fwhm_px=5.0)
    brightest = np.argsort(stars[2])[-15:]
    y = np.round(stars[0][brightest] + shift[0]).astype(int) + 1
    x = np.round(stars[1][brightest] + shift[1]).astype(int)
    inside = (y >= 0) & (y < SHAPE[0]) & (x >= 0) & (x < SHAPE[1])
    image[y[inside], x[inside]] = np.nan
    assert_recovered(measure_offset(reference, image), shift)


def test_half_of_the_cutout_masked_in_both_frames():
    """Masked pixels must not count in the noise estimates (they would be half of them)."""
    shift = (2.3, -1.2)
    reference, image, _ = pair(1, shift)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[:256] = True
    reference[:256] = np.nan
    assert_recovered(measure_offset(reference, image, mask, mask), shift)


def test_unmasked_hot_pixels_and_column_in_both_frames():
    """Fixed-pattern defects sit still while the stars move: they must not pull the peak to 0."""
    shift = (4.4, -3.3)
    reference, image, rng = pair(6, shift, fwhm_px=5.0)
    hy, hx = rng.integers(0, 512, (2, 300))
    for frame in (reference, image):
        frame[hy, hx] += 5000.0
        frame[:, 300] += 300.0
    assert_recovered(measure_offset(reference, image), shift)


def test_big_endian_input():
    shift = (1.5, 2.5)
    reference, image, _ = pair(7, shift)
    assert_recovered(measure_offset(reference.astype(">f4"), image.astype(">f4")), shift)


def test_refuses_pure_noise():
    rng = np.random.default_rng(8)
    empty = (np.empty(0), np.empty(0), np.empty(0))
    offset = measure_offset(render(empty, rng), render(empty, rng))
    assert not offset.ok
    assert offset.reason.startswith("too few sources (0 < 5)")


def test_refuses_fully_masked_image():
    reference, image, _ = pair(9, (1.0, 1.0))
    offset = measure_offset(reference, image, image_mask=np.ones(SHAPE, dtype=bool))
    assert not offset.ok
    assert offset.reason == "too few sources (0 < 5)"


def test_refuses_shift_beyond_max_but_reports_it():
    shift = (30.3, -25.6)
    reference, image, _ = pair(10, shift)
    offset = measure_offset(reference, image)
    assert not offset.ok
    assert offset.reason.startswith("shift 39.")
    assert offset.reason.endswith(" px exceeds max_shift_px 16")
    assert abs(offset.dy - shift[0]) < TOLERANCE_PX and abs(offset.dx - shift[1]) < TOLERANCE_PX
    assert_recovered(measure_offset(reference, image, params=RegisterParams(max_shift_px=50)), shift)


@pytest.mark.parametrize("seed", range(11, 16))
def test_refuses_different_field(seed):
    rng = np.random.default_rng(seed)
    offset = measure_offset(render(star_field(rng), rng), render(star_field(rng), rng))
    assert not offset.ok
    assert offset.reason.startswith("correlation peak too weak (")
    assert offset.reason.endswith(" < 3.0)")
    assert offset.quality < 3.0


def test_refuses_different_field_with_a_bright_target_in_each():
    """Sparse fields, each with a saturated target near the centre: the two targets correlate
    into a clean peak; the source match catches it."""
    rng = np.random.default_rng(16)

    def field():
        y, x, flux = star_field(rng, n=40)
        return np.r_[y, 256 + rng.normal(0, 3)], np.r_[x, 256 + rng.normal(0, 3)], np.r_[flux, 3e6]

    reference = render(field(), rng, full_well_e=FULL_WELL_E)
    image = render(field(), rng, full_well_e=FULL_WELL_E)
    assert not measure_offset(reference, image).ok
    offset = measure_offset(reference, image, params=RegisterParams(min_peak_ratio=1.0))
    assert not offset.ok
    assert offset.reason.startswith("sources do not match at the offset (")


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="one shape"):
        measure_offset(np.zeros((64, 64)), np.zeros((64, 65)))


def test_opening_2x2_matches_scipy_and_removes_thin_features():
    image = np.random.default_rng(17).normal(size=(40, 50))
    np.testing.assert_array_equal(opening_2x2(image)[:-1, :-1], ndimage.grey_opening(image, size=(2, 2))[:-1, :-1])
    spikes = np.zeros((20, 20))
    spikes[5, 5] = 9.0  # hot pixel
    spikes[:, 12] = 9.0  # bad column
    spikes[14:17, 2:5] = 4.0  # 3 x 3 source survives
    expected = np.zeros((20, 20))
    expected[14:17, 2:5] = 4.0
    np.testing.assert_array_equal(opening_2x2(spikes), expected)


def test_fill_from_neighbours():
    """A masked column through a ramp is interpolated exactly, a masked disk (a saturated core)
    inside a plateau takes the plateau's value, and what lies beyond 16 px of any good pixel
    becomes background (0)."""
    y, x = np.mgrid[0:80, 0:120]
    image = 0.5 * x + 0.25 * y
    bad = np.zeros(image.shape, dtype=bool)
    bad[:, 30] = True
    image[np.hypot(y - 40, x - 60) <= 12] = 100.0
    core = np.hypot(y - 40, x - 60) <= 8
    bad |= core
    bad[:, 84:] = True  # 36 px wide, reaching the right edge
    filled = fill_from_neighbours(np.where(bad, np.nan, image), bad)
    np.testing.assert_allclose(filled[2:-2, 30], image[2:-2, 30], atol=1e-9)
    np.testing.assert_allclose(filled[core], 100.0)
    assert np.all(filled[:, 101:] == 0.0) and np.all(filled[:, 84:100] != 0.0)


def test_smooth_background_reproduces_a_plane_between_block_centres():
    y, x = np.mgrid[0:512, 0:480]
    plane = 1000.0 + 0.3 * y - 0.2 * x
    background = smooth_background(plane, 32)
    np.testing.assert_allclose(background[16:-16, 16:-16], plane[16:-16, 16:-16], atol=1e-9)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 255, 256])
@pytest.mark.parametrize("alpha", [0.1, 0.25, 0.5, 1.0])
def test_tukey_window_is_scipys(n, alpha):
    from scipy.signal.windows import tukey

    np.testing.assert_allclose(tukey_window(n, alpha), tukey(n, alpha), rtol=0, atol=1e-12)
