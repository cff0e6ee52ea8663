"""Opening FITS files: each thread's cache of open files across reads, forks and files rewritten
in place, the release of read pages, and the rule that no other module opens a FITS file."""

import multiprocessing
import os
import pathlib
import re

import numpy as np
import pytest
from astropy.io import fits

import pipeline
from pipeline.io import fits_decoders, fits_files
from pipeline.io.fits_files import FitsError, close_open_files, open_fits
from pipeline.io.fits_headers import image
from pipeline.io.fits_reader import read_cutout, read_image, read_rows
from pipeline.io.objects import location

RNG = np.random.default_rng(23)
SHAPE = (300, 260)


def _counts(dtype, level=1000):
    return (level + RNG.poisson(40, SHAPE)).astype(dtype)


def _rice(values, tile_shape):
    return fits.CompImageHDU(values, compression_type="RICE_1", **({"tile_shape": tile_shape} if tile_shape else {}))


def _write(path, hdu):
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    return path


def test_file_rewritten_at_the_same_path_is_read_anew(tmp_path):
    path = tmp_path / "frame.fits.fz"
    first, second = _counts(np.uint16, 1000), _counts(np.uint16, 5000)
    for values in (first, second):  # same layout, different pixels; the first stays open in the cache
        _write(path, _rice(values, (64, 48)))
        np.testing.assert_array_equal(read_cutout(image(path), 10, 90, 20, 120), values[10:90, 20:120])
    close_open_files()
    np.testing.assert_array_equal(read_image(image(path)), second)


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


def test_a_strip_tasks_images_stay_open_between_strips(tmp_path, monkeypatch):
    """SCI and BPM of 40 frames (a strip task of a 40-frame session) are opened once, not per strip."""
    opened = []
    original = fits_decoders._open_tiles
    monkeypatch.setattr(fits_decoders, "_open_tiles", lambda path, index: opened.append(path) or original(path, index))
    close_open_files()
    refs = []
    for k in range(40):
        path = tmp_path / f"frame{k}.fits.fz"
        fits.HDUList(
            [
                fits.PrimaryHDU(),
                _rice(_counts(np.int16), None),
                fits.CompImageHDU(np.zeros(SHAPE, np.uint8), compression_type="PLIO_1"),
            ]
        ).writeto(path)
        refs += [image(path, "1"), image(path, "2")]
    assert {ref.decoder for ref in refs} == {"rice", "plio"}
    for y0 in range(0, SHAPE[0], 100):
        for ref in refs:
            read_rows(ref, y0, y0 + 100)
    assert len(opened) == len(refs)
    close_open_files()


def _resident_kb(path) -> int:
    """Resident kB of this process's mappings of ``path`` (Linux /proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields[0].split("-")) == 2 and ":" not in fields[0]:
            inside = fields[-1] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
def test_read_pages_leave_the_resident_set(tmp_path):
    """An image kept open and read strip by strip does not end up counted whole in the process's
    memory: each read's file pages are released once decoded (they stay in the page cache)."""
    values = np.random.default_rng(2).integers(0, 2**31 - 1, (1024, 2048)).astype(np.int32)
    path = _write(tmp_path / "noise.fits.fz", _rice(values, None))
    ref = image(path, "1")
    assert ref.decoder == "rice" and path.stat().st_size > 4_000_000
    for y0 in range(0, 1024, 128):
        np.testing.assert_array_equal(read_rows(ref, y0, y0 + 128), values[y0 : y0 + 128])
    assert _resident_kb(path) < path.stat().st_size / 1024 / 10
    close_open_files()


def test_open_errors_name_the_file_and_the_reason(tmp_path):
    (tmp_path / "text.fits").write_text("SIMPLE? not really " * 300)
    with pytest.raises(FitsError, match=r"missing.fits: file not found"):
        open_fits(str(tmp_path / "missing.fits"))
    with pytest.raises(FitsError, match=r"text.fits: not a readable FITS file"):
        open_fits(str(tmp_path / "text.fits"))


def test_no_other_module_opens_a_fits_file():
    """Every FITS read opens its file through pipeline/io/fits_files.py: the one place where
    another byte source (object storage) would plug in. Files are memory-mapped or read through raw
    descriptors only at the two edges of io/ that read bytes: the FITS one and io/chunk_files.py
    (Zarr chunk files, read with preadv), which uses no FITS code."""
    fits_opener = re.compile(r"fits\.open\(|fitsio\.FITS\(|fits\.get(data|header|val)\(|fitsio\.read")
    mapper = re.compile(r"mmap\.mmap\(|\bmemmap\(|os\.open\(")
    root = pathlib.Path(pipeline.__file__).parent
    texts = {path.relative_to(root).as_posix(): path.read_text() for path in sorted(root.rglob("*.py"))}
    assert len(texts) > 20
    assert {name for name, text in texts.items() if fits_opener.search(text)} == {"io/fits_files.py"}
    assert {name for name, text in texts.items() if mapper.search(text)} == {"io/fits_files.py", "io/chunk_files.py"}
    imports = re.findall(r"^\s*(?:from|import) (\S+)", texts["io/chunk_files.py"], re.MULTILINE)
    assert imports and not [name for name in imports if re.search(r"fits|astropy", name)]


def test_an_object_is_read_as_the_local_file_is(tmp_path):
    """The same multi-extension file as a local file and as an object (memory://): the walked
    HDU offsets are cfitsio's, and every image decodes identically through either byte source."""
    rng = np.random.default_rng(4)
    counts = rng.poisson(900, (300, 260)).astype(np.uint16)
    floats = rng.normal(0, 1, (64, 96)).astype(np.float32)
    hdus = [fits.PrimaryHDU(header=fits.Header([("OBSERVER", "x" * 60)] * 50)),
            fits.CompImageHDU(counts, compression_type="RICE_1", name="SCI"),
            fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.arange(7.0))], name="TAB"),
            fits.ImageHDU(floats, name="PLAIN"),
            fits.CompImageHDU(counts, compression_type="RICE_1", tile_shape=(32, 64), name="TILED"),
            fits.CompImageHDU(counts, compression_type="HCOMPRESS_1", tile_shape=(50, 260), name="HC")]  # fmt: skip
    local = tmp_path / "mef.fits.fz"
    fits.HDUList(hdus).writeto(local)
    remote = location(f"memory://fits-{os.getpid()}/mef.fits.fz")
    remote.write_bytes(local.read_bytes())
    walked = [fits_files.locate_hdu(remote, i) for i in range(len(hdus))]
    assert walked == [fits_files.locate_hdu(str(local), i) for i in range(len(hdus))]
    for name in ("SCI", "PLAIN", "TILED", "HC"):
        a, b = image(remote, name), image(local, name)
        assert a.path == remote and a.shape == b.shape and a.header == b.header
        assert a.decoder == (b.decoder if b.decoder != "cfitsio" else "astropy")  # cfitsio opens local files only
        np.testing.assert_array_equal(read_image(a), read_image(b))
        np.testing.assert_array_equal(read_cutout(a, 40, 61, 30, 77), read_cutout(b, 40, 61, 30, 77))
    close_open_files()
