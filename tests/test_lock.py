"""One run per store: the lock next to the store, a file on a filesystem, an object in a bucket
(on a real S3-protocol server)."""

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from pipeline.io.lock import StoreError, lock_path, store_lock
from pipeline.io.objects import ObjectPath, location
from pipeline.synth import SynthSpec, write_archive


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    """A store location that does not exist yet: on the local filesystem or in a new S3 bucket."""
    if request.param == "file":
        return tmp_path / "out.zarr"
    return location(f"{request.getfixturevalue('s3_bucket')}/runs/out.zarr")


def test_second_holder_is_refused_naming_the_owner(store):
    with store_lock(store) as path:
        owner = json.loads(path.read_text())
        with pytest.raises(StoreError, match=f"pid {owner['pid']} on host {socket.gethostname()}"):
            with store_lock(store):
                pass
        assert path.exists()
    assert not lock_path(store).exists()


def test_stale_lock_of_a_dead_process_on_this_host_is_replaced(store):
    lock_path(store).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "x"}))
    with store_lock(store) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_lock_of_another_host_is_never_broken(store):
    lock_path(store).write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere.example", "started": "x"}))
    with pytest.raises(StoreError, match="elsewhere.example"):
        with store_lock(store):
            pass


def test_second_run_on_the_same_store_refuses(tmp_path):
    root, store = tmp_path / "archive", tmp_path / "out.zarr"
    write_archive(root, SynthSpec(sessions=1, size=128, frames=2, amps=1, seed=0))
    cmd = [sys.executable, "-m", "pipeline", "run", str(root), "--out", str(store), "--workers", "1"]
    with store_lock(store):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "in use by another skyprep run" in done.stderr and str(lock_path(store)) in done.stderr
    assert not (store / "zarr.json").exists()


@pytest.mark.parametrize("left", [None, "", "dead"], ids=["free", "empty-lock", "dead-owner"])
def test_of_runs_starting_together_exactly_one_gets_the_lock(store, left):
    """Also when they all find the same stale lock and break it together."""
    if left is not None:
        dead = json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "x"})
        lock_path(store).write_text(dead if left == "dead" else left)
    start, results = threading.Barrier(6), []

    def take():
        start.wait()
        try:
            with store_lock(store):
                results.append("held")
                start_done.wait()
        except StoreError:
            results.append("refused")
            start_done.wait()

    start_done = threading.Barrier(6)
    threads = [threading.Thread(target=take) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["held"] + ["refused"] * 5
    assert not lock_path(store).exists()


def test_bucket_that_cannot_be_written_is_refused(s3_server):
    store = location("s3://no-such-bucket-skyprep/out.zarr")
    with pytest.raises(StoreError, match="cannot write the store here"):
        with store_lock(store):
            pass


def test_server_ignoring_conditional_writes_is_refused(s3_bucket, monkeypatch):
    store = location(f"{s3_bucket}/out.zarr")
    monkeypatch.setattr(ObjectPath, "create", lambda self, data: self.write_bytes(data) or True)
    with pytest.raises(StoreError, match="does not honour conditional writes"):
        with store_lock(store):
            pass
    assert not lock_path(store).exists()


@pytest.mark.parametrize("content", ["", "{trunc", "[1, 2]"])
def test_a_lock_file_without_a_record_is_replaced(tmp_path, content):
    store = tmp_path / "out.zarr"
    lock_path(store).write_text(content)
    with store_lock(store) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not lock_path(store).exists()


def test_a_lock_naming_a_live_pid_that_started_at_another_time_is_stale(tmp_path):
    # a container's entrypoint is pid 1 in every run: the lock of the previous run names our own pid
    store = tmp_path / "out.zarr"
    record = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": 1, "started": "x"}
    lock_path(store).write_text(json.dumps(record))
    with store_lock(store) as path:
        assert json.loads(path.read_text())["process_start"] != 1


def test_the_lock_is_never_seen_half_written(tmp_path):
    store = tmp_path / "out.zarr"
    with store_lock(store) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
