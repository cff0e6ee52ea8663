"""The Zarr writer: region writes of known arrays, the codec per variable and the per-array digests."""

import hashlib

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from benchmarks import bench_codecs
from pipeline.io.store import write_session

KEY = "muscat3_g/obs1"
CHUNK = 32


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    rng = np.random.default_rng(3)
    truth = {
        "calib": rng.normal(1000, 30, (96, 64)).astype(np.float32),
        "mask": rng.integers(0, 8, (96, 64)).astype(np.uint16),
        "e91": rng.normal(500, 20, (3, 96, 64)).astype(np.float32),
        "e91_mask": rng.integers(0, 2, (3, 96, 64)).astype(np.uint16),
    }
    dims = {2: ("y", "x"), 3: ("frame", "y", "x")}
    dataset = xr.Dataset(
        {name: (dims[a.ndim], da.from_array(a, chunks=(1,) * (a.ndim - 2) + (64, 64))) for name, a in truth.items()}
    )
    store = tmp_path_factory.mktemp("store") / "s.zarr"
    (digests,) = dask.compute(write_session(dataset, store, KEY, CHUNK), scheduler="synchronous")
    return store, truth, digests


def test_values_round_trip(written):
    store, truth, _ = written
    group = zarr.open_group(str(store), path=KEY, mode="r")
    for name, values in truth.items():
        np.testing.assert_array_equal(group[name][...], values)
        assert group[name].chunks[-2:] == (CHUNK, CHUNK)


def test_image_variables_are_uncompressed_and_integer_cubes_zstd_level_1(written):
    store, _, _ = written
    group = zarr.open_group(str(store), path=KEY, mode="r")
    for name in ("calib", "e91", "mask"):
        assert group[name].compressors == () and group[name].shards is None
        assert [type(c).__name__ for c in group[name].metadata.codecs] == ["BytesCodec"]
    (codec,) = group["e91_mask"].compressors
    assert (type(codec).__name__, codec.level) == ("ZstdCodec", 1)


def test_digests_are_the_sha256_of_each_arrays_files(written):
    store, truth, digests = written
    assert set(digests) == set(truth)
    for name, digest in digests.items():
        array_dir = store / KEY / name
        expected = hashlib.sha256()
        files = sorted(p for p in array_dir.rglob("*") if p.is_file())
        assert files, array_dir
        for path in files:
            expected.update(str(path.relative_to(array_dir)).encode() + b"\0" + path.read_bytes())
        assert digest == expected.hexdigest()


def test_codec_benchmark_runs_on_a_written_store(written):
    store, truth, _ = written
    report = bench_codecs.run_benchmark(store, KEY, frames=2, repeats=1)
    assert set(report["arrays"]) == set(truth)
    for row in report["arrays"].values():
        assert all(row[label]["ratio"] > 0 for label in bench_codecs.CODECS)
    assert "| e91 | float32 |" in bench_codecs.format_table(report)


def test_sessions_are_not_added_to_a_store_of_another_version(written, tmp_path):
    from pipeline.io.contract import STORE_VERSION
    from pipeline.io.index import INDEX_KEY, StoreIndexError

    store = tmp_path / "old.zarr"
    zarr.open_group(str(store), mode="w", zarr_format=3).attrs[INDEX_KEY] = {"store_version": 1, "sessions": {}}
    dataset = xr.Dataset({"calib": (("y", "x"), da.zeros((64, 64), dtype=np.float32, chunks=64))})
    with pytest.raises(
        StoreIndexError, match=f"store version 1; this skyprep reads and writes version {STORE_VERSION}"
    ):
        write_session(dataset, store, KEY, CHUNK)


def test_writing_a_sessions_template_reads_no_other_nodes_metadata(tmp_path, monkeypatch):
    """The root's zarr.json holds the whole store's index and consolidated metadata: a session's
    template must not read it (nor another session's nodes), or each new session costs more."""
    store = tmp_path / "s.zarr"
    values = da.zeros((64, 64), chunks=CHUNK, dtype=np.float32)
    dataset = xr.Dataset({"calib": (("y", "x"), values), "mean": (("y", "x"), values)})
    dask.compute(write_session(dataset, store, "muscat3_g/first", CHUNK), scheduler="synchronous")
    read = []
    get = zarr.storage.LocalStore.get

    async def recording_get(self, key, *args, **kwargs):
        read.append(f"{self.root.name}/{key}")
        return await get(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", recording_get)
    write_session(dataset, store, "muscat3_g/second", CHUNK)
    write_session(dataset, store, "muscat4_r/third", CHUNK)
    assert read, "no read through zarr's LocalStore was recorded"
    assert not [key for key in read if key.startswith(("s.zarr/", "muscat3_g/first", "first/"))], read
