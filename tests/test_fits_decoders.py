"""Each decoder chosen for an HDU's layout, against astropy's own full reads (``fits.getdata``),
at tile edges and across threads; and the rule that only this module touches astropy's private API."""

import pathlib
import re
from concurrent.futures import ThreadPoolExecutor

import fitsio
import numpy as np
import pytest
from astropy.io import fits

import pipeline
from pipeline.io import fits_decoders
from pipeline.io.fits_files import FitsError
from pipeline.io.fits_headers import image
from pipeline.io.fits_reader import lazy_image, read_cutout, read_image, read_rows
from pipeline.synth.files import compressed_image, dither_seed, write_fits

RNG = np.random.default_rng(21)
SHAPE = (300, 260)  # no tile shape below divides it: every layout has partial edge tiles


def _counts(dtype, level=1000):
    return (level + RNG.poisson(40, SHAPE)).astype(dtype)


RICE = {  # (values, tile_shape or None for fpack's one-row tiles)
    "uint16_one_row": (_counts(np.uint16), None),
    "uint16_64x48": (_counts(np.uint16), (64, 48)),
    "uint16_full_width_16_rows": (_counts(np.uint16), (16, 260)),
    "uint16_one_tile": (_counts(np.uint16), SHAPE),
    "int16_negative_37x53": (RNG.integers(-3000, 3000, SHAPE).astype(np.int16), (37, 53)),
    "int32_wide_range_128x128": (RNG.integers(-(2**30), 2**30, SHAPE).astype(np.int32), (128, 128)),
    "uint32_64x64": (RNG.integers(0, 2**32 - 1, SHAPE, dtype=np.uint32), (64, 64)),
}


def _floats(dtype):
    """Sky-like floats with what quantization meets in reduced frames: NaNs (a whole row too),
    exact zeros, and constant regions that fill whole tiles of every tiling below (kept
    losslessly by GZIP_1, not quantized)."""
    values = RNG.normal(1000, 20, SHAPE).astype(dtype)
    values[RNG.random(SHAPE) < 0.01] = np.nan
    values[RNG.random(SHAPE) < 0.01] = 0.0
    values[0:128, 0:128] = 5.0
    values[224:240] = 7.25
    values[210] = np.nan
    return values


QUANTIZED = {  # (dtype, dither method, tile_shape or None for one-row tiles, dither seed)
    "float32_dither1_one_row": (np.float32, "SUBTRACTIVE_DITHER_1", None, 8433),
    "float32_dither2_64x48": (np.float32, "SUBTRACTIVE_DITHER_2", (64, 48), 1),
    "float32_no_dither_37x53": (np.float32, "NO_DITHER", (37, 53), None),
    "float32_dither1_one_tile": (np.float32, "SUBTRACTIVE_DITHER_1", SHAPE, 10000),
    "float32_dither1_seed_wraps_1x13": (np.float32, "SUBTRACTIVE_DITHER_1", (1, 13), 9990),  # 6000 tiles: past 10000
    "float64_dither1_128x128": (np.float64, "SUBTRACTIVE_DITHER_1", (128, 128), 77),
    "float64_dither2_one_row": (np.float64, "SUBTRACTIVE_DITHER_2", None, 5000),
    "float64_no_dither_16x260": (np.float64, "NO_DITHER", (16, 260), None),
}
PLIO = {  # (values, tile_shape or None for one-row tiles)
    "uint8_mask_one_row": (np.where(RNG.random(SHAPE) < 0.02, 4, 0).astype(np.uint8), None),
    "uint8_mask_64x48": (RNG.integers(0, 255, SHAPE).astype(np.uint8), (64, 48)),
    "int16_37x53": (RNG.integers(0, 3000, SHAPE).astype(np.int16), (37, 53)),
    "int32_runs_full_width_16_rows": (
        RNG.integers(0, 2**20, (300, 26)).repeat(10, axis=1).astype(np.int32),
        (16, 260),
    ),  # runs: astropy's PLIO coder overflows on noise-like int32
}
NOT_RICE = {  # layouts the Rice and PLIO decoders must leave alone, with the decoder expected instead
    "gzip2_quantized_float_2d": (
        lambda: fits.CompImageHDU(_floats(np.float32), compression_type="GZIP_2", tile_shape=(64, 48)),
        "astropy",
    ),
    "gzip1_quantized_float_one_row": (
        lambda: fits.CompImageHDU(_floats(np.float32), compression_type="GZIP_1"),
        "cfitsio",
    ),
    "hcompress_quantized_float_2d": (
        lambda: fits.CompImageHDU(
            RNG.normal(1000, 20, SHAPE).astype(np.float32), compression_type="HCOMPRESS_1", tile_shape=(64, 48)
        ),
        "hcompress",
    ),  # astropy's, one thread at a time (C statics)
    "uint8_rice": (
        lambda: fits.CompImageHDU(
            RNG.integers(0, 255, SHAPE).astype(np.uint8), compression_type="RICE_1", tile_shape=(64, 48)
        ),
        "astropy",
    ),
    "gzip1_int16_2d": (
        lambda: fits.CompImageHDU(_counts(np.int16), compression_type="GZIP_1", tile_shape=(64, 48)),
        "astropy",
    ),
    "gzip1_int16_one_row": (lambda: fits.CompImageHDU(_counts(np.int16), compression_type="GZIP_1"), "cfitsio"),
    "int16_blank": (
        lambda: _with_blank(fits.CompImageHDU(_counts(np.int16), compression_type="RICE_1", tile_shape=(64, 48))),
        "astropy",
    ),
    "uint8_plio_blank": (
        lambda: _with_blank(
            fits.CompImageHDU(PLIO["uint8_mask_64x48"][0], compression_type="PLIO_1", tile_shape=(64, 48)), 255
        ),
        "astropy",
    ),
}


def _with_blank(hdu, blank=-32768):
    hdu.header["BLANK"] = blank
    return hdu


def _write(path, hdu):
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    return path


def _rice(values, tile_shape):
    return fits.CompImageHDU(values, compression_type="RICE_1", **({"tile_shape": tile_shape} if tile_shape else {}))


def _assert_bits_equal(got, expected, err_msg=""):
    """Same dtype and the same bits, pixel for pixel (NaN payloads and signed zeros included)."""
    expected = expected.astype(expected.dtype.newbyteorder("="))
    assert got.dtype == expected.dtype, err_msg
    np.testing.assert_array_equal(got.view(f"u{got.dtype.itemsize}"), expected.view(f"u{got.dtype.itemsize}"), err_msg)


def _check_reads(path):
    expected = fits.getdata(path, 1)
    ref = image(path)
    _assert_bits_equal(read_image(ref), expected)
    for y0, y1, x0, x1 in [
        (0, 1, 0, 1),
        (37, 181, 15, 200),
        (299, 300, 0, 260),
        (63, 65, 47, 49),
        (250, 300, 210, 260),
        (5, 5, 0, 260),
        (0, 300, 259, 260),
        (127, 211, 1, 259),
    ]:
        got = read_cutout(ref, y0, y1, x0, x1)
        _assert_bits_equal(got, expected[y0:y1, x0:x1], err_msg=f"[{y0}:{y1}, {x0}:{x1}]")
        assert got.flags.c_contiguous and got.flags.writeable
    _assert_bits_equal(read_rows(ref, 101, 233), expected[101:233])
    _assert_bits_equal(read_rows(ref, 199, 212), expected[199:212])
    _assert_bits_equal(lazy_image(ref, 50, f"t-{path.name}").compute(scheduler="threads"), expected)
    return ref


@pytest.mark.parametrize("layout", sorted(RICE))
def test_rice_decoder_is_bit_identical_to_astropy(tmp_path, layout):
    ref = _check_reads(_write(tmp_path / f"{layout}.fits.fz", _rice(*RICE[layout])))
    assert ref.decoder == "rice"


@pytest.mark.parametrize(
    "dtype,tile_dims", [(np.uint16, None), (np.uint16, [50, 40]), (np.int32, [64, 64]), (np.int16, [1, 260])]
)
def test_rice_decoder_reads_cfitsio_written_files(tmp_path, dtype, tile_dims):
    path = tmp_path / "cfitsio.fits.fz"
    with fitsio.FITS(path, "rw", clobber=True) as out:
        out.write(_counts(dtype), compress="RICE", tile_dims=tile_dims)
    ref = _check_reads(path)
    assert ref.decoder == "rice"


def _quantized(values, method, tile_shape, seed):
    options = {"quantize_method": {"NO_DITHER": -1, "SUBTRACTIVE_DITHER_1": 1, "SUBTRACTIVE_DITHER_2": 2}[method]}
    options.update({"tile_shape": tile_shape} if tile_shape else {})
    options.update({"dither_seed": seed} if seed else {})
    return fits.CompImageHDU(values, compression_type="RICE_1", **options)


@pytest.mark.parametrize("layout", sorted(QUANTIZED))
def test_rice_decoder_unquantizes_floats_bit_identically_to_astropy(tmp_path, layout):
    dtype, method, tile_shape, seed = QUANTIZED[layout]
    values = _floats(dtype)
    path = _write(tmp_path / f"{layout}.fits.fz", _quantized(values, method, tile_shape, seed))
    with fits.open(path, disable_image_compression=True) as hdul:  # the layout is what the test means
        table = hdul[1].header
        assert table.get("ZQUANTIZ", "NO_DITHER") == method and table["ZBITPIX"] == -8 * np.dtype(dtype).itemsize
        assert table.get("ZDITHER0") == seed and "ZBLANK" in table
        lossless = 0 in [len(codes) for codes in hdul[1].data["COMPRESSED_DATA"]]  # constant tiles kept by GZIP_1
        assert lossless or tile_shape == SHAPE
    ref = _check_reads(path)
    assert ref.decoder == "rice"
    np.testing.assert_array_equal(np.isnan(read_image(ref)), np.isnan(values))  # ZBLANK -> NaN, from the truth


def test_rice_decoder_reads_the_zblank_column(tmp_path):
    source = _write(tmp_path / "keyword.fits.fz", _quantized(_floats(np.float32), "SUBTRACTIVE_DITHER_1", (64, 48), 3))
    with fits.open(source, disable_image_compression=True) as hdul:  # ZBLANK moved to a per-tile column
        table = hdul[1]
        columns = [fits.Column(c.name, c.format, array=table.data[c.name]) for c in table.columns]
        columns.append(fits.Column("ZBLANK", "J", array=np.full(len(table.data), table.header["ZBLANK"], np.int32)))
        header = table.header.copy()
        del header["ZBLANK"]
        _write(tmp_path / "column.fits.fz", fits.BinTableHDU.from_columns(columns, header=header))
    ref = _check_reads(tmp_path / "column.fits.fz")
    assert ref.decoder == "rice" and np.isnan(read_image(ref)).sum() == np.isnan(fits.getdata(source, 1)).sum() > 0


@pytest.mark.parametrize(
    "dtype,qmethod,tile_dims",
    [
        (np.float32, "SUBTRACTIVE_DITHER_1", None),
        (np.float32, "SUBTRACTIVE_DITHER_2", [50, 40]),
        (np.float32, "NO_DITHER", [1, 260]),
        (np.float64, "SUBTRACTIVE_DITHER_1", [64, 64]),
    ],
)
def test_rice_decoder_reads_cfitsio_quantized_files(tmp_path, dtype, qmethod, tile_dims):
    path = tmp_path / "cfitsio.fits.fz"
    with fitsio.FITS(path, "rw", clobber=True) as out:
        out.write(_floats(dtype), compress="RICE", tile_dims=tile_dims, qlevel=16, qmethod=qmethod, dither_seed=4321)
    ref = _check_reads(path)
    assert ref.decoder == "rice"


@pytest.mark.parametrize("layout", sorted(PLIO))
def test_plio_decoder_is_bit_identical_to_astropy(tmp_path, layout):
    values, tile_shape = PLIO[layout]
    hdu = fits.CompImageHDU(values, compression_type="PLIO_1", **({"tile_shape": tile_shape} if tile_shape else {}))
    ref = _check_reads(_write(tmp_path / f"{layout}.fits.fz", hdu))
    assert ref.decoder == "plio"
    np.testing.assert_array_equal(read_image(ref), values)


@pytest.mark.parametrize("tile_dims", [None, [50, 40]])
def test_plio_decoder_reads_cfitsio_written_masks(tmp_path, tile_dims):
    path = tmp_path / "cfitsio.fits.fz"
    with fitsio.FITS(path, "rw", clobber=True) as out:
        out.write(PLIO["uint8_mask_64x48"][0], compress="PLIO", tile_dims=tile_dims)
    assert _check_reads(path).decoder == "plio"


@pytest.mark.parametrize(
    "missing,make,decoder",
    [
        ("unquantize_float_c", lambda: _quantized(_floats(np.float32), "SUBTRACTIVE_DITHER_1", (64, 48), 9), "astropy"),
        ("unquantize_double_c", lambda: _quantized(_floats(np.float64), "SUBTRACTIVE_DITHER_2", None, 9), "cfitsio"),
        ("decompress_rice_1_c", lambda: _quantized(_floats(np.float32), "NO_DITHER", None, None), "cfitsio"),
        (
            "decompress_plio_1_c",
            lambda: fits.CompImageHDU(PLIO["uint8_mask_64x48"][0], compression_type="PLIO_1"),
            "cfitsio",
        ),
    ],
)
def test_layouts_fall_back_when_astropy_lacks_a_codec(tmp_path, monkeypatch, missing, make, decoder):
    monkeypatch.setattr(fits_decoders, missing, None)
    ref = _check_reads(_write(tmp_path / f"no_{missing}.fits.fz", make()))
    assert ref.decoder == decoder


def test_e91_like_frame_reads_sci_err_and_bpm_with_astropy_codecs(tmp_path):
    """A reduced frame as the synthetic archive writes it (pipeline.synth): float32 SCI and ERR
    quantized with SUBTRACTIVE_DITHER_1 and a seed, a uint8 PLIO_1 mask, one-row tiles."""
    science = _floats(np.float32)
    hdus = [
        compressed_image(science, name="SCI", seed=dither_seed("frame-e91.fits.fz")),
        compressed_image(np.where(np.isnan(science), 1, 0).astype(np.uint8), name="BPM"),
        compressed_image(np.abs(science) ** 0.5, name="ERR", seed=17),
    ]
    path = write_fits(tmp_path / "frame-e91.fits.fz", hdus)
    for index, (name, decoder) in enumerate([("SCI", "rice"), ("BPM", "plio"), ("ERR", "rice")], start=1):
        ref = image(path, name)
        assert ref.decoder == decoder
        _assert_bits_equal(read_image(ref), fits.getdata(path, index))
        _assert_bits_equal(read_rows(ref, 77, 211), fits.getdata(path, index)[77:211])


@pytest.mark.parametrize("layout", sorted(NOT_RICE))
def test_other_layouts_keep_their_decoder_and_read_identically(tmp_path, layout):
    make, decoder = NOT_RICE[layout]
    ref = _check_reads(_write(tmp_path / f"{layout}.fits.fz", make()))
    assert ref.decoder == decoder


@pytest.mark.parametrize(
    "make",
    [
        lambda: _rice(_counts(np.uint16), (32, 32)),
        lambda: _quantized(_floats(np.float32), "SUBTRACTIVE_DITHER_2", (32, 32), 99),
        NOT_RICE["hcompress_quantized_float_2d"][0],
    ],
)  # astropy's H-decoder: C statics
def test_threads_read_the_same_file_concurrently(tmp_path, make):
    path = _write(tmp_path / "shared.fits.fz", make())
    values, ref = fits.getdata(path, 1), image(path)
    boxes = [(y, y + 70, x, x + 90) for y in range(0, 230, 23) for x in range(0, 170, 34)] * 3
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda box: read_cutout(ref, *box), boxes))
    for (y0, y1, x0, x1), got in zip(boxes, results):
        _assert_bits_equal(got, values[y0:y1, x0:x1])


def test_damaged_rice_tiles_name_the_file_and_the_reason(tmp_path):
    good = _write(tmp_path / "good.fits.fz", _rice(_counts(np.uint16), (64, 48)))
    data = good.read_bytes()
    corrupt = bytearray(data)
    corrupt[len(data) // 2 : len(data) // 2 + 3000] = b"\xff" * 3000
    (tmp_path / "corrupt.fits.fz").write_bytes(bytes(corrupt))
    with pytest.raises(FitsError, match=r"corrupt.fits.fz\[1\].*cannot decode"):
        read_image(image(tmp_path / "corrupt.fits.fz"))
    ref = image(good)
    good.write_bytes(data[: len(data) * 2 // 3])  # truncated after the reference was taken
    with pytest.raises(FitsError, match=r"good.fits.fz.*(cannot decode|truncated)"):
        read_image(ref)


def test_only_the_decoders_touch_astropys_private_api():
    """astropy's private names (``_bintable``, its ``_compression`` codecs) appear in
    pipeline/io/fits_decoders.py and nowhere else in the package, so an astropy release that
    moves them breaks one module (and pyproject.toml caps astropy below its next major)."""
    private = re.compile(r"_bintable|_tiled_compression|compressed\._compression|astropy\S*\._[a-z]")
    root = pathlib.Path(pipeline.__file__).parent
    sources = sorted(root.rglob("*.py"))
    users = {path.relative_to(root).as_posix() for path in sources if private.search(path.read_text())}
    assert len(sources) > 20 and users == {"io/fits_decoders.py"}
