"""Windows read out of the chunk files of uncompressed Zarr v3 arrays (pipeline/io/chunk_files.py),
against the arrays written and zarr-python's reads, with the open files and resident pages checked
in the kernel's own accounting (/proc/self)."""

import gc
import os

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from pipeline.errors import InputError
from pipeline.io.chunk_files import IOV_ROWS, ChunkFileArray, ChunkFiles, read_windows, readable

FILL = 7


def _array(path, values, chunks, **options):
    array = zarr.create_array(str(path), shape=values.shape, dtype=values.dtype, chunks=chunks, compressors=None,
                              fill_value=FILL, **options)  # fmt: skip
    array[...] = values
    return array


def _resident_kb(prefix: str) -> int:
    """Resident kB of this process's mappings of files under ``prefix`` (Linux /proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and ":" not in fields[0]:
            inside = len(fields) > 5 and fields[-1].startswith(prefix)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def _open_under(prefix: str) -> int:
    """This process's open file descriptors on files under ``prefix`` (Linux /proc/self/fd)."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the descriptor of the listing itself, closed since
            pass
    return sum(target.startswith(prefix) for target in targets)


def test_windows_across_chunks_and_missing_chunks_equal_the_array(tmp_path):
    rng = np.random.default_rng(3)
    values = rng.integers(0, 60000, (2, 100, 90)).astype(np.uint16)
    values[1, 40:80, 30:60] = FILL  # whole chunks of the fill value: zarr writes no file for them
    array = _array(tmp_path / "a.zarr", values, (1, 40, 30))
    assert readable(array) and not (tmp_path / "a.zarr/c/1/1/1").exists()
    reader = ChunkFileArray(array, tmp_path / "a.zarr", ChunkFiles(max_open=2))
    for frame, y, x, p in [(0, 0, 0, 100 - 10), (1, 35, 25, 50), (1, 41, 31, 9), (0, 79, 59, 21), (1, 0, 60, 30)]:
        out = np.full((p, min(p, 90 - x)), 99, np.int32)  # cast on the way: uint16 into int32
        reader.window((frame,), y, x, out)
        np.testing.assert_array_equal(out, values[frame, y : y + out.shape[0], x : x + out.shape[1]])
    assert len(reader.files) <= 2 and _open_under(str(tmp_path / "a.zarr")) <= 2


def test_other_layouts_are_not_read_from_chunk_files(tmp_path):
    values = np.zeros((64, 64), np.float32)
    compressed = zarr.create_array(str(tmp_path / "c.zarr"), shape=values.shape, dtype=values.dtype, chunks=(32, 32),
                                   compressors=[BloscCodec(cname="lz4")])  # fmt: skip
    sharded = zarr.create_array(str(tmp_path / "s.zarr"), shape=values.shape, dtype=values.dtype, chunks=(16, 16),
                                shards=(32, 32), compressors=None)  # fmt: skip
    assert not readable(compressed) and not readable(sharded)
    with pytest.raises(ValueError, match="compressed or sharded"):
        ChunkFileArray(compressed, tmp_path / "c.zarr", ChunkFiles())


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps and fd")
def test_reading_every_chunk_keeps_no_pages_resident_and_few_files_open(tmp_path):
    """Reading every chunk of a 1024 x 1024 float32 array (16 chunk files of 256 KiB) maps none of
    their pages into this process and keeps at most ``max_open`` of them open; closing, or dropping
    the last reference, closes all."""
    values = np.random.default_rng(5).normal(0, 1, (1024, 1024)).astype(np.float32)
    path = tmp_path / "big.zarr"
    array = _array(path, values, (256, 256))
    files = ChunkFiles(max_open=5)
    reader = ChunkFileArray(array, path, files)
    out = np.empty((200, 300), np.float32)
    for y in range(0, 1024 - 200, 150):
        for x in range(0, 1024 - 300, 170):
            reader.window((), y, x, out)
            np.testing.assert_array_equal(out, values[y : y + 200, x : x + 300])
            assert _resident_kb(str(path)) == 0 and _open_under(str(path)) <= 5
    assert len(files) == 5
    files.close()
    assert _open_under(str(path)) == 0 and len(files) == 0
    reader = ChunkFileArray(array, path, ChunkFiles())
    reader.window((), 0, 0, out)
    assert _open_under(str(path)) == 2  # the two chunks of the window
    del reader  # its files with it
    gc.collect()
    assert _open_under(str(path)) == 0


def test_windows_taller_than_one_preadv_equal_zarr_reads(tmp_path):
    """A window of more rows than one ``preadv`` reads (``IOV_ROWS``), across two chunk rows, of a
    float and a cast uint16 array, against zarr-python's reads."""
    rows = 2 * IOV_ROWS + 40
    rng = np.random.default_rng(2)
    floats = _array(tmp_path / "f.zarr", rng.normal(0, 1, (rows + 30, 24)).astype(np.float32), (rows, 16))
    counts = _array(tmp_path / "u.zarr", rng.integers(0, 60000, (rows + 30, 24)).astype(np.uint16), (rows, 16))
    files = ChunkFiles()
    for name, array, dtype in [("f", floats, np.float32), ("u", counts, np.int64)]:
        reader = ChunkFileArray(array, tmp_path / f"{name}.zarr", files)
        out = np.zeros((rows + 10, 20), dtype)
        reader.window((), 13, 3, out)
        truth = zarr.open_array(str(tmp_path / f"{name}.zarr"), mode="r")
        np.testing.assert_array_equal(out, truth[13 : 13 + rows + 10, 3:23])
    side = np.zeros((3, rows + 10, 5), np.float32)  # three windows side by side: one preadv for the three
    reader = ChunkFileArray(floats, tmp_path / "f.zarr", files)
    truth = zarr.open_array(str(tmp_path / "f.zarr"), mode="r")
    read_windows([(2, reader, (), 13, 11), (0, reader, (), 13, 0), (1, reader, (), 13, 6)], side)
    for j, x in enumerate([0, 6, 11]):
        np.testing.assert_array_equal(side[j], truth[13 : 13 + rows + 10, x : x + 5])


def test_a_chunk_file_cut_short_while_open_is_an_input_error(tmp_path):
    values = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    array = _array(tmp_path / "a.zarr", values, (32, 32))
    reader = ChunkFileArray(array, tmp_path / "a.zarr", ChunkFiles())
    out = np.empty((20, 20), np.float32)
    reader.window((), 5, 5, out)  # the file is now open
    np.testing.assert_array_equal(out, values[5:25, 5:25])
    os.truncate(tmp_path / "a.zarr/c/0/0", 100)
    with pytest.raises(InputError, match=r"a.zarr/c/0/0: preadv returned \d+"):
        reader.window((), 5, 5, out)


def test_a_batch_of_windows_of_several_arrays_equals_zarr_reads_and_flags_nan_and_inf(tmp_path):
    """``read_windows``: windows of three arrays (one a cube read by frame, one with chunks of the
    fill value never written) in one pass, against zarr-python's reads of the same windows; the
    windows holding NaN or inf, and only those, are reported."""
    rng = np.random.default_rng(11)
    frames = rng.normal(0, 1, (3, 70, 64)).astype(np.float32)
    frames[2, 5, 7], frames[1, 60, 60] = np.nan, np.inf
    flat = rng.normal(0, 1, (70, 64)).astype(np.float32)
    flat[0:20, 0:16] = FILL  # one whole chunk of the fill value: no file
    cube = _array(tmp_path / "cube.zarr", frames, (2, 20, 16))
    plane = _array(tmp_path / "plane.zarr", flat, (20, 16))
    masks = rng.integers(0, 9, (70, 64)).astype(np.uint16)
    mask = _array(tmp_path / "mask.zarr", masks, (20, 16))
    files = ChunkFiles()
    arrays = {name: ChunkFileArray(a, tmp_path / f"{name}.zarr", files) for name, a in
              [("cube", cube), ("plane", plane), ("mask", mask)]}  # fmt: skip
    truth = {name: zarr.open_array(str(tmp_path / f"{name}.zarr"), mode="r") for name in arrays}
    requests = [(0, "cube", (2,), 0, 0), (1, "plane", (), 0, 0), (2, "cube", (1,), 45, 41), (3, "plane", (), 33, 17),
                (4, "cube", (0,), 47, 41), (5, "plane", (), 33, 41), (6, "plane", (), 33, 30)]  # fmt: skip
    out = np.full((7, 23, 23), 99, np.float32)  # windows 3, 5 side by side (one preadv), 6 overlapping both
    finite = read_windows([(j, arrays[name], lead, y, x) for j, name, lead, y, x in requests], out)
    for j, name, lead, y, x in requests:
        np.testing.assert_array_equal(out[j], truth[name][(*lead, slice(y, y + 23), slice(x, x + 23))])
    assert finite.tolist() == [False, True, False, True, True, True, True]
    cast = np.zeros((2, 23, 23), np.int32)
    assert read_windows([(1, arrays["mask"], (), 47, 41), (0, arrays["mask"], (), 3, 9)], cast).all()
    np.testing.assert_array_equal(cast[1], truth["mask"][47:70, 41:64])
    np.testing.assert_array_equal(cast[0], truth["mask"][3:26, 9:32])
    wide = np.zeros((2, 23, 23), np.float64)  # cast on the way, NaN and inf still found
    finite = read_windows([(0, arrays["cube"], (1,), 45, 41), (1, arrays["cube"], (2,), 0, 0)], wide)
    assert finite.tolist() == [False, False]
    np.testing.assert_array_equal(wide[0], truth["cube"][1, 45:68, 41:64])
    with pytest.raises(ValueError, match="different dtypes"):
        read_windows([(0, arrays["mask"], (), 0, 0), (1, arrays["plane"], (), 0, 0)], out[:2])
