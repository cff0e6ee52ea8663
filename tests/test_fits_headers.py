"""The HDU model: image extensions of multi-extension files, header inheritance, IRAF addresses."""

import numpy as np
import pytest
from astropy.io import fits

from pipeline.io.fits_files import FitsError
from pipeline.io.fits_headers import effective_header, image, list_images
from pipeline.io.fits_reader import read_image


def test_inheritance_merges_primary_then_extension():
    primary = fits.Header({"TELESCOP": "2m0", "GAIN": 1.0, "EXPTIME": 30.0})
    ext = fits.Header({"INHERIT": True, "GAIN": 2.5, "EXTNAME": "im1"})
    merged = effective_header(primary, ext)
    assert merged["GAIN"] == 2.5 and merged["TELESCOP"] == "2m0" and merged["EXPTIME"] == 30.0
    alone = effective_header(primary, fits.Header({"INHERIT": False, "GAIN": 2.5}))
    assert "TELESCOP" not in alone
    assert "TELESCOP" not in effective_header(primary, fits.Header({"GAIN": 2.5}))


def test_multi_extension_file_lists_images_by_name_and_skips_tables(tmp_path):
    primary = fits.PrimaryHDU(header=fits.Header({"INSTRUME": "mosaic", "EXPTIME": 60.0}))
    amps = [
        fits.CompImageHDU(np.full((20, 30), i, np.uint16), header=fits.Header({"INHERIT": True}), name=f"im{i}")
        for i in range(1, 4)
    ]
    table = fits.BinTableHDU.from_columns([fits.Column(name="flux", format="E", array=np.ones(3))], name="CAT")
    path = tmp_path / "mef.fits.fz"
    fits.HDUList([primary, *amps, table]).writeto(path)
    refs = list_images(path)
    assert [r.name.lower() for r in refs] == ["im1", "im2", "im3"]
    assert refs[1].header["INSTRUME"] == "mosaic" and refs[1].label.endswith("[IM2]")
    np.testing.assert_array_equal(read_image(image(path, "IM3")), 3)
    with pytest.raises(FitsError, match=r"no image extension 'SCI'.*IM1, IM2, IM3"):
        image(path, "SCI")


def test_iraf_addresses_select_by_extname_extver_and_number(tmp_path):
    primary = fits.PrimaryHDU(header=fits.Header({"EXPTIME": 60.0}))
    hdus = [
        fits.CompImageHDU(np.full((8, 9), 1, np.int16), name="SCI", header=fits.Header({"EXTVER": 1})),
        fits.ImageHDU(np.full((8, 9), 2, np.uint8), name="BPM"),
        fits.CompImageHDU(np.full((8, 9), 3, np.int16), name="SCI", header=fits.Header({"EXTVER": 2})),
        fits.CompImageHDU(np.full((8, 9), 4, np.int16), name="im3"),
    ]
    path = tmp_path / "two_sci.fits.fz"
    fits.HDUList([primary, *hdus]).writeto(path)
    cases = {
        "SCI": ("SCI", 1),
        "sci,1": ("SCI", 1),
        "SCI,2": ("SCI", 2),
        "[3]": 3,
        "im3": ("IM3", 1),
        "BPM": ("BPM", 1),
    }
    for selector, expected in cases.items():
        address = f"{path}[{selector.strip('[]')}]"
        ref = image(address)
        want = fits.getdata(path, *(expected if isinstance(expected, tuple) else (expected,)))
        np.testing.assert_array_equal(read_image(ref), want, err_msg=address)
        np.testing.assert_array_equal(read_image(image(path, selector.strip("[]"))), want)
    assert image(f"{path}[SCI,2]").label == f"{path}[SCI,2]"
    assert image(f"{path}[3]").index == 3
    with pytest.raises(FitsError, match=r"two_sci.fits.fz: no image extension 'SCI,3'.*SCI, BPM, SCI,2, IM3"):
        image(f"{path}[SCI,3]")
