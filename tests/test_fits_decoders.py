"""Each decoder the reader picks from an HDU's layout, against astropy's own full reads
(``fits.getdata``), at tile edges, across threads, forks and files rewritten in place."""

import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import fitsio
import numpy as np
import pytest
from astropy.io import fits

from pipeline.fits_reader import FitsError, close_open_files, image, lazy_image, read_cutout, read_image, read_rows

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
    "int32_wide_range_128x128": (RNG.integers(-2**30, 2**30, SHAPE).astype(np.int32), (128, 128)),
    "uint32_64x64": (RNG.integers(0, 2**32 - 1, SHAPE, dtype=np.uint32), (64, 64)),
}
NOT_RICE = {  # layouts the Rice decoder must leave alone, with the decoder expected instead
    "quantized_float_2d": (lambda: fits.CompImageHDU(RNG.normal(1000, 20, SHAPE).astype(np.float32),
                                                     compression_type="RICE_1", tile_shape=(64, 48)), "astropy"),
    "quantized_float_one_row": (lambda: fits.CompImageHDU(RNG.normal(1000, 20, SHAPE).astype(np.float32),
                                                          compression_type="RICE_1"), "cfitsio"),
    "uint8_rice": (lambda: fits.CompImageHDU(RNG.integers(0, 255, SHAPE).astype(np.uint8), compression_type="RICE_1",
                                             tile_shape=(64, 48)), "astropy"),
    "gzip1_int16_2d": (lambda: fits.CompImageHDU(_counts(np.int16), compression_type="GZIP_1", tile_shape=(64, 48)),
                       "astropy"),
    "gzip1_int16_one_row": (lambda: fits.CompImageHDU(_counts(np.int16), compression_type="GZIP_1"), "cfitsio"),
    "int16_blank": (lambda: _with_blank(fits.CompImageHDU(_counts(np.int16), compression_type="RICE_1",
                                                          tile_shape=(64, 48))), "astropy"),
}  # fmt: skip


def _with_blank(hdu):
    hdu.header["BLANK"] = -32768
    return hdu


def _write(path, hdu):
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    return path


def _rice(values, tile_shape):
    return fits.CompImageHDU(values, compression_type="RICE_1", **({"tile_shape": tile_shape} if tile_shape else {}))


def _check_reads(path):
    expected = fits.getdata(path, 1)
    ref = image(path)
    np.testing.assert_array_equal(read_image(ref), expected)
    for y0, y1, x0, x1 in [(0, 1, 0, 1), (37, 181, 15, 200), (299, 300, 0, 260), (63, 65, 47, 49), (250, 300, 210, 260),
                           (5, 5, 0, 260), (0, 300, 259, 260)]:  # fmt: skip
        got = read_cutout(ref, y0, y1, x0, x1)
        np.testing.assert_array_equal(got, expected[y0:y1, x0:x1], err_msg=f"[{y0}:{y1}, {x0}:{x1}]")
        assert got.dtype == expected.dtype.newbyteorder("=") and got.flags.c_contiguous and got.flags.writeable
    np.testing.assert_array_equal(read_rows(ref, 101, 233), expected[101:233])
    np.testing.assert_array_equal(lazy_image(ref, 50, f"t-{path.name}").compute(scheduler="threads"), expected)
    return ref


@pytest.mark.parametrize("layout", sorted(RICE))
def test_rice_decoder_is_bit_identical_to_astropy(tmp_path, layout):
    ref = _check_reads(_write(tmp_path / f"{layout}.fits.fz", _rice(*RICE[layout])))
    assert ref.decoder == "rice"


@pytest.mark.parametrize("dtype,tile_dims", [(np.uint16, None), (np.uint16, [50, 40]), (np.int32, [64, 64]),
                                             (np.int16, [1, 260])])  # fmt: skip
def test_rice_decoder_reads_cfitsio_written_files(tmp_path, dtype, tile_dims):
    path = tmp_path / "cfitsio.fits.fz"
    with fitsio.FITS(path, "rw", clobber=True) as out:
        out.write(_counts(dtype), compress="RICE", tile_dims=tile_dims)
    ref = _check_reads(path)
    assert ref.decoder == "rice"


@pytest.mark.parametrize("layout", sorted(NOT_RICE))
def test_other_layouts_keep_their_decoder_and_read_identically(tmp_path, layout):
    make, decoder = NOT_RICE[layout]
    ref = _check_reads(_write(tmp_path / f"{layout}.fits.fz", make()))
    assert ref.decoder == decoder


def test_file_rewritten_at_the_same_path_is_read_anew(tmp_path):
    path = tmp_path / "frame.fits.fz"
    first, second = _counts(np.uint16, 1000), _counts(np.uint16, 5000)
    for values in (first, second):  # same layout, different pixels; the first stays open in the cache
        _write(path, _rice(values, (64, 48)))
        np.testing.assert_array_equal(read_cutout(image(path), 10, 90, 20, 120), values[10:90, 20:120])
    close_open_files()
    np.testing.assert_array_equal(read_image(image(path)), second)


def test_threads_read_the_same_file_concurrently(tmp_path):
    values = _counts(np.uint16)
    ref = image(_write(tmp_path / "shared.fits.fz", _rice(values, (32, 32))))
    boxes = [(y, y + 70, x, x + 90) for y in range(0, 230, 23) for x in range(0, 170, 34)] * 3
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda box: read_cutout(ref, *box), boxes))
    for (y0, y1, x0, x1), got in zip(boxes, results):
        np.testing.assert_array_equal(got, values[y0:y1, x0:x1])


def _child_sum(ref, queue):
    queue.put(int(read_image(ref).astype(np.int64).sum()))


def test_forked_worker_reads_after_the_parent_cached_the_file(tmp_path):
    values = _counts(np.uint16)
    ref = image(_write(tmp_path / "forked.fits.fz", _rice(values, (64, 48))))
    read_cutout(ref, 0, 64, 0, 48)  # the parent now holds the file open
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_sum, args=(ref, queue))
    child.start()
    np.testing.assert_array_equal(read_image(ref), values)
    assert queue.get(timeout=60) == int(values.astype(np.int64).sum())
    child.join(60)
    assert child.exitcode == 0


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
