"""Tests of pipeline.steps.sources on synthetic star fields with known positions."""

from __future__ import annotations

import numpy as np
import pytest
import sep
from scipy import ndimage

from pipeline.steps.sources import BACKGROUND, SOURCE, SourceParams, source_mask

SHAPE = (512, 512)
SKY_E = 1000.0
READ_NOISE_E = 12.0
NOISE_E = np.sqrt(SKY_E + READ_NOISE_E**2)  # per-pixel rms on the sky
FWHM_PX = 4.0
BETA = 3.0
ALPHA_PX = FWHM_PX / (2 * np.sqrt(2 ** (1 / BETA) - 1))
PEAK_PER_FLUX = (BETA - 1) / (np.pi * ALPHA_PX**2)  # Moffat peak (e- per pixel) per e- of flux


def stars_model(y, x, flux, shape=SHAPE):
    """Noiseless star light (electrons per pixel): Moffat profiles at pixel centres."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    model = np.zeros(shape)
    for yi, xi, fi in zip(y, x, flux):
        sl = np.s_[max(int(yi) - 40, 0) : int(yi) + 41, max(int(xi) - 40, 0) : int(xi) + 41]
        r2 = ((yy[sl] - yi) ** 2 + (xx[sl] - xi) ** 2) / ALPHA_PX**2
        model[sl] += fi * PEAK_PER_FLUX * (1 + r2) ** -BETA
    return model


def observe(model, rng):
    """Sky, Poisson and read noise added to ``model`` (electrons)."""
    return rng.poisson(model + SKY_E) + rng.normal(0.0, READ_NOISE_E, model.shape)


@pytest.fixture(scope="module")
def field():
    """150 stars, peaks from 4 to ~2400 sky rms, away from the edges; (image, model, y, x, peak)."""
    rng = np.random.default_rng(0)
    n = 150
    y, x = rng.uniform(10, SHAPE[0] - 10, (2, n))
    flux = 3e3 / (1 - rng.uniform(size=n) * (1 - 3e3 / 2e6))  # N(>F) ~ 1/F, e-
    model = stars_model(y, x, flux)
    return observe(model, rng), model, y, x, flux * PEAK_PER_FLUX / NOISE_E


def test_bright_stars_are_sources(field):
    image, _, y, x, peak_sigma = field
    result = source_mask(image)
    assert result.dtype == np.uint8 and result.shape == SHAPE
    assert set(np.unique(result)) <= {SOURCE, BACKGROUND}
    bright = peak_sigma > 10
    assert bright.sum() > 30
    cy, cx = np.round(y[bright]).astype(int), np.round(x[bright]).astype(int)
    assert np.all(result[cy, cx] == SOURCE)
    for dy, dx in [(-1, 0), (1, 0), (0, -1), (0, 1)]:  # the cores, not just the centre pixels
        assert np.all(result[cy + dy, cx + dx] == SOURCE)


def test_background_far_from_stars_is_background(field):
    image, model, *_ = field
    result = source_mask(image)
    far = model < 0.3 * NOISE_E
    assert far.mean() > 0.8
    assert (result[far] == BACKGROUND).mean() > 0.99
    assert (result == SOURCE).mean() > 0.005  # not trivially all background


def test_dilation_grows_footprints_by_a_disk(field):
    image = field[0]
    bare = source_mask(image, params=SourceParams(dilate_px=0)) == SOURCE
    grown = source_mask(image, params=SourceParams(dilate_px=3)) == SOURCE
    assert grown.sum() > 1.5 * bare.sum()
    disk = np.hypot(*np.mgrid[-3:4, -3:4]) <= 3
    np.testing.assert_array_equal(grown, ndimage.binary_dilation(bare, structure=disk))


def test_higher_threshold_gives_smaller_footprints(field):
    image = field[0]
    low = source_mask(image, params=SourceParams(threshold_sigma=3.0)) == SOURCE
    high = source_mask(image, params=SourceParams(threshold_sigma=10.0)) == SOURCE
    assert high.sum() < 0.8 * low.sum()
    assert not np.any(high & ~low)


def test_pure_noise_is_background():
    rng = np.random.default_rng(1)
    result = source_mask(observe(np.zeros(SHAPE), rng))
    assert (result == BACKGROUND).mean() > 0.999


def test_variance_sets_the_threshold():
    """One star of 8 sigma peak, one of 200: found with the true variance; with a variance 100
    times too large (threshold effectively x10) only the bright one remains."""
    rng = np.random.default_rng(2)
    y, x = np.array([128.3, 384.6]), np.array([200.2, 300.7])
    peaks_sigma = np.array([8.0, 200.0])
    model = stars_model(y, x, peaks_sigma * NOISE_E / PEAK_PER_FLUX)
    image = observe(model, rng)
    variance = model + SKY_E + READ_NOISE_E**2
    cy, cx = np.round(y).astype(int), np.round(x).astype(int)
    assert list(source_mask(image, variance=variance)[cy, cx]) == [SOURCE, SOURCE]
    assert list(source_mask(image, variance=100 * variance)[cy, cx]) == [BACKGROUND, SOURCE]


def test_nan_and_masked_pixels(field):
    image, model, y, x, peak_sigma = field
    image = image.copy()
    image[200:210, :] = np.nan
    image[tuple(np.random.default_rng(3).integers(0, 512, (2, 500)))] = np.inf
    mask = np.zeros(SHAPE, dtype=bool)
    mask[:, 50:53] = True
    image[:, 50:53] = 1e6  # a masked hot column must not become a source
    result = source_mask(image, mask=mask)
    assert result.dtype == np.uint8 and result.shape == SHAPE
    far = model < 0.3 * NOISE_E
    assert (result[200:210][far[200:210]] == BACKGROUND).mean() > 0.99
    assert (result[:, 50:53][far[:, 50:53]] == BACKGROUND).mean() > 0.95
    bright = (peak_sigma > 10) & (np.abs(y - 205) > 10) & (np.abs(x - 51) > 5)
    cy, cx = np.round(y[bright]).astype(int), np.round(x[bright]).astype(int)
    assert np.all(result[cy, cx] == SOURCE)


def test_masked_saturated_core_is_source():
    """A saturated star whose core (radius 6 px) is masked: the footprint is a ring around the
    hole, which is filled, so the core counts as source."""
    rng = np.random.default_rng(4)
    model = stars_model([256.0], [256.0], [3e7])
    image = np.minimum(observe(model, rng), 70_000.0)
    core = np.hypot(*np.mgrid[-256:256, -256:256]) <= 6
    image[core] = np.nan
    result = source_mask(image, mask=core)
    assert np.all(result[core] == SOURCE)


def test_masked_pixels_are_background_unless_a_footprint_covers_them():
    """A masked band crossing a bright star's wings splits its footprint without being part of
    it; only the dilation reaches onto it."""
    rng = np.random.default_rng(6)
    image = observe(stars_model([256.0], [256.0], [1000 * NOISE_E / PEAK_PER_FLUX]), rng)
    band = np.zeros(SHAPE, dtype=bool)
    band[:, 262:266] = True
    bare = source_mask(image, mask=band, params=SourceParams(dilate_px=0))
    assert bare[256, 261] == SOURCE and np.any(bare[:, 266:] == SOURCE)  # wings on both sides
    assert np.all(bare[band] == BACKGROUND)
    grown = source_mask(image, mask=band, params=SourceParams(dilate_px=2))
    assert np.all(grown[256, 262:264] == SOURCE)


def test_pixels_beside_a_mask_are_not_suppressed():
    """Masked pixels count as no signal with infinite noise in sep's 3 x 3 filter, not as a hole
    0 - background deep: the wing of a 10 sigma star right beside a masked band stays source."""
    rng = np.random.default_rng(7)
    image = observe(stars_model([256.0], [250.0], [10 * NOISE_E / PEAK_PER_FLUX]), rng)
    band = np.zeros(SHAPE, dtype=bool)
    band[:, 253:260] = True
    result = source_mask(image, mask=band, params=SourceParams(dilate_px=0))
    assert np.all(result[255:258, 252] == SOURCE)


def test_invalid_variance_is_masked(field):
    image, model, *_ = field
    variance = np.full(SHAPE, NOISE_E**2)
    variance[300:310, :] = 0.0
    variance[320:330, :] = np.nan
    result = source_mask(image, variance=variance)
    far = model < 0.3 * NOISE_E
    assert (result[300:330][far[300:330]] == BACKGROUND).mean() > 0.99


def test_fully_masked_frame_is_background():
    result = source_mask(np.full(SHAPE, np.nan))
    assert result.dtype == np.uint8 and np.all(result == BACKGROUND)


def test_big_endian_input_gives_the_same_mask(field):
    image = field[0]
    np.testing.assert_array_equal(source_mask(image.astype(">f4")), source_mask(image))


@pytest.fixture
def default_pixstack():
    previous = sep.get_extract_pixstack()
    sep.set_extract_pixstack(300_000)
    yield
    sep.set_extract_pixstack(previous)


def test_more_open_object_pixels_than_sep_default(default_pixstack):
    """256 columns x 1024 rows of objects open at once overflow sep's default buffer."""
    rng = np.random.default_rng(5)
    image = rng.normal(SKY_E, NOISE_E, (1024, 1024))
    image[:, ::4] += 3000.0
    result = source_mask(image, variance=np.full(image.shape, NOISE_E**2))
    assert np.all(result[:, ::4] == SOURCE)
