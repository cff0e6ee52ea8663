"""Region writes straight to chunk files (pipeline.io.chunk_writes) against zarr-python's own
writes of the same regions: the same files with the same bytes, the same values read back."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, GzipCodec, ZstdCodec

from pipeline.io.chunk_writes import encoder, only_fill, write_region


def _files(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pair(tmp_path, **spec) -> tuple[zarr.Array, zarr.Array]:
    return tuple(zarr.create_array(str(tmp_path / name), zarr_format=3, **spec) for name in ("by_zarr", "direct"))


def _block(rng, shape, dtype, fill, chunks) -> np.ndarray:
    """Random values with some chunks only the fill value, one NaN chunk and one of ``-0.0``."""
    if np.dtype(dtype).kind == "f":
        values = rng.normal(0, 100, shape).astype(dtype)
    else:
        values = rng.integers(0, 50, shape).astype(dtype)
    whole = tuple(slice(0, c) for c in chunks)
    values[whole] = fill  # the first chunk: only the fill value, never written
    if len(shape) == 3 and shape[0] > 1:
        second = (1, *whole[1:])
        values[second] = np.nan if np.dtype(dtype).kind == "f" else 0
        if np.dtype(dtype).kind == "f" and shape[0] > 2:
            values[(2, *whole[1:])] = -0.0
    return values


LAYOUTS = [
    ("float32", np.nan, None),
    ("float32", 0.0, None),
    ("int32", 0, [ZstdCodec(level=1)]),
    ("uint8", 1, None),
    ("uint16", 0, None),
    ("float64", -1.5, None),
]


@pytest.mark.parametrize("dtype, fill, compressors", LAYOUTS)
@pytest.mark.parametrize(
    "shape, chunks", [((4, 37, 50), (1, 16, 16)), ((37, 50), (16, 16)), ((3, 32, 32), (1, 32, 32))]
)
def test_region_writes_make_zarr_pythons_files(tmp_path, dtype, fill, compressors, shape, chunks):
    rng = np.random.default_rng(7)
    by_zarr, direct = _pair(tmp_path, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, compressors=compressors)
    encode = encoder(direct)
    assert encode is not None
    truth = np.full(shape, fill, dtype)
    rows = list(range(0, shape[-2], chunks[-2])) + [shape[-2]]
    for y0, y1 in zip(rows[:-1], rows[1:]):  # row strips, as the job writes them
        region = tuple(slice(0, n) for n in shape[:-2]) + (slice(y0, y1), slice(0, shape[-1]))
        block = _block(rng, tuple(s.stop - s.start for s in region), dtype, fill, chunks)
        by_zarr[region] = block
        write_region(direct, tmp_path / "direct", region, block, encode)
        truth[region] = block
    assert _files(tmp_path / "direct") == _files(tmp_path / "by_zarr")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "direct"), mode="r")[...], truth)


def test_a_chunk_rewritten_to_the_fill_value_is_removed_as_zarr_removes_it(tmp_path):
    by_zarr, direct = _pair(tmp_path, shape=(8, 8), chunks=(4, 4), dtype="float32", fill_value=np.nan, compressors=None)
    encode, region = encoder(direct), (slice(0, 4), slice(0, 8))
    for block in (np.ones((4, 8), np.float32), np.full((4, 8), np.nan, np.float32)):
        by_zarr[region] = block
        write_region(direct, tmp_path / "direct", region, block, encode)
        assert _files(tmp_path / "direct") == _files(tmp_path / "by_zarr")
    assert not [name for name in _files(tmp_path / "direct") if name.startswith("c/")]


def test_layouts_it_does_not_write_are_left_to_zarr(tmp_path):
    spec = dict(shape=(8, 8), chunks=(4, 4), dtype="float32", zarr_format=3)
    sharded = zarr.create_array(str(tmp_path / "s"), shards=(8, 8), compressors=None, **spec)
    big_endian = zarr.create_array(str(tmp_path / "b"), serializer=BytesCodec(endian="big"), compressors=None, **spec)
    gzip = zarr.create_array(str(tmp_path / "g"), compressors=[GzipCodec()], **spec)
    assert [encoder(a) for a in (sharded, big_endian, gzip)] == [None, None, None]


def test_a_region_off_the_chunk_grid_is_refused(tmp_path):
    array = zarr.create_array(str(tmp_path / "a"), shape=(8, 8), chunks=(4, 4), dtype="float32", zarr_format=3)
    with pytest.raises(ValueError, match="not aligned"):
        write_region(array, tmp_path / "a", (slice(2, 6), slice(0, 8)), np.zeros((4, 8), np.float32), encoder(array))


def test_only_fill_follows_zarrs_equality():
    assert only_fill(np.full(5, np.nan, np.float32), np.float32(np.nan))
    assert not only_fill(np.array([np.nan, 1.0], np.float32), np.float32(np.nan))
    assert only_fill(np.zeros(5, np.float32), np.float32(0))
    assert not only_fill(np.array([0.0, -0.0], np.float32), np.float32(0))  # -0.0 is not the fill
    assert only_fill(np.full(4, 3, np.int32), np.int32(3)) and not only_fill(np.array([3, 4], np.int32), 3)
