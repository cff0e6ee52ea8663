"""Calibration against ccdproc's bias, dark, flat and deviation on the same inputs."""

import numpy as np
import pytest
from astropy import units as u
from astropy.nddata import CCDData

from pipeline.steps.calibrate import CalibParams, Masters, calibrate_block, variance_e2
from pipeline.steps.masks import Flag

ccdproc = pytest.importorskip("ccdproc")


@pytest.fixture
def frames():
    rng = np.random.default_rng(7)
    shape = (64, 80)
    bias = rng.normal(20, 2, shape)
    dark = np.abs(rng.normal(0.05, 0.01, shape))
    dark[5, 6] = 30.0  # hot pixel, e-/s
    flat = rng.normal(1.0, 0.02, shape)
    flat[10:12, 20:22] = 0.1
    bpm = np.zeros(shape, np.uint8)
    bpm[:, 33] = 1
    os_adu = rng.normal(900, 30, shape)
    return os_adu, Masters(bias, dark, flat, bpm), shape


def test_calibrated_frame_matches_ccdproc(frames):
    os_adu, masters, shape = frames
    gain, exptime = 1.7, 45.0
    out = calibrate_block(os_adu, np.zeros(shape, np.uint16), gain, 12.0, masters, exptime, gain, CalibParams())
    ccd = ccdproc.gain_correct(CCDData(os_adu, unit="adu"), gain * u.electron / u.adu)
    ccd = ccdproc.subtract_bias(ccd, CCDData(masters.bias_e, unit="electron"))
    dark = CCDData(masters.dark_e_per_s, unit="electron", meta={"exptime": 1.0})
    ccd = ccdproc.subtract_dark(ccd, dark, data_exposure=exptime * u.s, dark_exposure=1.0 * u.s, scale=True)
    ccd = ccdproc.flat_correct(ccd, CCDData(masters.flat, unit=""), norm_value=1.0)
    np.testing.assert_allclose(out["calib"], ccd.data / gain, rtol=2e-6)


def test_variance_without_calibration_errors_matches_ccdproc_deviation(frames):
    os_adu, masters, shape = frames
    gain, rdnoise = 1.7, 12.0
    flat_one = Masters(masters.bias_e, np.zeros(shape), np.ones(shape), masters.bpm)
    var = variance_e2(os_adu * gain, rdnoise, flat_one, 0.0)
    after_bias_adu = os_adu - masters.bias_e / gain
    dev = ccdproc.create_deviation(
        CCDData(after_bias_adu, unit="adu"), gain=gain * u.electron / u.adu, readnoise=rdnoise * u.electron
    )
    np.testing.assert_allclose(np.sqrt(var) / gain, dev.uncertainty.array, rtol=1e-10)


def test_error_propagation_follows_banzai():
    bias, dark, flat = np.array([10.0]), np.array([0.5]), np.array([0.8])
    m = Masters(bias, dark, flat, np.zeros(1), bias_err_e=2.0, dark_err_e_per_s=0.1, flat_err=0.01)
    os_e, t, rn = np.array([1000.0]), 20.0, 5.0
    var = rn**2 + 2.0**2 + (1000 - 10) + (0.1 * t) ** 2
    signal = 1000 - 10 - 0.5 * t
    expected = (signal / 0.8) ** 2 * (var / signal**2 + (0.01 / 0.8) ** 2)
    np.testing.assert_allclose(variance_e2(os_e, rn, m, t), expected, rtol=1e-12)


def test_mask_marks_bad_low_flat_hot_and_saturated(frames):
    os_adu, masters, shape = frames
    raw_flags = np.zeros(shape, np.uint16)
    raw_flags[40, 40] = Flag.SATURATED
    out = calibrate_block(os_adu, raw_flags, 1.7, 12.0, masters, 45.0, 1.7, CalibParams())
    mask = out["mask"]
    assert mask.dtype == np.uint16
    assert np.all(mask[:, 33] & Flag.BAD_PIXEL)
    assert np.all(mask[10:12, 20:22] & Flag.LOW_FLAT)
    assert mask[5, 6] & Flag.HOT_PIXEL
    assert mask[40, 40] & Flag.SATURATED
    flagged = np.zeros(shape, bool)
    flagged[:, 33] = flagged[10:12, 20:22] = flagged[5, 6] = flagged[40, 40] = True
    assert not mask[~flagged].any()
