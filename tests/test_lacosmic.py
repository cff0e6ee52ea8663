"""The numba L.A.Cosmic must flag exactly the pixels astroscrappy 1.3.0 flags with the pipeline's settings."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # astroscrappy's C Laplacian edge loop races when threaded

import astroscrappy  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from astroscrappy.utils import dilate3, laplaceconvolve, median, rebin, sepmedfilt5, sepmedfilt7, sepmedfilt9, subsample  # noqa: E402, E501

from pipeline.steps.lacosmic import _dilate3, _lower_median, _sepmedfilt, _snr, detect_cosmics  # noqa: E402

GAIN, READNOISE = 1.7, 5.0


def _reference(data, excluded, variance, sigclip=4.5, sigfrac=0.3, objlim=5.0, niter=2):
    return astroscrappy.detect_cosmics(
        data,
        inmask=excluded,
        invar=variance,
        sigclip=sigclip,
        sigfrac=sigfrac,
        objlim=objlim,
        gain=GAIN,
        readnoise=READNOISE,
        satlevel=np.inf,
        niter=niter,
        sepmed=True,
        cleantype="meanmask",
        fsmode="median",
    )[0]


def _ours(data, excluded, variance, sigclip=4.5, sigfrac=0.3, objlim=5.0, niter=2):
    return detect_cosmics(data, excluded, variance, GAIN, sigclip, sigfrac, objlim, niter)


def _frame(ny, nx, seed, n_cr, n_stars):
    """Sky ~1000 ADU with Poisson and read noise, Gaussian stars (some bright), cosmic-ray hits and tracks
    (many touching the edges), excluded pixels and a column; returns float32 data, excluded, variance."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:ny, :nx]
    scene = np.full((ny, nx), 1000.0) + 0.05 * xx
    for _ in range(n_stars):
        y, x, sigma = rng.uniform(0, ny), rng.uniform(0, nx), rng.uniform(0.8, 2.5)
        scene += 10 ** rng.uniform(2, 5.3) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
    data = rng.poisson(scene) + rng.normal(0, READNOISE / GAIN, scene.shape)
    for k in range(n_cr):
        edge = k % 3 == 0  # a third start 3 to 6 pixels from an edge, where the median borders matter
        y = rng.choice([rng.integers(3, 7), ny - rng.integers(4, 8)]) if edge and k % 2 else rng.integers(0, ny)
        x = rng.choice([rng.integers(3, 7), nx - rng.integers(4, 8)]) if edge and not k % 2 else rng.integers(0, nx)
        angle, length, width = rng.uniform(0, np.pi), rng.integers(1, 15), rng.integers(1, 3)
        for t in range(length):
            yi, xi = int(y + t * np.sin(angle)), int(x + t * np.cos(angle))
            data[max(yi, 0) : yi + width, max(xi, 0) : xi + width] += rng.uniform(100, 8000)
    excluded = np.zeros((ny, nx), bool)
    excluded[rng.integers(0, ny, ny * nx // 500), rng.integers(0, nx, ny * nx // 500)] = True
    excluded[:, rng.integers(0, nx)] = True
    variance = (scene + (READNOISE / GAIN) ** 2).astype(np.float32)
    return data.astype(np.float32), excluded, variance


@pytest.fixture(scope="module")
def realistic():
    return _frame(512, 480, seed=1, n_cr=300, n_stars=40)


def test_realistic_frame_matches_astroscrappy(realistic):
    reference = _reference(*realistic)
    np.testing.assert_array_equal(_ours(*realistic), reference)
    border = np.ones(reference.shape, bool)
    border[6:-6, 6:-6] = False
    assert reference.sum() > 1000 and (reference & border).sum() > 20  # the edge rules are exercised


@pytest.mark.parametrize("niter", [1, 2, 4])
@pytest.mark.parametrize(("sigclip", "sigfrac", "objlim"), [(4.5, 0.3, 5.0), (3.0, 0.5, 1.0), (6.0, 0.1, 10.0)])
def test_parameters_match_astroscrappy(niter, sigclip, sigfrac, objlim):
    frame = _frame(96, 131, seed=niter, n_cr=40, n_stars=6)
    reference = _reference(*frame, sigclip, sigfrac, objlim, niter)
    assert reference.any()
    np.testing.assert_array_equal(_ours(*frame, sigclip, sigfrac, objlim, niter), reference)


@pytest.mark.parametrize("shape", [(37, 53), (53, 37), (9, 9), (9, 20), (13, 10), (10, 64)])
def test_small_and_odd_frames_match_astroscrappy(shape):
    for seed in range(3):
        frame = _frame(*shape, seed=seed, n_cr=max(2, shape[0] * shape[1] // 150), n_stars=1)
        for niter in (1, 3):
            np.testing.assert_array_equal(_ours(*frame, niter=niter), _reference(*frame, niter=niter))


def test_all_excluded_and_clean_frames():
    data, excluded, variance = _frame(40, 50, seed=5, n_cr=20, n_stars=2)
    everything = np.ones_like(excluded)
    assert not _ours(data, everything, variance).any()
    assert not _reference(data, everything, variance).any()
    sky, _, _ = _frame(40, 50, seed=6, n_cr=0, n_stars=0)
    nothing = np.zeros_like(excluded)
    np.testing.assert_array_equal(_ours(sky, nothing, variance), _reference(sky, nothing, variance))


def test_hit_without_usable_neighbours_matches_astroscrappy():
    """A hit whose whole 5 x 5 box is excluded is cleaned with the frame's median (not visible in the mask)."""
    data, excluded, variance = _frame(60, 70, seed=7, n_cr=30, n_stars=2)
    excluded[:] = False
    data[30, 35] += 5000.0
    excluded[28:33, 33:38] = True
    excluded[29:32, 34:37] = False  # a ring 2 px out; grown by one pixel it covers all but the hit
    reference = _reference(data, excluded, variance, niter=3)
    assert reference[30, 35]
    np.testing.assert_array_equal(_ours(data, excluded, variance, niter=3), reference)


@pytest.mark.parametrize("shape", [(64, 77), (9, 9), (12, 10)])
def test_stages_match_astroscrappy(shape):
    """Separable medians and dilation value for value; the Laplacian S to float32 rounding.

    astroscrappy's compiled C reassociates the Laplacian's sums (differently at the borders), so
    S can differ from it by a few float32 ulps (here at most 16, 2e-6 relative): a mask could only
    differ for a pixel within that much of a threshold (never seen: the mask tests require identity).
    """
    data, excluded, variance = _frame(*shape, seed=3, n_cr=10, n_stars=1)
    image = data * np.float32(GAIN)
    noise = np.sqrt(variance)
    conved = laplaceconvolve(subsample(image))
    conved[conved < 0] = 0.0
    s = np.empty_like(image)
    _snr(image, noise, s)
    reference = rebin(conved) / (2.0 * noise)
    np.testing.assert_array_max_ulp(s, reference, maxulp=16)
    assert (s == reference).mean() > 0.6  # mostly bit-identical, not merely close
    for hw, filt in ((2, sepmedfilt5), (3, sepmedfilt7), (4, sepmedfilt9)):
        out = np.empty_like(image)
        _sepmedfilt(image, out, np.empty_like(image), hw)
        np.testing.assert_array_equal(out, filt(image))
    grown = np.empty_like(excluded)
    _dilate3(excluded, grown)
    np.testing.assert_array_equal(grown, dilate3(excluded))


@pytest.mark.parametrize("size", [1, 2, 7, 1000, 1001])
def test_background_median_matches_astroscrappy(size):
    values = np.random.default_rng(size).normal(1000, 30, size).astype(np.float32)
    assert _lower_median(values) == median(values, size)
