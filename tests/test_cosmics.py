"""Cosmic-ray flags in the calibrated frame, checked against the synthetic archive's truth."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from pipeline.config import ChunkParams, Config
from pipeline.graph import build_session
from pipeline.io.discover import find_sessions
from pipeline.steps.cosmics import CosmicParams, cosmic_rays
from pipeline.steps.masks import Flag


def _calibrated(archive, config, pattern=None):
    """``{key: (calib and mask, truth)}`` of every session matching ``pattern`` (at least one)."""
    sessions, problems = find_sessions(archive, pattern)
    assert sessions and not problems, f"{archive} [{pattern}]: no usable session ({problems})"
    out = {}
    for session in sessions:
        ds = build_session(session, config).dataset[["calib", "mask"]].compute(scheduler="sync")
        truth = np.load(archive / session.key / "truth" / "truth.npz")
        out[session.key] = (ds, truth)
    return out


@pytest.fixture(scope="module")
def calibrated(archive):
    return _calibrated(archive, Config())


def test_cosmic_rays_are_found_with_few_false_positives(calibrated):
    hits = misses = false = on_stars = pixels = 0
    for ds, truth in calibrated.values():
        flagged = (ds["mask"].values & Flag.COSMIC_RAY) != 0
        other = (ds["mask"].values & ~np.uint16(Flag.COSMIC_RAY)) != 0
        cr = truth["cosmic_rays"] & ~other
        hits, misses = hits + (flagged & cr).sum(), misses + (~flagged & cr).sum()
        wrong = flagged & ~ndimage.binary_dilation(truth["cosmic_rays"], iterations=1)
        star = truth["scene_e"] > 2 * np.median(truth["scene_e"])
        false, on_stars, pixels = false + wrong.sum(), on_stars + (wrong & star).sum(), pixels + flagged.size
    assert hits + misses > 20
    assert hits / (hits + misses) > 0.9
    assert false / pixels < 2e-4
    assert on_stars <= 2


def test_calib_is_not_repaired(calibrated, archive):
    config = dataclasses.replace(Config(), cosmics=CosmicParams(enabled=False))
    plain = _calibrated(archive, config)
    for key, (ds, _truth) in calibrated.items():
        np.testing.assert_array_equal(ds["calib"].values, plain[key][0]["calib"].values)
        assert not np.any(plain[key][0]["mask"].values & Flag.COSMIC_RAY)
        assert np.any(ds["mask"].values & Flag.COSMIC_RAY)


def test_strips_with_overlap_equal_the_whole_frame(archive, calibrated):
    config = dataclasses.replace(Config(), chunks=ChunkParams(strip_rows=48, store_chunk_px=48))
    for key, (ds, _) in _calibrated(archive, config, "muscat4_r/*").items():
        whole = calibrated[key][0]["mask"].values
        np.testing.assert_array_equal(ds["mask"].values, whole, err_msg=key)


def test_isolated_hit_on_flat_sky_is_flagged_and_saturated_star_is_not():
    rng = np.random.default_rng(3)
    gain, rdnoise = 2.0, 10.0
    sky_adu = 200.0
    yy, xx = np.mgrid[:96, :96]
    star = 60000.0 * np.exp(-((yy - 60) ** 2 + (xx - 60) ** 2) / (2 * 2.0**2))
    expected = sky_adu + star
    variance = (expected * gain + rdnoise**2) / gain**2
    calib = rng.normal(expected, np.sqrt(variance)).astype(np.float32)
    calib[30, 20] += 3000.0
    mask = np.where(expected > 30000, Flag.SATURATED, 0).astype(np.uint16)
    found = cosmic_rays(calib, variance.astype(np.float32), mask, gain, CosmicParams())
    assert found[30, 20]
    assert found.sum() <= 3
    assert not found[50:70, 50:70].any()
