"""BUNIT handling: conversion factors against astropy.units, and masters or e91 frames stored in
another unit giving the same products as the archive's own units."""

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits

from pipeline.config import Config
from pipeline.graph import build_session
from pipeline.io.discover import load_session
from pipeline.io.keywords import profiles
from pipeline.io.units import conversion_factor, header_factor, parse_unit

GAIN, SECONDS = 1.7, 37.0


def _astropy_factor(from_unit, to_unit):
    """The same conversion with astropy.units and a gain equivalency (the independent reference)."""
    gain = [
        (u.adu, u.electron, lambda x: x * GAIN, lambda x: x / GAIN),
        (u.adu / u.s, u.electron / u.s, lambda x: x * GAIN, lambda x: x / GAIN),
    ]
    quantity = 1.0 * u.Unit(from_unit)
    if quantity.unit.is_equivalent(u.Unit(to_unit) * u.s, equivalencies=gain):
        quantity = quantity / (SECONDS * u.s)
    elif quantity.unit.is_equivalent(u.Unit(to_unit) / u.s, equivalencies=gain):
        quantity = quantity * (SECONDS * u.s)
    return quantity.to(u.Unit(to_unit), equivalencies=gain).value


@pytest.mark.parametrize(
    "from_unit,to_unit",
    [
        ("adu", "electron"),
        ("electron", "adu"),
        ("electron", "electron/s"),
        ("electron/s", "electron"),
        ("adu", "electron/s"),
        ("adu/s", "electron"),
        ("electron/s", "adu/s"),
        ("adu", "adu"),
    ],
)
def test_conversion_factor_matches_astropy_units(from_unit, to_unit):
    factor = conversion_factor(from_unit, to_unit, GAIN, lambda: SECONDS)
    assert factor == pytest.approx(_astropy_factor(from_unit, to_unit), rel=1e-12)


def test_unit_spellings_and_errors():
    assert parse_unit("ELECTRONS") == ("electron", False)
    assert parse_unit("e-/s") == ("electron", True)
    assert parse_unit("counts") == ("adu", False)
    with pytest.raises(ValueError, match="unknown pixel unit 'Jy'"):
        parse_unit("Jy")
    with pytest.raises(ValueError, match="cannot convert ''"):
        conversion_factor("", "electron", GAIN)
    header = fits.Header({"BUNIT": "electron"})
    missing = r"dark.fits\[1\]: no value for Exposure.darktime \(tried keywords DARKTIME, EXPTIME"
    with pytest.raises(KeyError, match=missing):
        header_factor(header, "electron/s", "electron/s", GAIN, profiles()["generic"], "dark.fits[1]")


def _rewrite(path, scale, bunit, extra):
    """Rewrite every image of ``path`` uncompressed (lossless), times ``scale``, with ``BUNIT``."""
    with fits.open(path) as hdul:
        images = [(h.name, h.data.astype(np.float32) * np.float32(scale)) for h in hdul[1:] if h.data is not None]
    hdus = [fits.ImageHDU(data, name=name, header=fits.Header({"BUNIT": bunit, **extra})) for name, data in images]
    fits.HDUList([fits.PrimaryHDU(), *hdus]).writeto(path, overwrite=True)


def test_masters_and_frames_in_other_units_give_the_same_products(archive, archive_copy):
    key = "muscat3_g/20240315_000_000"
    original = build_session(load_session(archive / key), Config()).dataset
    directory = archive_copy / key
    nominal = original.attrs["gain"]
    master_gain = 2.5  # the master's own GAIN wins over the nominal one
    _rewrite(next(directory.glob("calib/BIAS_*")), 1 / master_gain, "adu", {"GAIN": master_gain})
    _rewrite(next(directory.glob("calib/DARK_*")), SECONDS, "electron", {"EXPTIME": SECONDS})
    frame = sorted(directory.glob("e91/*.fits.fz"))[1]
    with fits.open(frame) as hdul:
        sci = hdul["SCI"].data * np.float32(nominal)
        header = hdul["SCI"].header.copy()
        header["BUNIT"] = "electron"
        rest = [h.copy() for h in hdul[1:] if h.name != "SCI"]
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(sci, header=header, name="SCI"), *rest]
    fits.HDUList(hdus).writeto(frame, overwrite=True)
    converted = build_session(load_session(directory), Config()).dataset
    for name in ("calib", "variance"):
        expected = original[name].compute(scheduler="sync")
        np.testing.assert_allclose(
            converted[name].compute(scheduler="sync"),
            expected,
            rtol=2e-5,
            atol=2e-5 * float(np.abs(expected).max()),
            err_msg=name,
        )
    frame_e91 = converted["e91"][1].compute(scheduler="sync")
    np.testing.assert_allclose(frame_e91, original["e91"][1].compute(scheduler="sync"), rtol=1e-5, equal_nan=True)
