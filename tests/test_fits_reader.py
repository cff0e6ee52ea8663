"""Lazy reads of every image layout against astropy's own full reads, and clear errors."""

import numpy as np
import pytest
from astropy.io import fits

from pipeline.io.fits_files import FitsError
from pipeline.io.fits_headers import image, list_images
from pipeline.io.fits_reader import lazy_image, read_cutout, read_image, read_rows

RNG = np.random.default_rng(11)


def _write(path, hdus):
    fits.HDUList([fits.PrimaryHDU(), *hdus]).writeto(path, overwrite=True)
    return path


LAYOUTS = {
    "rice_uint16": lambda: fits.CompImageHDU(
        RNG.integers(0, 65535, (300, 260)).astype(np.uint16), compression_type="RICE_1"
    ),
    "gzip1_int32": lambda: fits.CompImageHDU(
        RNG.integers(-5000, 5000, (300, 260)).astype(np.int32), compression_type="GZIP_1"
    ),
    "gzip2_float32": lambda: fits.CompImageHDU(
        RNG.normal(0, 1, (300, 260)).astype(np.float32), compression_type="GZIP_2", quantize_level=0.0
    ),
    "hcompress_int16": lambda: fits.CompImageHDU(
        RNG.integers(0, 3000, (300, 260)).astype(np.int16), compression_type="HCOMPRESS_1"
    ),
    "plio_mask": lambda: fits.CompImageHDU(RNG.integers(0, 9, (300, 260)).astype(np.int32), compression_type="PLIO_1"),
    "rice_dithered_float": lambda: fits.CompImageHDU(
        RNG.normal(1000, 20, (300, 260)).astype(np.float32),
        compression_type="RICE_1",
        quantize_level=64,
        quantize_method=1,
        dither_seed=5,
    ),
    "rice_dither2_float": lambda: fits.CompImageHDU(
        RNG.normal(1000, 20, (300, 260)).astype(np.float32),
        compression_type="RICE_1",
        quantize_level=16,
        quantize_method=2,
        dither_seed=9,
    ),
    "rice_uint16_2d_tiles": lambda: fits.CompImageHDU(
        (1000 + RNG.poisson(40, (300, 260))).astype(np.uint16), compression_type="RICE_1", tile_shape=(64, 48)
    ),
    "rice_nodither_float": lambda: fits.CompImageHDU(
        RNG.normal(1000, 20, (300, 260)).astype(np.float32),
        compression_type="RICE_1",
        quantize_level=16,
        quantize_method=-1,
    ),
    "gzip2_nodither_float": lambda: fits.CompImageHDU(
        RNG.normal(0, 3, (300, 260)).astype(np.float32), compression_type="GZIP_2", quantize_level=8, quantize_method=-1
    ),
    "rice_uint32": lambda: fits.CompImageHDU(
        RNG.integers(0, 2**32 - 1, (300, 260), dtype=np.uint32), compression_type="GZIP_1"
    ),
    "uncompressed_uint32": lambda: fits.ImageHDU(RNG.integers(0, 2**32 - 1, (300, 260), dtype=np.uint32)),
    "uncompressed_int16_bscale": lambda: _scaled(
        RNG.integers(-3000, 3000, (300, 260)).astype(np.int16), bscale=0.5, bzero=100.0
    ),
    "uncompressed_uint16": lambda: fits.ImageHDU(RNG.integers(0, 65535, (300, 260)).astype(np.uint16)),
    "uncompressed_float64": lambda: fits.ImageHDU(RNG.normal(0, 1, (300, 260))),
}


def _scaled(values, bscale, bzero):
    hdu = fits.ImageHDU(values)
    hdu.header["BSCALE"], hdu.header["BZERO"] = bscale, bzero
    return hdu


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_reads_are_bit_identical_to_astropy(tmp_path, layout):
    path = _write(tmp_path / f"{layout}.fits", [LAYOUTS[layout]()])
    expected = fits.getdata(path, 1)
    ref = image(path)
    assert ref.dtype == expected.dtype.newbyteorder("=")
    np.testing.assert_array_equal(read_image(ref), expected)
    np.testing.assert_array_equal(read_rows(ref, 37, 181), expected[37:181])
    np.testing.assert_array_equal(read_cutout(ref, 37, 181, 15, 200), expected[37:181, 15:200])
    lazy = lazy_image(ref, strip_rows=64, name=f"t-{layout}")
    assert lazy.chunks[0] == (64,) * (expected.shape[0] // 64) + (
        (expected.shape[0] % 64,) if expected.shape[0] % 64 else ()
    )
    np.testing.assert_array_equal(lazy.compute(scheduler="sync"), expected)


def _shipped_test_files(package):
    import importlib
    import pathlib

    root = pathlib.Path(importlib.import_module(package).__file__).parent
    return sorted(p for p in root.rglob("*.fits*") if p.suffix in (".fits", ".fz"))


@pytest.mark.parametrize("package,minimum", [("astropy.io.fits.tests", 5), ("fitsio", 3)])
def test_shipped_test_files_read_identically(package, minimum):
    checked = 0
    for path in _shipped_test_files(package):
        try:
            refs = list_images(path)
        except FitsError:
            continue  # tables only, or deliberately broken files
        for ref in refs:
            try:
                expected = fits.getdata(path, ref.index)
            except Exception:
                continue
            if expected is None or expected.ndim != 2:
                continue
            np.testing.assert_array_equal(read_image(ref), expected, err_msg=ref.label)
            checked += 1
    assert checked >= minimum


def test_broken_files_name_the_file_and_the_reason(tmp_path):
    values = (1000 + np.random.default_rng(3).poisson(50, (300, 260))).astype(np.uint16)  # compressible: Rice is used
    good = _write(tmp_path / "good.fits.fz", [fits.CompImageHDU(values, compression_type="RICE_1")])
    data = good.read_bytes()
    (tmp_path / "trunc.fits.fz").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.fits.fz").write_text("SIMPLE? not really " * 300)
    corrupt = bytearray(data)
    corrupt[len(data) // 2 : len(data) // 2 + 4000] = b"\xff" * 4000
    (tmp_path / "corrupt.fits.fz").write_bytes(bytes(corrupt))
    with pytest.raises(FitsError, match=r"trunc.fits.fz.*truncated"):
        list_images(tmp_path / "trunc.fits.fz")
    with pytest.raises(FitsError, match=r"text.fits.fz.*not a readable FITS file"):
        list_images(tmp_path / "text.fits.fz")
    with pytest.raises(FitsError, match=r"missing.fits.*file not found"):
        list_images(tmp_path / "missing.fits")
    with pytest.raises(FitsError, match=r"corrupt.fits.fz\[1\].*cannot decode rows"):
        read_image(image(tmp_path / "corrupt.fits.fz"))
