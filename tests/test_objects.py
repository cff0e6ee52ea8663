"""pipeline.io.objects: what a location string names, and the object operations (on memory://)."""

import io
import uuid
from pathlib import Path

import pytest

from pipeline.io.objects import ObjectPath, location


def test_plain_paths_and_file_urls_stay_local_paths():
    assert location("/data/store.zarr") == Path("/data/store.zarr")
    assert location("relative/a") == Path("relative/a")
    assert location("file:///data/store.zarr") == Path("/data/store.zarr")
    assert isinstance(location(Path("x")), Path)


def test_object_urls_become_object_paths_that_behave_like_paths():
    where = location("s3://bucket/runs/store.zarr", {"region": "eu-west-1"})
    assert where == ObjectPath("s3", "bucket", "runs/store.zarr", (("region", "eu-west-1"),))
    assert str(where) == "s3://bucket/runs/store.zarr" and where.name == "store.zarr"
    assert str(where.with_name(where.name + ".lock")) == "s3://bucket/runs/store.zarr.lock"
    assert str(where / "muscat3_g" / "x/") == "s3://bucket/runs/store.zarr/muscat3_g/x"
    assert where.parent.parent.key == "" and (where / "a").options == where.options
    assert location("gs://b/k").scheme == "gs" and location("az://container/k").bucket == "container"


@pytest.mark.parametrize(
    ("text", "reason"), [("ftp://host/x", "unsupported storage scheme 'ftp'"), ("s3:///key", "no bucket")]
)
def test_unusable_urls_are_refused_with_the_reason(text, reason):
    with pytest.raises(ValueError, match=reason):
        location(text)


@pytest.fixture
def prefix():
    return location(f"memory://test-{uuid.uuid4().hex[:8]}/p")


def test_objects_ranges_listings_and_conditional_writes(prefix):
    data = bytes(range(256)) * 40
    blob = prefix / "a/blob.bin"
    assert not blob.exists() and not prefix.exists()
    blob.write_bytes(data)
    (prefix / "b.txt").write_text("hello")
    assert blob.exists() and prefix.exists() and blob.size() == len(data)
    assert blob.read_bytes() == data and blob.read_range(10, 20) == data[10:20]
    assert blob.read_ranges([0, 5000], [3, 5004]) == [data[0:3], data[5000:5004]]
    assert prefix.files() == [("a/blob.bin", len(data)), ("b.txt", 5)]
    lock = prefix / "x.lock"
    assert lock.create(b"one") and not lock.create(b"two") and lock.read_bytes() == b"one"
    etag = lock.etag()
    assert not lock.replace(b"three", '"not-the-etag"') and lock.replace(b"three", etag)
    assert lock.read_bytes() == b"three" and not lock.replace(b"four", etag)  # the etag changed with the write
    lock.unlink()
    assert not lock.exists() and lock.etag() is None
    with pytest.raises(FileNotFoundError):
        lock.read_bytes()


def test_open_is_a_seekable_binary_file_of_ranged_reads(prefix):
    data = bytes(range(256)) * 100
    blob = prefix / "f.bin"
    blob.write_bytes(data)
    with blob.open(buffer_bytes=1000) as handle:
        assert handle.read(5) == data[:5]
        handle.seek(20000)
        assert handle.read(10) == data[20000:20010] and handle.tell() == 20010
        handle.seek(-3, io.SEEK_END)
        assert handle.read() == data[-3:] and handle.read() == b""
